// blas.h: cuBLAS, loaded at run time where it is installed, for the CUDA backend's matrix
// products; the library's own kernels (gemm_kernels.cuh) serve where it is not. No cuBLAS header
// is needed to build: the few entry points used are declared here by their C ABI, which cuBLAS
// keeps stable across releases (the _v2 names, cublasGemmEx).
//
// Search order (the first that loads wins; blas.cu):
//   1. LSOFTMAX_CUBLAS: a path to libcublas.so.N, or "off" for the library's kernels only. A path
//      that does not load is an error at context creation, not a silent fallback.
//   2. libcublas.so.13, then .12, by the dynamic loader's own search (LD_LIBRARY_PATH, the
//      ldconfig cache).
//   3. $CUDA_HOME/lib64, $CUDA_PATH/lib64, /usr/local/cuda/lib64.
//   4. The pip wheels (nvidia-cublas-cu13/-cu12): nvidia/cu13/lib and nvidia/cublas/lib under
//      $VIRTUAL_ENV, $CONDA_PREFIX, ~/.local and the system's site-packages (python3.*).
#ifndef LSOFTMAX_GPU_BLAS_H
#define LSOFTMAX_GPU_BLAS_H

#include <stddef.h>
#include <stdint.h>

#include <string>

namespace lsm_blas {

// cuBLAS's enum values (cublas_api.h, library_types.h).
enum : int {
  kOpN = 0,
  kOpT = 1,
  kR32F = 0,
  kR64F = 1,
  kR16BF = 14,
  kCompute32F = 68,
  kCompute64F = 70,
  kCompute32FFastTF32 = 77,
  kGemmDefault = -1,
  kStatusSuccess = 0,
};

typedef void *handle_t;
struct api {
  int (*create)(handle_t *handle);
  int (*destroy)(handle_t handle);
  int (*set_stream)(handle_t handle, void *stream);
  int (*set_workspace)(handle_t handle, void *workspace, size_t bytes);
  int (*get_property)(int type, int *value);  // 0 major, 1 minor, 2 patch
  int (*gemm_ex)(handle_t handle, int transa, int transb, int m, int n, int k, const void *alpha, const void *a,
                 int a_type, int lda, const void *b, int b_type, int ldb, const void *beta, void *c, int c_type,
                 int ldc, int compute_type, int algo);
};

// The process's cuBLAS: loaded once, on first use. `api` is null where none loaded; then `why`
// says what was tried, and `refused` whether LSOFTMAX_CUBLAS named a library that did not load
// (contexts then fail with `why`) rather than none being there or "off".
struct library {
  const api *calls = nullptr;
  std::string path, why;
  bool refused = false;
};
const library &load();

// What the products of CUDA contexts run on, for lsm_products_info.
std::string describe();

// cuBLAS's name for one of its status codes.
const char *status_name(int status);

}  // namespace lsm_blas

#endif  // LSOFTMAX_GPU_BLAS_H
