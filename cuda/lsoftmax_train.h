/*
 * lsoftmax_train.h: the part of the C ABI for training with W resident in context memory: the
 * optimizers (lsm_sgd_update, lsm_adam_update, the step a fused loss applies), the sums, top-k,
 * the rows of a class sample, and the collectives of a head across processes (MPI, NCCL).
 * Included by lsoftmax.h, whose conventions hold; include lsoftmax.h, not this file.
 */
#ifndef LSOFTMAX_TRAIN_H
#define LSOFTMAX_TRAIN_H

#ifndef LSOFTMAX_H
#error "include lsoftmax.h, which includes lsoftmax_train.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Resident training: what a head whose W lives in context memory needs besides the fused loss. */

/**
 * SGD as PyTorch defines it (dampening 0). With g = grad + weight_decay * w:
 *   momentum 0:  w <- w - lr g                          (velocity unused, may be NULL)
 *   momentum mu: v <- first ? g : mu v + g,  w <- w - lr (nesterov ? g + mu v : v)
 * Each element is formed in double and stored with one rounding to the dtype. 40 bytes.
 */
typedef struct lsm_sgd {
  double lr;           /* finite, >= 0 */
  double momentum;     /* finite, >= 0 */
  double weight_decay; /* finite, >= 0 */
  int32_t nesterov;    /* 0 or 1 (1 needs momentum > 0) */
  int32_t first;       /* 1: the first step, v <- g (PyTorch's fresh momentum buffer) */
  int32_t nonfinite;   /* LSM_SGD_APPLY, LSM_SGD_SKIP or LSM_SGD_CHECK */
  int32_t reserved;    /* 0 */
} lsm_sgd;

/* lsm_sgd.nonfinite: what the update does with a gradient that holds a NaN or an infinity. */
#define LSM_SGD_APPLY 0 /* update whatever the gradient holds (not checked) */
#define LSM_SGD_SKIP 1  /* check the gradient; update only when every element is finite */
#define LSM_SGD_CHECK 2 /* check the gradient only; w and velocity are not written */

/**
 * One SGD step over count elements of context memory: w and velocity [count] (NULL when momentum
 * is 0) updated in place from grad [count], all of dtype. With LSM_SGD_SKIP or LSM_SGD_CHECK,
 * *nonfinite (host memory, required then; NULL allowed with LSM_SGD_APPLY) is 1 when grad holds a
 * NaN or an infinity, and then nothing is written, else 0 (on CUDA a device flag the kernel reads).
 */
LSM_API int32_t lsm_sgd_update(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_sgd *sgd, void *w,
                               const void *grad, void *velocity, int32_t *nonfinite);

/**
 * Adam and AdamW as PyTorch defines them (torch.optim.Adam, torch.optim.AdamW), t = step:
 *   g = grad_scale * grad      (clip_grad_norm_'s factor, 1 without clipping)
 *   Adam:  g <- g + weight_decay * w (when weight_decay != 0);  AdamW: w <- w (1 - lr weight_decay)
 *   m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2   (m = exp_avg, v = exp_avg_sq)
 *   amsgrad: vmax <- max(vmax, v), used below in place of v          (vmax = max_exp_avg_sq)
 *   w <- w - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 * Each element is formed in double and each stored value rounded once to the dtype. 72 bytes.
 */
typedef struct lsm_adam {
  double lr;           /* finite, >= 0 */
  double beta1;        /* in [0, 1) */
  double beta2;        /* in [0, 1) */
  double eps;          /* finite, >= 0 */
  double weight_decay; /* finite, >= 0 */
  double grad_scale;   /* finite, >= 0: the gradient's factor (clipping), 1 without */
  int64_t step;        /* t >= 1: the count of this update (PyTorch's step after its increment) */
  int32_t decoupled;   /* 0: Adam (L2 into the gradient), 1: AdamW (decoupled decay) */
  int32_t amsgrad;     /* 0 or 1 */
  int32_t nonfinite;   /* LSM_SGD_APPLY, LSM_SGD_SKIP or LSM_SGD_CHECK (of grad) */
  int32_t reserved;    /* 0 */
} lsm_adam;

