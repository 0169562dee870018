// planted.cu: the CPU execution layer's self-test. Kernels with a planted bug (a missing
// __syncthreads, a warp-synchronous assumption) must give wrong answers under the emulator's
// scheduler while their correct twins give right ones; the warp operations, atomics and the
// runtime's error paths must behave as on a GPU. Built with g++ -x c++ -DLSM_EMU -Iemulator.
// Exit status 0 when every check passes.
#include <cuda_runtime.h>
#include <mma.h>
#include <stdio.h>
#include <string.h>

#include <string>
#include <vector>

#include "gpu/launch.cuh"

namespace {

int g_failures = 0;

void check(bool ok, const std::string &what) {
  printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++g_failures;
}

constexpr int kBlock = 256;

// Block sum through a shared-memory tree. Sync = false plants the bug: no barrier between the
// stores and the first reads of other threads' slots.
template <bool Sync>
__global__ void block_sum(const float *in, float *out, int n) {
  __shared__ float s[kBlock];
  const int t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? in[i] : 0.0f;
  if (Sync) __syncthreads();
  for (int stride = kBlock / 2; stride > 0; stride /= 2) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// Warp sum through shared memory. Sync = false plants the pre-Volta habit of relying on lockstep
// (volatile, no __syncwarp), which independent thread scheduling breaks.
template <bool Sync>
__global__ void warp_sum(const int *in, int *out) {
  __shared__ int s[64];
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * 32 + t];
  s[t + 32] = 0;
  if (Sync) __syncwarp();
  for (int off = 16; off > 0; off /= 2) {
    if (Sync) {
      const int v = s[t + off];
      __syncwarp();
      s[t] += v;
      __syncwarp();
    } else {
      volatile int *vs = s;
      vs[t] += vs[t + off];
    }
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// Every lane gets the warp's sum by xor shuffles; lane 0 also records shfl_down / ballot results.
__global__ void shuffles(const double *in, double *xor_sum, double *down_sum, unsigned *ballots, int *idx) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32;
  double v = in[t], d = in[t];
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  for (int off = 16; off > 0; off /= 2) d += __shfl_down_sync(0xffffffffu, d, off);
  xor_sum[t] = v;
  if (lane == 0) down_sum[t / 32] = d;
  const unsigned b = __ballot_sync(0xffffffffu, lane % 3 == 0);
  if (lane == 0) ballots[t / 32] = b;
  idx[t] = __shfl_sync(0xffffffffu, lane * 10, 31 - lane);
}

// A block whose size is not a multiple of 32: the last warp has missing lanes.
__global__ void partial_warp(int *out) {
  const int t = threadIdx.x;
  const int v = __shfl_xor_sync(0xffffffffu, t, 1);
  const int any = __any_sync(0xffffffffu, t == 35);
  const int all = __all_sync(0xffffffffu, t < 1000);
  out[t] = v + 1000 * any + 10000 * all;
}

// Lane 0 waits at a block barrier while its warp waits for it in a shuffle: a hang on a GPU.
__global__ void divergent_barrier(int *out) {
  const int t = threadIdx.x;
  if (t == 0) {
    __syncthreads();
  } else {
    out[t] = __shfl_xor_sync(0xffffffffu, t, 1);
  }
}

__global__ void atomics(float *fsum, double *dsum, int *imin, unsigned *count) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(fsum, 1.0f);
  atomicAdd(dsum, 0.5);
  atomicMin(imin, 1000 - t);
  atomicAdd(count, 1u);
}

__global__ void votes(int *out) {
  const int t = threadIdx.x;
  const int c = __syncthreads_count(t % 4 == 0);
  const int a = __syncthreads_and(t >= 0);
  const int o = __syncthreads_or(t == 77);
  if (t == 0) {
    out[0] = c;
    out[1] = a;
    out[2] = o;
  }
}

template <typename T>
T *device_copy(const std::vector<T> &h) {
  T *d = nullptr;
  if (cudaMalloc(&d, h.size() * sizeof(T)) != cudaSuccess) return nullptr;
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

template <typename T>
std::vector<T> host_copy(const T *d, size_t n) {
  std::vector<T> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost);
  return h;
}

// Blocks whose sum differs from the exact one.
template <bool Sync>
int block_sum_errors() {
  const int blocks = 6, n = blocks * kBlock - 17;
  std::vector<float> in(n);
  for (int i = 0; i < n; ++i) in[i] = (float)(i % 97);
  float *din = device_copy(in);
  float *dout = nullptr;
  cudaMalloc(&dout, blocks * sizeof(float));
  LSM_LAUNCH(block_sum<Sync>, blocks, kBlock, nullptr, din, dout, n);
  const std::vector<float> out = host_copy(dout, blocks);
  int wrong = 0;
  for (int b = 0; b < blocks; ++b) {
    float want = 0.0f;
    for (int i = b * kBlock; i < n && i < (b + 1) * kBlock; ++i) want += in[i];
    wrong += out[b] != want;
  }
  cudaFree(din);
  cudaFree(dout);
  return wrong;
}

template <bool Sync>
int warp_sum_errors() {
  const int warps = 8;
  std::vector<int> in(warps * 32);
  for (size_t i = 0; i < in.size(); ++i) in[i] = (int)(i * 7 % 31) + 1;
  int *din = device_copy(in);
  int *dout = nullptr;
  cudaMalloc(&dout, warps * sizeof(int));
  LSM_LAUNCH(warp_sum<Sync>, warps, 32, nullptr, din, dout);
  const std::vector<int> out = host_copy(dout, warps);
  int wrong = 0;
  for (int w = 0; w < warps; ++w) {
    int want = 0;
    for (int l = 0; l < 32; ++l) want += in[w * 32 + l];
    wrong += out[w] != want;
  }
  cudaFree(din);
  cudaFree(dout);
  return wrong;
}

void planted_barrier() {
  const char *schedules[] = {"mixed", "shuffle", "forward"};
  for (const char *sched : schedules) {
    setenv("LSM_EMU_SCHEDULE", sched, 1);
    check(block_sum_errors<true>() == 0, std::string("block_sum with its barrier is right (") + sched + ")");
    check(warp_sum_errors<true>() == 0, std::string("warp_sum with __syncwarp is right (") + sched + ")");
  }
  setenv("LSM_EMU_SCHEDULE", "mixed", 1);
  for (int seed = 1; seed <= 5; ++seed) {
    setenv("LSM_EMU_SEED", std::to_string(seed).c_str(), 1);
    check(block_sum_errors<true>() == 0, "block_sum with its barrier is right, seed " + std::to_string(seed));
    check(block_sum_errors<false>() > 0, "block_sum without its barrier is wrong, seed " + std::to_string(seed));
    check(warp_sum_errors<false>() > 0, "warp_sum relying on lockstep is wrong, seed " + std::to_string(seed));
  }
  unsetenv("LSM_EMU_SEED");
  unsetenv("LSM_EMU_SCHEDULE");
}

void warp_operations() {
  const int threads = 128, warps = threads / 32;
  std::vector<double> in(threads);
  for (int i = 0; i < threads; ++i) in[i] = i * 0.25;
  double *din = device_copy(in);
  double *dx = nullptr, *dd = nullptr;
  unsigned *db = nullptr;
  int *di = nullptr;
  cudaMalloc(&dx, threads * sizeof(double));
  cudaMalloc(&dd, warps * sizeof(double));
  cudaMalloc(&db, warps * sizeof(unsigned));
  cudaMalloc(&di, threads * sizeof(int));
  LSM_LAUNCH(shuffles, 2, 64, nullptr, din, dx, dd, db, di);
  check(cudaGetLastError() == cudaSuccess, "shuffles launched");
  const auto x = host_copy(dx, threads);
  const auto d = host_copy(dd, warps);
  const auto b = host_copy(db, warps);
  const auto idx = host_copy(di, threads);
  bool xs = true, ds = true, bs = true, is = true;
  for (int w = 0; w < warps; ++w) {
    double want = 0.0;
    for (int l = 0; l < 32; ++l) want += in[w * 32 + l];
    for (int l = 0; l < 32; ++l) xs = xs && x[w * 32 + l] == want;
    ds = ds && d[w] == want;
    bs = bs && b[w] == 0x49249249u;
    for (int l = 0; l < 32; ++l) is = is && idx[w * 32 + l] == (31 - l) * 10;
  }
  check(xs, "__shfl_xor_sync butterfly sum reaches every lane");
  check(ds, "__shfl_down_sync tree sum reaches lane 0");
  check(bs, "__ballot_sync");
  check(is, "__shfl_sync from another lane");
  cudaFree(din);
  cudaFree(dx);
  cudaFree(dd);
  cudaFree(db);
  cudaFree(di);

  int *dp = nullptr;
  cudaMalloc(&dp, 40 * sizeof(int));
  LSM_LAUNCH(partial_warp, 1, 40, nullptr, dp);
  check(cudaDeviceSynchronize() == cudaSuccess, "a block of 40 threads shuffles without a hang");
  const auto p = host_copy(dp, 40);
  bool ok = true;
  for (int t = 0; t < 40; ++t) ok = ok && p[t] == (t ^ 1) + 1000 * (t >= 32 ? 1 : 0) + 10000;
  check(ok, "shuffles and votes of a partial warp see its live lanes only");
  cudaFree(dp);
}

void atomics_and_votes() {
  float *f = nullptr;
  double *d = nullptr;
  int *m = nullptr;
  unsigned *c = nullptr;
  cudaMalloc(&f, sizeof(float));
  cudaMalloc(&d, sizeof(double));
  cudaMalloc(&m, sizeof(int));
  cudaMalloc(&c, sizeof(unsigned));
  cudaMemset(f, 0, sizeof(float));
  cudaMemset(d, 0, sizeof(double));
  cudaMemset(c, 0, sizeof(unsigned));
  const int big = 1 << 20;
  cudaMemcpy(m, &big, sizeof big, cudaMemcpyHostToDevice);
  LSM_LAUNCH(atomics, 3, 100, nullptr, f, d, m, c);
  check(host_copy(f, 1)[0] == 300.0f && host_copy(d, 1)[0] == 150.0 && host_copy(m, 1)[0] == 1000 - 299 &&
            host_copy(c, 1)[0] == 300u,
        "atomicAdd (float, double, unsigned) and atomicMin");
  int *v = nullptr;
  cudaMalloc(&v, 3 * sizeof(int));
  LSM_LAUNCH(votes, 1, 200, nullptr, v);
  const auto r = host_copy(v, 3);
  check(r[0] == 50 && r[1] == 1 && r[2] == 1, "__syncthreads_count/and/or");
  cudaFree(f);
  cudaFree(d);
  cudaFree(m);
  cudaFree(c);
  cudaFree(v);
}

void runtime_errors() {
  int *p = nullptr;
  cudaMalloc(&p, 64 * sizeof(int));
  LSM_LAUNCH(partial_warp, 1, 1025, nullptr, p);
  check(cudaGetLastError() == cudaErrorInvalidConfiguration, "a block of 1025 threads: cudaErrorInvalidConfiguration");
  check(cudaGetLastError() == cudaSuccess, "cudaGetLastError clears the error");
  LSM_LAUNCH(partial_warp, 0, 32, nullptr, p);
  check(cudaGetLastError() == cudaErrorInvalidConfiguration, "a grid of 0 blocks: cudaErrorInvalidConfiguration");
  LSM_LAUNCH(partial_warp, 1, dim3(8, 8, 65), nullptr, p);
  check(cudaGetLastError() == cudaErrorInvalidConfiguration, "blockDim.z = 65: cudaErrorInvalidConfiguration");

  LSM_LAUNCH(divergent_barrier, 1, 64, nullptr, p);
  check(cudaGetLastError() == cudaErrorLaunchFailure, "a warp split between a barrier and a shuffle fails");
  check(cudaDeviceSynchronize() == cudaErrorLaunchFailure, "... and the next synchronization reports it");
  check(cudaDeviceSynchronize() == cudaSuccess, "... once");
  LSM_LAUNCH(votes, 1, 32, nullptr, p);
  check(cudaDeviceSynchronize() == cudaSuccess, "the thread launches again after the failure");

  int local = 0;
  check(cudaFree(&local) == cudaErrorInvalidValue, "cudaFree of memory it did not allocate");
  check(cudaMemcpy(p + 60, &local, 8 * sizeof(int), cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
        "cudaMemcpy past the end of an allocation");
  check(cudaMemcpy(p + 56, &local, sizeof(int), cudaMemcpyHostToDevice) == cudaSuccess, "cudaMemcpy inside it");
  cudaGetLastError();
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "cudaStreamCreateWithFlags");
  check(cudaStreamDestroy(s) == cudaSuccess, "cudaStreamDestroy");
  LSM_LAUNCH(votes, 1, 32, s, p);
  check(cudaGetLastError() == cudaErrorInvalidResourceHandle, "a launch on a destroyed stream");
  cudaEvent_t a = nullptr, b = nullptr;
  float ms = -1.0f;
  check(cudaEventCreate(&a) == cudaSuccess && cudaEventCreate(&b) == cudaSuccess && cudaEventRecord(a) == cudaSuccess &&
            cudaEventRecord(b) == cudaSuccess && cudaEventSynchronize(b) == cudaSuccess &&
            cudaEventElapsedTime(&ms, a, b) == cudaSuccess && ms >= 0.0f && cudaEventDestroy(a) == cudaSuccess &&
            cudaEventDestroy(b) == cudaSuccess,
        "events time an interval");
  check(cudaFree(p) == cudaSuccess, "cudaFree");

  cudaDeviceProp prop;
  int n = -1;
  check(cudaGetDeviceCount(&n) == cudaSuccess && n == 1 && cudaGetDeviceProperties(&prop, 0) == cudaSuccess &&
            prop.major == 9 && prop.minor == 0 && std::string(prop.name).find("lsm-emu") == 0,
        "one device, lsm-emu, sm_90");
  int major = 0, minor = -1;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) == cudaSuccess && major == 9 &&
            minor == 0,
        "cudaDeviceGetAttribute: compute capability 9.0");
  setenv("LSM_EMU_DEVICES", "0", 1);
  check(cudaGetDeviceCount(&n) == cudaErrorNoDevice && n == 0, "LSM_EMU_DEVICES=0: cudaErrorNoDevice");
  check(cudaSetDevice(0) == cudaErrorNoDevice, "LSM_EMU_DEVICES=0: cudaSetDevice fails");
  unsetenv("LSM_EMU_DEVICES");
  cudaGetLastError();
}

}  // namespace

