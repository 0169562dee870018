// cuda_loss.cu: the fused loss on a CUDA device (lsm_loss*).
#include "internal.h"

int32_t lsm_cuda_loss(lsm_context *ctx, const lsm_loss_problem &) {
  return lsm_fail(ctx, LSM_ERR_UNAVAILABLE, "the fused loss has no CUDA kernels yet");
}
