// lsm_emu_launch.h: the kernel launch of the CPU execution layer, what LSM_LAUNCH expands to under
// LSM_EMU. The launch runs the whole grid before it returns (every stream is synchronous here);
// errors surface as on a GPU, through cudaGetLastError and the next synchronizing call.
#ifndef LSM_EMU_LAUNCH_H
#define LSM_EMU_LAUNCH_H

#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime.h"

namespace lsm_emu {
namespace detail {

using body_fn = void (*)(void *closure);

// Validates the configuration, then runs body(closure) once per GPU thread of the grid.
void run_grid(const char *name, dim3 grid, dim3 block, cudaStream_t stream, body_fn body, void *closure);

template <typename K, typename Args>
struct closure {
  K kernel;
  Args args;
};

template <typename C>
void invoke(void *p) {
  C *c = static_cast<C *>(p);
  // By-value parameters: every GPU thread gets its own copy, as from constant memory.
  std::apply(c->kernel, c->args);
}

}  // namespace detail

// The arguments are converted to the kernel's parameter types once, at the launch, as the
// CUDA runtime does when it packs them.
template <typename... P, typename... A>
void launch(const char *name, void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t stream, A &&...args) {
  static_assert(sizeof...(P) == sizeof...(A), "LSM_LAUNCH: the argument count differs from the kernel's");
  using args_t = std::tuple<typename std::decay<P>::type...>;
  detail::closure<void (*)(P...), args_t> c{kernel, args_t(std::forward<A>(args)...)};
  detail::run_grid(name, grid, block, stream, &detail::invoke<decltype(c)>, &c);
}

}  // namespace lsm_emu

#endif  // LSM_EMU_LAUNCH_H
