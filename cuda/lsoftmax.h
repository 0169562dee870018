/*
 * lsoftmax.h: the C ABI of liblsoftmax, the Large-Margin Softmax (L-Softmax) op.
 *
 * The kinds and their formulas: lsm_margin below; the math, and where it departs from the
 * TensorFlow C++ op this library reimplements: docs/math.md in the project.
 *
 * Conventions
 * - Every function returns an lsm_status; LSM_OK is 0. On failure, lsm_last_error() (this thread)
 *   and lsm_context_last_error() (that context) hold a message. Nothing is ever printed, and the
 *   library never exits or aborts.
 * - Tensors are dense and row-major: x [n, d], w [c, d], labels [n] int32 in [0, c), logits and
 *   grad_logits [n, c], grad_x [n, d], grad_w [c, d]. Elements are float or double (lsm_dtype).
 * - Tensor pointers are "context memory": for a CPU context any host memory; for a CUDA context
 *   memory from lsm_malloc on that context (device memory). lsm_memcpy_* moves bytes in and out.
 * - Sizes: n, d, c >= 1 and n*d, c*d each at most LSM_MAX_ELEMENTS; n*c too for lsm_forward and
 *   lsm_backward, which hold logits [n, c]. The fused loss and top-k hold no n x c tensor (class
 *   blocks within the workspace, 64-bit offsets): n*c may exceed it there.
 * - The margin is an lsm_margin, passed by pointer: its kind selects the formula and its fields
 *   the parameters (see lsm_margin below).
 * - Zero vectors: where x_i or W_y is the zero vector the cosine is undefined; for L-Softmax and
 *   A-Softmax the target logit is then the plain inner product (0) with its gradients; the
 *   normalised kinds: see lsm_margin. Norms are computed scaled by the largest element.
 * - NaN or Inf in a feature row propagates into that row of logits and grad_x (and, through the
 *   sum over samples, into grad_w), never into other rows of logits or grad_x.
 * - Calls on one context are not thread-safe: one context per thread (contexts are independent).
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
#define LSM_ABI_VERSION 4

/** Largest supported margin m. */
#define LSM_MAX_MARGIN 16

/** The default scratch limit of a context's fused loss calls: 64 MiB. */
#define LSM_DEFAULT_WORKSPACE_LIMIT ((size_t)64 << 20)

/** Largest element count of any one tensor (and of n*d, c*d): 2^31 - 1. */
#define LSM_MAX_ELEMENTS 2147483647LL

typedef enum lsm_status {
  LSM_OK = 0,
  LSM_ERR_INVALID_ARGUMENT = 1, /* a bad pointer, size, label, margin field or dtype */
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
  LSM_PRECISION_TF32 = 1,  /* float32 matrix products on tensor cores with TF32 inputs (10-bit
                              mantissa, float32 accumulation); CUDA sm_80+ only; float64
                              calls stay exact */
  LSM_PRECISION_BF16 = 2   /* the same with the products' inputs rounded to bfloat16 (7-bit
                              mantissa); the tensors themselves stay float32 */
} lsm_precision;

/** Margin kinds (lsm_margin.kind). */
typedef enum lsm_margin_kind {
  LSM_MARGIN_LSOFTMAX = 0, /* L-Softmax (Liu et al., ICML 2016): fields m and lambda */
  LSM_MARGIN_ASOFTMAX = 1, /* A-Softmax / SphereFace (CVPR 2017): m and lambda, W rows normalised */
  LSM_MARGIN_COSFACE = 2,  /* CosFace / AM-Softmax (CVPR 2018): scale and m3 */
  LSM_MARGIN_ARCFACE = 3,  /* ArcFace (CVPR 2019): scale, m2 and flags (LSM_FLAG_EASY_MARGIN) */
  LSM_MARGIN_COMBINED = 4, /* the combined margin (insightface): scale, m1, m2 and m3 */
  /* The adaptive margins (docs/math.md; the fused loss only): */
  LSM_MARGIN_SUBCENTER = 5,      /* sub-center ArcFace (ECCV 2020): scale, m2, m = sub-centers K */
  LSM_MARGIN_ADAFACE = 6,        /* AdaFace (CVPR 2022): scale, m2, h, t_alpha, batch_mean, batch_std */
  LSM_MARGIN_CURRICULARFACE = 7, /* CurricularFace (CVPR 2020): scale, m2, t_alpha, t */
  LSM_MARGIN_MAGFACE = 8         /* MagFace (CVPR 2021): scale, m2, upper_margin, the norms, lambda_g */
} lsm_margin_kind;

/** lsm_margin.flags of LSM_MARGIN_ARCFACE: the easy margin (cos(t + m) only where cos t > 0). */
#define LSM_FLAG_EASY_MARGIN 1u

