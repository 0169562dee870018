// nccl.cu: the one thing api/nccl.cpp needs of the CUDA backend, the stream of a context, for
// NCCL's collectives to run on it. api/nccl.cpp refers to it weakly: a library built without the
// CUDA backend has no CUDA contexts, and no NCCL then.
#include "gpu/common.cuh"

extern "C++" void *lsm_cuda_stream_of(lsm_context *ctx) {
  return ctx != nullptr && ctx->cuda != nullptr ? static_cast<void *>(ctx->cuda->stream) : nullptr;
}
