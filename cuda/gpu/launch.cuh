// launch.cuh: the one place a kernel launch is spelled. Under nvcc it is the triple-chevron
// launch; under the CPU execution layer (LSM_EMU) the layer's own launcher runs the same kernel.
// Kernels passed here take one template argument at most, so the name holds no comma.
#ifndef LSOFTMAX_LAUNCH_CUH
#define LSOFTMAX_LAUNCH_CUH

#if defined(LSM_EMU)
#include "lsm_emu_launch.h"
#define LSM_LAUNCH(kernel, grid, block, stream, ...) \
  ::lsm_emu::launch(#kernel, kernel, grid, block, stream, __VA_ARGS__)
#else
#define LSM_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

#endif  // LSOFTMAX_LAUNCH_CUH