/**
 * The margin of a call: which formula and its parameters. Fields a kind does not use must be 0,
 * and so must `reserved`. 144 bytes.
 *
 *   LSM_MARGIN_LSOFTMAX  m: integer margin in [1, LSM_MAX_MARGIN] (1 is the plain linear layer);
 *                        lambda: finite, >= 0; the target logit is
 *                        (lambda W_y.x + |W_y||x| psi(cos)) / (1 + lambda),
 *                        psi(c) = (-1)^k T_m(c) - 2k.
 *   LSM_MARGIN_ASOFTMAX  m, lambda as above, with every W row normalised inside the op:
 *                        f_ij = |x| cos t_j, f_iy = |x| (lambda cos t_y + psi(cos t_y)) / (1 + lambda).
 *   The normalised kinds: x and every W row normalised, f_ij = scale cos t_j (j != y), and
 *   LSM_MARGIN_COSFACE   scale > 0, m3 >= 0:          f_iy = scale (cos t_y - m3)
 *   LSM_MARGIN_ARCFACE   scale > 0, 0 <= m2 < pi/2:   f_iy = scale cos(t_y + m2) where
 *                        cos t_y > cos(pi - m2), else scale (cos t_y - m2 sin m2); with
 *                        flags = LSM_FLAG_EASY_MARGIN: scale cos(t_y + m2) where cos t_y > 0,
 *                        else scale cos t_y
 *   LSM_MARGIN_COMBINED  scale > 0, m1 >= 1, m2 >= 0, m3 >= 0 (all finite):
 *                        f_iy = scale (cos(m1 t_y + m2) - m3)
 *   The adaptive kinds (exact definitions: docs/math.md): scale > 0 and
 *   LSM_MARGIN_SUBCENTER       0 <= m2 < pi/2, m = K >= 1: W has c = C K rows (class j's at
 *                              jK .. jK+K-1), a class's cosine is its sub-centers' largest, the
 *                              target ArcFace's; class_offset and total_classes count classes
 *   LSM_MARGIN_ADAFACE         m2 >= 0 (m), h >= 0, t_alpha in [0, 1], batch_mean (finite),
 *                              batch_std (finite, >= 0)
 *   LSM_MARGIN_CURRICULARFACE  0 <= m2 < pi/2, t_alpha in [0, 1], t (finite)
 *   LSM_MARGIN_MAGFACE         0 <= m2 (l_m), upper_margin (u_m) < pi/2, 0 < lower_norm <
 *                              upper_norm, lambda_g >= 0 (all finite)
 *   A zero vector has the zero vector as its normalisation: its cosines are 0, and no gradient
 *   flows through it. Where the derivative of an angular target is unbounded (x_i parallel or
 *   antiparallel to W_y to within rounding: sin t_y = |r|, r = W^_y - cos t_y x^_i, at most
 *   32 (d + 4) DBL_EPSILON), the margin's term of the target's gradient with respect to the unit
 *   vectors is taken as 0.
 */
typedef struct lsm_margin {
  int32_t kind;   /* lsm_margin_kind */
  int32_t m;      /* integer margin; LSM_MARGIN_SUBCENTER: the sub-centers K */
  double lambda;  /* mix of the plain logit into the target's */
  double scale;   /* logit scale (normalised kinds) */
  double m1, m2, m3;
  uint32_t flags;
  uint32_t reserved_flags;
  double h;        /* AdaFace: the margin's sensitivity to the norm */
  double t_alpha;  /* AdaFace, CurricularFace: the weight of this batch in the moving averages */
  double batch_mean, batch_std; /* AdaFace: the moving averages before the step */
  double t;        /* CurricularFace: the moving average before the step */
  double lower_norm, upper_norm, lambda_g, upper_margin; /* MagFace: l_a, u_a, lambda_g, u_m */
  double reserved[2];
} lsm_margin;

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

/**
 * What a backend's matrix products run on, NUL-terminated into buf as lsm_device_name: for CUDA,
 * cuBLAS's version and path where it was found, else the library's own kernels and why.
 */
LSM_API int32_t lsm_products_info(int32_t backend, char *buf, size_t len);

/** Creates a context on a backend's device into *out. Destroy it with lsm_context_destroy. */
LSM_API int32_t lsm_context_create(int32_t backend, int32_t device, lsm_context **out);

/** Releases a context, its workspace and any memory still allocated on it. NULL is a no-op. */
LSM_API int32_t lsm_context_destroy(lsm_context *ctx);

/** The message of the last failed call on this context ("" if none). */
LSM_API const char *lsm_context_last_error(const lsm_context *ctx);

/** Backend (lsm_backend) and device index of a context. */
LSM_API int32_t lsm_context_info(const lsm_context *ctx, int32_t *backend, int32_t *device);

/**
 * Sets the precision of the context's later float32 matrix products (lsm_precision). TF32 and
 * bf16 are LSM_ERR_UNAVAILABLE on a CPU context and on GPUs older than compute capability 8.0.
 */
