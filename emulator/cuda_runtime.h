// cuda_runtime.h of the CPU execution layer (LSM_EMU): found through -Iemulator instead of the
// toolkit's, so that CUDA C++ compiles with the host compiler and runs on the CPU. It holds the
// runtime API subset the project uses, the built-in variables and the vector types, and through
// device_functions.h the device functions (barriers, warp shuffles and votes, atomics). A test tool only: kernels run one
// block at a time per host thread, each GPU thread a cooperative fiber (see emu_runtime.cpp).
//
// __CUDACC__ stays undefined on purpose: headers that pick host or device code by it take the
// host path, which is what runs here.
#ifndef LSM_EMU_CUDA_RUNTIME_H
#define LSM_EMU_CUDA_RUNTIME_H

#if defined(__CUDACC__)
#error "emulator/cuda_runtime.h is for the host compiler (-DLSM_EMU), not for nvcc"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

// ---------------------------------------------------------------------------------------------
// Execution-space and memory-space qualifiers. __restrict__ is already a GNU keyword.
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __constant__
#define __launch_bounds__(...)
// Blocks run one at a time on a host thread, and the fibers of a block share that thread, so a
// thread-local static is exactly one block's shared memory. It keeps its contents between
// blocks, as nothing defines them on a GPU either.
#define __shared__ static thread_local

// ---------------------------------------------------------------------------------------------
// Vector types and built-in variables.
// ---------------------------------------------------------------------------------------------
struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

#define LSM_EMU_VEC2(name, T, align)                                                     \
  struct alignas(align) name {                                                           \
    T x, y;                                                                              \
  };                                                                                     \
  inline name make_##name(T x, T y) { return name{x, y}; }
#define LSM_EMU_VEC3(name, T)                                                            \
  struct name {                                                                          \
    T x, y, z;                                                                           \
  };                                                                                     \
  inline name make_##name(T x, T y, T z) { return name{x, y, z}; }
#define LSM_EMU_VEC4(name, T, align)                                                     \
  struct alignas(align) name {                                                           \
    T x, y, z, w;                                                                        \
  };                                                                                     \
  inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

LSM_EMU_VEC2(int2, int, 8)
LSM_EMU_VEC3(int3, int)
LSM_EMU_VEC4(int4, int, 16)
LSM_EMU_VEC2(uint2, unsigned int, 8)
LSM_EMU_VEC4(uint4, unsigned int, 16)
LSM_EMU_VEC2(float2, float, 8)
LSM_EMU_VEC3(float3, float)
LSM_EMU_VEC4(float4, float, 16)
LSM_EMU_VEC2(double2, double, 16)
LSM_EMU_VEC3(double3, double)
LSM_EMU_VEC4(double4, double, 16)
LSM_EMU_VEC2(longlong2, long long, 16)
#undef LSM_EMU_VEC2
#undef LSM_EMU_VEC3
#undef LSM_EMU_VEC4
inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }

// Set by the scheduler before it resumes each fiber. __thread (not thread_local): no TLS wrapper
// call on every read.
extern __thread uint3 threadIdx;
extern __thread uint3 blockIdx;
extern __thread dim3 blockDim;
extern __thread dim3 gridDim;
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Runtime API (the subset in use). Values of the enumerators are the toolkit's.
// ---------------------------------------------------------------------------------------------
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
  cudaErrorUnknown = 999
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};

typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;

#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventBlockingSync 0x01
#define cudaEventDisableTiming 0x02

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  size_t totalConstMem;
  int major;
  int minor;
  int multiProcessorCount;
  size_t sharedMemPerMultiprocessor;
  int maxThreadsPerMultiProcessor;
  int l2CacheSize;
  int memoryBusWidth;
  int pciBusID;
  int pciDeviceID;
  int pciDomainID;
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrTotalConstantMemory = 9,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMaxRegistersPerBlock = 12,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrPciBusId = 33,
  cudaDevAttrL2CacheSize = 38,
  cudaDevAttrMaxThreadsPerMultiProcessor = 39,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81
};

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaDeviceReset(void);
cudaError_t cudaDriverGetVersion(int *version);
cudaError_t cudaRuntimeGetVersion(int *version);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);

cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t error);
const char *cudaGetErrorName(cudaError_t error);

cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamQuery(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags = 0);

cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t bytes);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void *ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream = nullptr);

cudaError_t cudaEventCreate(cudaEvent_t *event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end);
cudaError_t cudaEventDestroy(cudaEvent_t event);

// The toolkit's typed conveniences.
template <typename T>
inline cudaError_t cudaMalloc(T **ptr, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void **>(ptr), bytes);
}
template <typename T>
inline cudaError_t cudaMallocHost(T **ptr, size_t bytes) {
  return cudaMallocHost(reinterpret_cast<void **>(ptr), bytes);
}

// The device functions: barriers, warp operations, atomics, intrinsics.
#include "device_functions.h"

#endif  // LSM_EMU_CUDA_RUNTIME_H