/**
 * One Adam or AdamW step over count elements of context memory: w, exp_avg, exp_avg_sq and
 * max_exp_avg_sq [count] (NULL unless amsgrad) updated in place from grad [count], all of dtype.
 * nonfinite as lsm_sgd_update's: with LSM_SGD_SKIP or LSM_SGD_CHECK a gradient holding a NaN or an
 * infinity leaves every array unwritten and sets *nonfinite to 1.
 */
LSM_API int32_t lsm_adam_update(lsm_context *ctx, int32_t dtype, int64_t count, const lsm_adam *adam, void *w,
                                const void *grad, void *exp_avg, void *exp_avg_sq, void *max_exp_avg_sq,
                                int32_t *nonfinite);

/**
 * A training step in one call: lsm_loss with args->update set computes the loss and dL/dx as
 * without it, then applies the step (lsm_sgd_update's or lsm_adam_update's, exactly one of sgd
 * and adam non-NULL) to w in place (w is written although lsm_loss takes it const) with the
 * state arrays [c, d] of context memory beside it. The results equal to the last bit those of
 * lsm_loss followed by the update on grad_w, under this non-finite policy (the step's nonfinite
 * field; LSM_SGD_CHECK is not allowed): LSM_SGD_APPLY updates whatever the gradients hold;
 * LSM_SGD_SKIP updates only when every row loss, every element of grad_x and every element of
 * dL/dW is finite, and writes 1 to *nonfinite (host memory, required then) when it does not.
 * grad_x and grad_w are required; grad_w [c, d] is the call's scratch: its contents afterwards
 * are unspecified (the CPU applies the step class block by class block while each block of dL/dW
 * is in cache and leaves most of grad_w unwritten; where it cannot, and on CUDA, the step runs
 * after the loss). 64 bytes.
 */
typedef struct lsm_loss_update {
  const lsm_sgd *sgd;   /* SGD's settings, or NULL */
  const lsm_adam *adam; /* Adam's settings, or NULL */
  void *velocity;       /* SGD: the momentum buffer (NULL when momentum is 0) */
  void *exp_avg;        /* Adam: exp_avg, exp_avg_sq, max_exp_avg_sq (NULL unless amsgrad) */
  void *exp_avg_sq;
  void *max_exp_avg_sq;
  int32_t *nonfinite;   /* host memory: 1 when LSM_SGD_SKIP skipped the step, else 0 */
  int64_t reserved;     /* 0 */
} lsm_loss_update;

/**
 * y <- a x + b y over count elements of context memory (dtype), in double with one rounding per
 * element: gradient accumulation and clipping's scale in place. With b = 0, y is not read (so
 * NaN in it goes); with a = 0, x is not read and may be NULL. a and b finite.
 */
LSM_API int32_t lsm_axpby(lsm_context *ctx, int32_t dtype, int64_t count, double a, const void *x, double b,
                          void *y);

/** The float64 sum of squares of values [count] (dtype, context memory) into *out (host). */
LSM_API int32_t lsm_sum_squares(lsm_context *ctx, int32_t dtype, const void *values, int64_t count, double *out);

/** The sum of values [count] (float64, context memory) into *out (host memory), in float64. */
LSM_API int32_t lsm_sum(lsm_context *ctx, const double *values, int64_t count, double *out);

/** Largest k of lsm_topk. */
#define LSM_MAX_TOPK 128

/**
 * The k best classes of each row by score into indices [n, k] (int32) and scores [n, k] (dtype),
 * best first: higher scores first, equal scores by lower class index, NaN after every number.
 * The score is the plain logit x_i . W_j for L-Softmax (the margin only enters the target's
 * logit, which prediction does not know). Classes go in blocks through the context's workspace:
 * no n x c buffer. 1 <= k <= min(c, LSM_MAX_TOPK).
 */