LSM_API int32_t lsm_context_set_precision(lsm_context *ctx, int32_t precision);

/**
 * The most bytes of scratch memory a fused loss call (lsm_loss*) may hold on the context: its
 * blocks of logits are sized to fit (one block row of classes, all n rows, at the least). The
 * default is LSM_DEFAULT_WORKSPACE_LIMIT; the workspace is kept for later calls until the context
 * is destroyed or the limit is lowered.
 */
LSM_API int32_t lsm_context_set_workspace_limit(lsm_context *ctx, size_t bytes);

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

/*
 * The ops. Every op takes the same head (context, dtype, sizes, margin), then its tensors in a
 * fixed order, inputs before outputs. Tensor pointers are context memory; outputs must not
 * alias the inputs or each other. Each returns when its results are in place.
 */

/** Forward: logits [n, c] from x [n, d], w [c, d] and labels [n]. */
LSM_API int32_t lsm_forward(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                            const lsm_margin *margin, const void *x, const void *w,
                            const int32_t *labels, void *logits);

/**
 * Backward: grad_x [n, d] and grad_w [c, d] (both overwritten) from the forward's inputs and the
 * upstream gradient grad_logits [n, c] = dL/dlogits.
 */
LSM_API int32_t lsm_backward(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                             const lsm_margin *margin, const void *x, const void *w,
                             const int32_t *labels, const void *grad_logits, void *grad_x,
                             void *grad_w);

/*
 * The fused loss: softmax cross-entropy over the margin logits, L_i = log sum_j exp(f_ij) - f_iy,
 * and its gradients, without ever holding the n x c logits (class blocks sized by the workspace
 * limit, with an online max and log-sum-exp). The log-sum-exp and the row losses are float64
 * whatever the dtype.
 *
 * Classes may be split into shards (devices, machines): w is then rows [class_offset,
 * class_offset + c) of the whole W, labels are global, and the rows a shard owns are those whose
 * label falls in its range. lsm_loss_partials gives each row's max m, sum of exp(f - m) and, where
 * the shard owns the label, the target logit; the caller combines shards (M = max m_k, S = sum
 * s_k exp(m_k - M), lse = M + log S) and hands lse to lsm_loss_gradients, which writes the shard's
 * share of grad_x (summed over shards by the caller) and its rows of grad_w.
 */
/*
 * The cross-entropy options (torch.nn.functional.cross_entropy; docs/math.md): with p = softmax(f),
 * eps = label_smoothing, w_j the class weights (1 without), S_w = sum_j w_j over all classes C,
 *   l_i = (1 - eps) w_{y_i} (-log p_{i y_i}) + (eps / C) sum_j w_j (-log p_ij),
 * dL/df_ij = grad_scale dl_i/df_ij (1 / the counted rows' sum of w_{y_i} for a mean, 1 for a sum).
 * With LSM_LOSS_IGNORE, rows labelled ignore_index (any int32) have l_i = 0 and no gradient.
 */
#define LSM_LOSS_IGNORE 1u /* lsm_loss_args.flags: rows labelled ignore_index are left out */

struct lsm_loss_update; /* an optimizer step lsm_loss applies to w: see below lsm_adam */

typedef struct lsm_loss_args {
  int64_t class_offset;  /* first class of w in the whole W: 0 unless sharded */
  int64_t total_classes; /* classes of the whole W (labels lie in [0, total_classes)): c unless sharded */
  double grad_scale;     /* the factor of every row's gradient: 1/N for an unweighted mean, 1 for a sum */
  double label_smoothing;      /* eps in [0, 1) */
  double weight_sum;           /* S_w, the sum of class_weights (0 when class_weights is NULL) */
  const double *class_weights; /* [total_classes] float64 context memory (finite, >= 0), all of
                                  the whole W's classes even for a shard; NULL: every weight 1 */
  int32_t ignore_index;        /* the label of rows left out, with LSM_LOSS_IGNORE (else 0) */
  uint32_t flags;              /* 0 or LSM_LOSS_IGNORE */
  const struct lsm_loss_update *update; /* host memory, lsm_loss only: the optimizer step to
                                           apply to w with the gradient (NULL: none) */
  double *state_out;           /* AdaFace, CurricularFace: host memory (or NULL) for the updated
                                  state, over all n rows: [batch_mean, batch_std] or [t, 0] */
  const double *row_targets;   /* CurricularFace on a shard: [2n] float64 context memory, every
                                  row's c_iy and T_i (lsm_loss_targets, summed over the shards);
                                  NULL: the call owns every label */
  int64_t reserved;            /* 0 */
} lsm_loss_args;

