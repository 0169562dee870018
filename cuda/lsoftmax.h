/*
 * lsoftmax.h: the C ABI of liblsoftmax, the Large-Margin Softmax (L-Softmax) op.
 *
 * Math (see shared/spec/lsoftmax.md): for sample i with label y,
 *   non-target logits  f_ij = W_j . x_i
 *   target logit       f_iy = (lambda * W_y . x_i + |W_y| |x_i| psi(cos)) / (1 + lambda)
 * with psi(c) = (-1)^k T_m(c) - 2k, the paper's (not the seed TensorFlow op's) semantics.
 *
 * Conventions
 * - Every function returns an lsm_status; LSM_OK is 0. On failure, lsm_last_error() (this thread)
 *   and lsm_context_last_error() (that context) hold a message. Nothing is ever printed, and the
 *   library never exits or aborts.
 * - Tensors are dense and row-major: x [n, d], w [c, d], labels [n] int32 in [0, c), logits and
 *   grad_logits [n, c], grad_x [n, d], grad_w [c, d]. Elements are float or double (lsm_dtype).
 * - Tensor pointers are "context memory": for a CPU context any host memory; for a CUDA context
 *   memory from lsm_malloc on that context (device memory). lsm_memcpy_* moves bytes in and out.
 * - Sizes: n, d, c >= 1, and n*c, n*d, c*d each at most LSM_MAX_ELEMENTS, so that kernels can
 *   index with 32-bit integers. margin is an integer in [1, LSM_MAX_MARGIN]; lambda is finite
 *   and >= 0.
 * - Zero vectors: where |x_i| or |W_y| is 0 (or its square underflows to 0) the cosine is
 *   undefined; the target logit is then the plain inner product (0) and its gradients are those
 *   of the plain inner product (W_y for x_i, x_i for W_y). Outputs stay finite.
 * - NaN or Inf in a feature row propagates into that row of logits and grad_x (and, through the
 *   sum over samples, into grad_w), never into other rows of logits or grad_x.
 * - Calls on one context are not thread-safe; use one context per thread. Contexts are
 *   independent of each other.
 */
#ifndef LSOFTMAX_H
#define LSOFTMAX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LSM_API __declspec(dllexport)
#else
#define LSM_API __attribute__((visibility("default")))
#endif

/** Version of the C ABI: bumped on any incompatible change of this header. */
#define LSM_ABI_VERSION 1

/** Largest supported margin m. */
#define LSM_MAX_MARGIN 16

/** Largest element count of any one tensor (and of n*c, n*d, c*d): 2^31 - 1. */
#define LSM_MAX_ELEMENTS 2147483647LL

typedef enum lsm_status {
  LSM_OK = 0,
  LSM_ERR_INVALID_ARGUMENT = 1, /* a bad pointer, size, label, margin, lambda or dtype */
  LSM_ERR_UNAVAILABLE = 2,      /* backend or device not usable here (no driver, no GPU) */
  LSM_ERR_OUT_OF_MEMORY = 3,    /* host or device allocation failed */
  LSM_ERR_CUDA = 4,             /* a CUDA runtime error; the message names it */
  LSM_ERR_INTERNAL = 5          /* a bug: please report the message */
} lsm_status;

typedef enum lsm_backend {
  LSM_BACKEND_CPU = 0,
  LSM_BACKEND_CUDA = 1
} lsm_backend;

typedef enum lsm_dtype {
  LSM_FLOAT32 = 0,
  LSM_FLOAT64 = 1
} lsm_dtype;

typedef enum lsm_precision {
  LSM_PRECISION_EXACT = 0, /* IEEE float32/float64 arithmetic throughout (the default) */
  LSM_PRECISION_TF32 = 1   /* float32 matrix products on tensor cores with TF32 inputs (10-bit
                              mantissa, float32 accumulation); CUDA sm_80+ only; float64
                              calls stay exact */
} lsm_precision;

/** An execution context: a backend, a device and the memory and workspace owned there. */
typedef struct lsm_context lsm_context;