LSM_API int32_t lsm_topk(lsm_context *ctx, int32_t dtype, int64_t n, int64_t d, int64_t c,
                         const lsm_margin *margin, int64_t k, const void *x, const void *w, int32_t *indices,
                         void *scores);

/**
 * Rows of a [c, d] tensor by an index list (Partial FC's sampled classes): lsm_gather_rows copies
 * src's rows index[0..k) into dst [k, d]; lsm_scatter_rows copies src [k, d] into those rows of
 * dst [c, d] and leaves its other rows as they are. index [k] (int32, context memory) must be
 * strictly ascending in [0, c): anything else is LSM_ERR_INVALID_ARGUMENT naming the first bad
 * entry (dst's contents are then unspecified). src and dst of dtype, context memory, apart.
 */
LSM_API int32_t lsm_gather_rows(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k,
                                const int32_t *index, const void *src, void *dst);
LSM_API int32_t lsm_scatter_rows(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k,
                                 const int32_t *index, const void *src, void *dst);

/**
 * Collectives across processes (MarginHead's distributed: "mpi"), through Open MPI loaded at run
 * time (libmpi.so.40, opened by lsm_mpi_init: the library needs no MPI otherwise). Host memory;
 * every rank makes the same calls in the same order. lsm_mpi_init initialises MPI where the
 * program has not (MPI_THREAD_SERIALIZED) and gives MPI_COMM_WORLD's rank and size; without
 * Open MPI it is LSM_ERR_UNAVAILABLE saying what to install. counts are per rank: bytes for
 * lsm_mpi_allgatherv (bytes == counts[rank]; recv holds them in rank order), doubles received for
 * lsm_mpi_reduce_scatter (send holds their sum over every rank's counts). lsm_mpi_allreduce is
 * in place, MPI_MAX when max is 1, else MPI_SUM. lsm_mpi_finalize is idempotent.
 */
LSM_API int32_t lsm_mpi_init(int32_t *rank, int32_t *size);
LSM_API int32_t lsm_mpi_allreduce(double *values, int64_t count, int32_t max);
LSM_API int32_t lsm_mpi_allgatherv(const void *send, int64_t bytes, void *recv, const int64_t *counts);
LSM_API int32_t lsm_mpi_reduce_scatter(const double *send, double *recv, const int64_t *counts);
LSM_API int32_t lsm_mpi_abort(int32_t code);
LSM_API int32_t lsm_mpi_finalize(void);

/**
 * The same collectives through NCCL (MarginHead's distributed: "nccl"), libnccl.so.2 loaded at run
 * time (LSOFTMAX_NCCL names another file). lsm_nccl_init makes this process's communicator on
 * CUDA device `device` (MPI first, as lsm_mpi_init; the unique id from rank 0 over MPI), again
 * only with the same device; without NCCL it is LSM_ERR_UNAVAILABLE saying what to install. The
 * collectives take host arrays, as lsm_mpi_*'s, and run on device buffers of the communicator's
 * own context. lsm_nccl_finalize is idempotent.
 */
LSM_API int32_t lsm_nccl_init(int32_t device, int32_t *rank, int32_t *size);
LSM_API int32_t lsm_nccl_allreduce(double *values, int64_t count, int32_t max);
LSM_API int32_t lsm_nccl_allgatherv(const void *send, int64_t bytes, void *recv, const int64_t *counts);
LSM_API int32_t lsm_nccl_reduce_scatter(const double *send, double *recv, const int64_t *counts);
LSM_API int32_t lsm_nccl_version(int32_t *version);
LSM_API int32_t lsm_nccl_finalize(void);

#ifdef __cplusplus
}
#endif

#endif /* LSOFTMAX_TRAIN_H */