/**
 * The loss of every row into row_loss [n] (float64; 0 for ignored rows), and, unless grad_x and
 * grad_w are both NULL, its gradients grad_x [n, d] and grad_w [c, d] (overwritten); unsharded:
 * class_offset 0, total_classes c.
 */
LSM_API int32_t lsm_loss(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                         const lsm_margin *margin, const lsm_loss_args *args, const void *x,
                         const void *w, const int32_t *labels, double *row_loss, void *grad_x,
                         void *grad_w);

/**
 * One shard's per-row partials (float64, [n] each): row_max, row_sum = sum over the shard's
 * classes of exp(f_ij - row_max), target = f_iy where the shard owns label y_i (0 elsewhere),
 * and, with label smoothing (required then, else NULL), row_smooth = sum over the shard's classes
 * of w_j (row_max - f_ij) (>= 0). The caller combines them with M = max row_max:
 * sum_k row_smooth_k + W_k (M - row_max_k), W_k the shard's sum of weights.
 */
LSM_API int32_t lsm_loss_partials(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                                  const lsm_margin *margin, const lsm_loss_args *args,
                                  const void *x, const void *w, const int32_t *labels,
                                  double *row_max, double *row_sum, double *target,
                                  double *row_smooth);

/**
 * One shard's gradients given every row's global log-sum-exp lse [n] (float64): grad_x [n, d] is
 * the shard's share of dL/dx, grad_w [c, d] the gradient of its classes (both overwritten).
 */
LSM_API int32_t lsm_loss_gradients(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d,
                                   int64_t c, const lsm_margin *margin,
                                   const lsm_loss_args *args, const void *x, const void *w,
                                   const int32_t *labels, const double *lse, void *grad_x,
                                   void *grad_w);

/**
 * CurricularFace on class shards: each row's target cosine c_iy into row_targets[i] and its
 * threshold T_i = cos(t_iy + m) into row_targets[n + i] (float64 context memory, [2n]) where the
 * shard owns label y_i, 0 elsewhere. Summed over the shards, they go to every shard's partials
 * and gradients as args.row_targets. MagFace's partials give target = f_iy - lambda_g g_i, so that
 * lse - target is the row's loss.
 */
LSM_API int32_t lsm_loss_targets(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                                 const lsm_margin *margin, const lsm_loss_args *args, const void *x,
                                 const void *w, const int32_t *labels, double *row_targets);

/**
 * The op of every kind, the adaptive ones included, with lsm_loss_args: the margin logits
 * [n, c/K] (c rows of W, K per class for LSM_MARGIN_SUBCENTER, else K = 1), as the fused loss makes
 * them (AdaFace's and CurricularFace's with the state updated over the batch, which goes to
 * args->state_out). args: class_offset 0, total_classes c/K, and no cross-entropy options, update
 * or row_targets (0 / NULL: they belong to the loss). regulariser [n] (float64 context memory, or
 * NULL) receives MagFace's lambda_g g(a_i) per row (0 for the other kinds), which its loss adds.
 */
LSM_API int32_t lsm_forward_args(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                                 const lsm_margin *margin, const lsm_loss_args *args, const void *x,
                                 const void *w, const int32_t *labels, void *logits,
                                 double *regulariser);

/**
 * The gradients for lsm_forward_args's outputs: grad_x [n, d] and grad_w [c, d] (overwritten) of
 * L given grad_logits = dL/dlogits [n, c/K] and grad_regulariser = dL/dregulariser [n] (float64
 * context memory; NULL: 0), with the quantities the kinds hold constant (docs/math.md) made as the
 * forward made them (the same inputs and state give the same margins).
 */
LSM_API int32_t lsm_backward_args(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                                  const lsm_margin *margin, const lsm_loss_args *args,
                                  const void *x, const void *w, const int32_t *labels,
                                  const void *grad_logits, const double *grad_regulariser,
                                  void *grad_x, void *grad_w);

/* Resident training, top-k, class samples and the collectives across processes. */
#include "lsoftmax_train.h"

/**
 * Bytes the context has copied from the host (*to_context) and to the host (*from_context)
 * since it was created: lsm_memcpy_* and the library's own small copies (label checks, sums).
 */
LSM_API int32_t lsm_context_traffic(const lsm_context *ctx, uint64_t *to_context, uint64_t *from_context);

/**
 * The layout of an ABI struct (lsm_margin, lsm_loss_args, lsm_sgd, lsm_adam, lsm_loss_update) as this library was
 * built, for bindings to compare their encoders with: field "" gives *offset 0 and *bytes sizeof;
 * a field named as this header spells it gives its offsetof and sizeof (a whole array for an
 * array field); anything else is LSM_ERR_INVALID_ARGUMENT naming it.
 */
LSM_API int32_t lsm_layout(const char *type, const char *field, int64_t *offset, int64_t *bytes);

#ifdef __cplusplus
}
#endif

#endif /* LSOFTMAX_H */
