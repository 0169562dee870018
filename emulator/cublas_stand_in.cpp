// cublas_stand_in.cpp: the few cuBLAS entry points the library calls, for the emulated CUDA
// backend, where "device" memory is host memory. Built as build/emu/libcublas_stand_in.so and
// loaded by the library as cuBLAS itself is (LSOFTMAX_CUBLAS=its path), so the call path is
// tested without a GPU: the search, dlsym, the handle on the context's stream, its workspace,
// and each product's transposes and leading dimensions, computed column-major as cuBLAS does, by
// the CPU BLAS. Stricter than cuBLAS where that catches a mistake of ours: a product before the
// stream or the workspace was set fails. TF32 inputs are rounded as the emulated tensor cores
// round them; bf16 inputs arrive as bf16.
//
// LSM_STAND_IN_FAIL=create|gemm makes that call fail (the library's error path); the counters
// (lsm_stand_in_counts) let a test see that the products went through here.
#include <cblas.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <cmath>
#include <vector>

#include "mma.h"  // the emulated tensor cores' TF32 rounding (__float_to_tf32)

namespace {

enum { kSuccess = 0, kNotInitialized = 1, kInvalidValue = 7, kExecutionFailed = 13, kNotSupported = 15 };
enum { kR32F = 0, kR64F = 1, kR16BF = 14, kCompute32F = 68, kCompute64F = 70, kCompute32FFastTF32 = 77 };

struct handle {
  uint32_t magic = 0x5ca1ab1e;
  void *stream = nullptr;
  void *workspace = nullptr;
  size_t workspace_bytes = 0;
};

std::atomic<int64_t> g_handles{0}, g_gemms{0};

bool failing(const char *what) {
  const char *v = getenv("LSM_STAND_IN_FAIL");
  return v != nullptr && strcmp(v, what) == 0;
}

bool valid(const handle *h) { return h != nullptr && h->magic == 0x5ca1ab1e; }

float from_bf16(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// A column-major rows x cols operand with leading dimension ld, as float (converted or copied).
template <typename F>
std::vector<float> widen(const void *p, int rows, int cols, int ld, F convert) {
  std::vector<float> out((size_t)ld * (cols - 1) + rows);
  for (int j = 0; j < cols; ++j)
    for (int i = 0; i < rows; ++i) out[(size_t)j * ld + i] = convert(p, (size_t)j * ld + i);
  return out;
}

}  // namespace

#define STAND_IN extern "C" __attribute__((visibility("default")))

STAND_IN int cublasCreate_v2(handle **out) {
  if (out == nullptr) return kInvalidValue;
  if (failing("create")) return kNotInitialized;
  *out = new handle();
  ++g_handles;
  return kSuccess;
}

STAND_IN int cublasDestroy_v2(handle *h) {
  if (!valid(h)) return kNotInitialized;
  h->magic = 0;
  delete h;
  --g_handles;
  return kSuccess;
}

STAND_IN int cublasSetStream_v2(handle *h, void *stream) {
  if (!valid(h)) return kNotInitialized;
  h->stream = stream;
  return kSuccess;
}

STAND_IN int cublasSetWorkspace_v2(handle *h, void *workspace, size_t bytes) {
  if (!valid(h)) return kNotInitialized;
  if (workspace == nullptr || bytes == 0 || reinterpret_cast<uintptr_t>(workspace) % 256 != 0) return kInvalidValue;
  h->workspace = workspace, h->workspace_bytes = bytes;
  return kSuccess;
}

STAND_IN int cublasGetProperty(int type, int *value) {
  if (value == nullptr || type < 0 || type > 2) return kInvalidValue;
  *value = type == 0 ? 13 : 0;
  return kSuccess;
}

STAND_IN int cublasGemmEx(handle *h, int transa, int transb, int m, int n, int k, const void *alpha, const void *a, int a_type,
                 int lda, const void *b, int b_type, int ldb, const void *beta, void *c, int c_type, int ldc,
                 int compute, int algo) {
  if (!valid(h)) return kNotInitialized;
  if (h->stream == nullptr || h->workspace == nullptr) return kNotInitialized;
  if ((transa != 0 && transa != 1) || (transb != 0 && transb != 1) || m < 0 || n < 0 || k < 0 || alpha == nullptr ||
      beta == nullptr || algo != -1)
    return kInvalidValue;
  const int a_rows = transa == 0 ? m : k, a_cols = transa == 0 ? k : m;
  const int b_rows = transb == 0 ? k : n, b_cols = transb == 0 ? n : k;
  if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1)) return kInvalidValue;
  if (failing("gemm")) return kExecutionFailed;
  if (m == 0 || n == 0) return kSuccess;
  const CBLAS_TRANSPOSE ta = transa == 0 ? CblasNoTrans : CblasTrans, tb = transb == 0 ? CblasNoTrans : CblasTrans;
  if (a_type == kR64F && b_type == kR64F && c_type == kR64F && compute == kCompute64F) {
    cblas_dgemm(CblasColMajor, ta, tb, m, n, k, *static_cast<const double *>(alpha), static_cast<const double *>(a),
                lda, static_cast<const double *>(b), ldb, *static_cast<const double *>(beta), static_cast<double *>(c),
                ldc);
  } else if (c_type == kR32F && ((a_type == kR32F && b_type == kR32F &&
                                  (compute == kCompute32F || compute == kCompute32FFastTF32)) ||
                                 (a_type == kR16BF && b_type == kR16BF && compute == kCompute32F))) {
    const float al = *static_cast<const float *>(alpha), be = *static_cast<const float *>(beta);
    float *out = static_cast<float *>(c);
    if (k == 0) {  // C = beta C, which BLAS may not promise for k = 0
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) out[(size_t)j * ldc + i] = be == 0.0f ? 0.0f : be * out[(size_t)j * ldc + i];
    } else if (a_type == kR32F && compute == kCompute32F) {
      cblas_sgemm(CblasColMajor, ta, tb, m, n, k, al, static_cast<const float *>(a), lda,
                  static_cast<const float *>(b), ldb, be, out, ldc);
    } else {
      auto conv = [&](int type) {
        return [type](const void *p, size_t i) {
          return type == kR16BF ? from_bf16(static_cast<const uint16_t *>(p)[i])
                                : nvcuda::wmma::__float_to_tf32(static_cast<const float *>(p)[i]);
        };
      };
      const std::vector<float> wa = widen(a, a_rows, a_cols, lda, conv(a_type));
      const std::vector<float> wb = widen(b, b_rows, b_cols, ldb, conv(b_type));
      cblas_sgemm(CblasColMajor, ta, tb, m, n, k, al, wa.data(), lda, wb.data(), ldb, be, out, ldc);
    }
  } else {
    return kNotSupported;
  }
  ++g_gemms;
  return kSuccess;
}

// The stand-in's counters: handles alive, products computed.
STAND_IN void lsm_stand_in_counts(int64_t *handles, int64_t *gemms) {
  *handles = g_handles.load();
  *gemms = g_gemms.load();
}
