// planted_fault.cu: a kernel with a planted fault, for checking that the sanitizer build of the
// CPU execution layer catches faults inside kernels. `planted_fault oob` reads one element past a
// device buffer (AddressSanitizer: heap-buffer-overflow); `planted_fault overflow` overflows a
// signed int (UndefinedBehaviorSanitizer). Either must end the process with an error report.
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "gpu/launch.cuh"

__global__ void read_past_end(const float *in, float *out, int n) {
  const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i + 1];  // planted: in[n] is past the end
}

__global__ void signed_overflow(const int *in, int *out, int n) {
  const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i] * 65536 * 65536;  // planted: int overflow for any in[i] != 0
}

int main(int argc, char **argv) {
  const int n = 100;
  const bool oob = argc > 1 && strcmp(argv[1], "oob") == 0;
  void *in = nullptr, *out = nullptr;
  cudaMalloc(&in, n * 4);
  cudaMalloc(&out, n * 4);
  cudaMemset(in, 1, n * 4);
  if (oob) {
    LSM_LAUNCH(read_past_end, 2, 64, nullptr, static_cast<const float *>(in), static_cast<float *>(out), n);
  } else {
    LSM_LAUNCH(signed_overflow, 2, 64, nullptr, static_cast<const int *>(in), static_cast<int *>(out), n);
  }
  cudaDeviceSynchronize();
  cudaFree(in);
  cudaFree(out);
  printf("planted_fault: the fault was not caught\n");
  return 0;
}