// One warp: D = A B + C through the emulated WMMA (m16n16k8, TF32), A col-major and B row-major
// in shared memory as the GEMM kernel keeps them, D stored row-major.
__global__ void wmma_tile(const float *a, const float *b, float *d) {
  namespace wmma = nvcuda::wmma;
  struct tiles {
    alignas(32) float a[8 * 16];  // element (m, k) at [k * 16 + m]
    alignas(32) float b[8 * 16];  // element (k, n) at [k * 16 + n]
    alignas(32) float d[16 * 16];
  };
  __shared__ tiles t;
  for (int e = threadIdx.x; e < 128; e += 32) t.a[e] = a[e], t.b[e] = b[e];
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  wmma::load_matrix_sync(fa, t.a, 16);
  wmma::load_matrix_sync(fb, t.b, 16);
  for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
  for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(t.d, acc, 16, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < 256; e += 32) d[e] = t.d[e];
}

float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

void tensor_cores() {
  using nvcuda::wmma::__float_to_tf32;
  // cvt.rna.tf32.f32: 10 mantissa bits, round to nearest, ties away from zero.
  check(__float_to_tf32(from_bits(0x3f800fffu)) == 1.0f, "tf32: below half an ulp rounds down");
  check(__float_to_tf32(from_bits(0x3f801000u)) == from_bits(0x3f802000u), "tf32: a tie rounds away from zero");
  check(__float_to_tf32(from_bits(0xbf801000u)) == from_bits(0xbf802000u), "tf32: a negative tie too");
  check(__float_to_tf32(from_bits(0x7f7fffffu)) == from_bits(0x7f800000u), "tf32: FLT_MAX rounds to Inf");
  check(__float_to_tf32(1.0f / 3.0f) != 1.0f / 3.0f && __float_to_tf32(0.5f) == 0.5f, "tf32: 1/3 changes, 0.5 not");
  std::vector<float> a(128), b(128);
  for (int e = 0; e < 128; ++e) a[e] = 1.0f + (float)e / 3.0f, b[e] = 0.5f - (float)e / 7.0f;
  float *da = device_copy(a), *db = device_copy(b), *dd = nullptr;
  cudaMalloc(&dd, 256 * sizeof(float));
  LSM_LAUNCH(wmma_tile, 1, 32, 0, da, db, dd);
  check(cudaDeviceSynchronize() == cudaSuccess, "wmma_tile launched");
  const auto d = host_copy(dd, 256);
  double worst = 0.0;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      double want = 1.0, mag = 1.0;
      for (int k = 0; k < 8; ++k) {
        want += (double)__float_to_tf32(a[k * 16 + m]) * __float_to_tf32(b[k * 16 + n]);
        mag += fabs((double)a[k * 16 + m] * b[k * 16 + n]);
      }
      worst = fmax(worst, fabs(d[m * 16 + n] - want) / mag);
    }
  check(worst < 1e-6, "wmma m16n16k8 tf32: D = A B + C with col-major A, row-major B (error " +
                          std::to_string(worst) + ")");
  for (float *p : {da, db, dd}) cudaFree(p);
}

int main() {
  planted_barrier();
  warp_operations();
  atomics_and_votes();
  runtime_errors();
  tensor_cores();
  printf("planted: %d failure(s)\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}