/** The library's version, e.g. "0.1.0". Static storage; never NULL. */
LSM_API const char *lsm_version(void);

/** LSM_ABI_VERSION of the built library; callers compare it to the header they were built for. */
LSM_API int32_t lsm_abi_version(void);

/**
 * The message of the last failed call on this thread ("" if none). Valid until the next
 * failing call on this thread.
 */
LSM_API const char *lsm_last_error(void);

/**
 * Number of usable devices of a backend into *count: always 1 for the CPU. For CUDA, the
 * number of GPUs; without a driver or a GPU, *count is 0 and the call returns
 * LSM_ERR_UNAVAILABLE with a message saying why.
 */
LSM_API int32_t lsm_device_count(int32_t backend, int32_t *count);

/**
 * The name of device `device` of a backend, NUL-terminated into buf (capacity len bytes;
 * LSM_ERR_INVALID_ARGUMENT if it does not fit, never truncated).
 */
LSM_API int32_t lsm_device_name(int32_t backend, int32_t device, char *buf, size_t len);

/** Creates a context on a backend's device into *out. Destroy it with lsm_context_destroy. */
LSM_API int32_t lsm_context_create(int32_t backend, int32_t device, lsm_context **out);

/** Releases a context, its workspace and any memory still allocated on it. NULL is a no-op. */
LSM_API int32_t lsm_context_destroy(lsm_context *ctx);

/** The message of the last failed call on this context ("" if none). */
LSM_API const char *lsm_context_last_error(const lsm_context *ctx);

/** Backend (lsm_backend) and device index of a context. */
LSM_API int32_t lsm_context_info(const lsm_context *ctx, int32_t *backend, int32_t *device);

/**
 * Sets the precision of the context's later float32 matrix products (lsm_precision). TF32 is
 * LSM_ERR_UNAVAILABLE on a CPU context and on GPUs older than compute capability 8.0.
 */
LSM_API int32_t lsm_context_set_precision(lsm_context *ctx, int32_t precision);

/** Allocates `bytes` (> 0) of context memory into *out, aligned to at least 256 bytes. */
LSM_API int32_t lsm_malloc(lsm_context *ctx, size_t bytes, void **out);

/** Frees context memory from lsm_malloc on this context. NULL is a no-op. */
LSM_API int32_t lsm_free(lsm_context *ctx, void *ptr);

/** Copies bytes from host memory into context memory. */
LSM_API int32_t lsm_memcpy_to_context(lsm_context *ctx, void *dst, const void *src,
                                      size_t bytes);

/** Copies bytes from context memory into host memory. */
LSM_API int32_t lsm_memcpy_from_context(lsm_context *ctx, void *dst, const void *src,
                                        size_t bytes);

/** Waits until all work queued on the context has finished. */
LSM_API int32_t lsm_synchronize(lsm_context *ctx);

/**
 * Forward: logits [n, c] from x [n, d], w [c, d] and labels [n], for margin m and lambda.
 * All pointers are context memory; logits must not alias the inputs. Returns when the
 * result is in place.
 */
LSM_API int32_t lsm_forward(lsm_context *ctx, int32_t dtype, const void *x, const void *w,
                            const int32_t *labels, int64_t n, int64_t d, int64_t c,
                            int32_t margin, double lambda, void *logits);

/**
 * Backward: grad_x [n, d] and grad_w [c, d] (both overwritten) from the same inputs as the
 * forward plus the upstream gradient grad_logits [n, c] = dL/dlogits. Outputs must not
 * alias inputs or each other. Returns when the results are in place.
 */
LSM_API int32_t lsm_backward(lsm_context *ctx, int32_t dtype, const void *x, const void *w,
                             const int32_t *labels, const void *grad_logits, int64_t n,
                             int64_t d, int64_t c, int32_t margin, double lambda,
                             void *grad_x, void *grad_w);

#ifdef __cplusplus
}
#endif

#endif /* LSOFTMAX_H */
