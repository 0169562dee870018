// sanitize_driver.cpp: runs forward and backward through the C ABI on a CUDA context and compares
// them with the CPU backend, at shapes around the GEMM's 64x64 tiles, both dtypes and margins
// 1..6. Built against the CPU execution layer with -fsanitize=address,undefined, so an
// out-of-bounds access or undefined behaviour in a kernel stops it; built with nvcc it is the
// compute-sanitizer target of scripts/gpu-check.sh. Device buffers have exactly the tensors'
// sizes, so any overrun is past an allocation. Exit status 0 when everything matches.
// Prints one line per failure and a count (a test driver, not library code).
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "lsoftmax.h"

namespace {

int g_failures = 0;
int g_cases = 0;

uint64_t g_rng = 0x243f6a8885a308d3ull;
double uniform() {  // in [-1, 1)
  g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(g_rng >> 11) / (double)(1ull << 52) - 1.0;
}

struct shape {
  int64_t n, d, c;
};

// A CUDA-context buffer of exactly `bytes`, filled from host memory.
void *upload(lsm_context *ctx, const void *src, size_t bytes) {
  void *p = nullptr;
  if (lsm_malloc(ctx, bytes, &p) != LSM_OK) return nullptr;
  if (src != nullptr && lsm_memcpy_to_context(ctx, p, src, bytes) != LSM_OK) return nullptr;
  return p;
}

template <typename T>
bool close(const std::vector<T> &got, const std::vector<T> &want, double tol, const std::string &what) {
  double scale = 1.0;
  for (T v : want) scale = fmax(scale, fabs((double)v));
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = (double)got[i], w = (double)want[i];
    if (!(fabs(g - w) <= tol * scale)) {
      printf("FAIL %s: element %zu is %.17g, the CPU backend says %.17g (tolerance %g)\n", what.c_str(), i, g, w,
             tol * scale);
      return false;
    }
  }
  return true;
}

template <typename T>
void run_case(lsm_context *cpu, lsm_context *gpu, const shape &s, int margin, double lambda) {
  const int32_t dtype = sizeof(T) == 4 ? LSM_FLOAT32 : LSM_FLOAT64;
  const double tol = sizeof(T) == 4 ? 2e-4 : 1e-9;
  const size_t nd = (size_t)(s.n * s.d), cd = (size_t)(s.c * s.d), nc = (size_t)(s.n * s.c);
  std::vector<T> x(nd), w(cd), g(nc);
  std::vector<int32_t> labels((size_t)s.n);
  for (auto &v : x) v = (T)uniform();
  for (auto &v : w) v = (T)uniform();
  for (auto &v : g) v = (T)uniform();
  for (auto &v : labels) v = (int32_t)((uniform() + 1.0) * 0.5 * (double)s.c) % (int32_t)s.c;
  if (s.n > 2) {  // a zero feature row: the degenerate rule
    for (int64_t k = 0; k < s.d; ++k) x[(size_t)(s.d + k)] = T(0);
  }
  const std::string name = std::string(sizeof(T) == 4 ? "f32" : "f64") + " n=" + std::to_string(s.n) +
                           " d=" + std::to_string(s.d) + " c=" + std::to_string(s.c) + " m=" + std::to_string(margin) +
                           " lambda=" + std::to_string(lambda);
  ++g_cases;

  std::vector<T> logits_cpu(nc), gx_cpu(nd), gw_cpu(cd);
  if (lsm_forward(cpu, dtype, x.data(), w.data(), labels.data(), s.n, s.d, s.c, margin, lambda, logits_cpu.data()) !=
          LSM_OK ||
      lsm_backward(cpu, dtype, x.data(), w.data(), labels.data(), g.data(), s.n, s.d, s.c, margin, lambda,
                   gx_cpu.data(), gw_cpu.data()) != LSM_OK) {
    printf("FAIL %s: CPU backend: %s\n", name.c_str(), lsm_last_error());
    ++g_failures;
    return;
  }

  const size_t e = sizeof(T);
  void *dx = upload(gpu, x.data(), nd * e), *dw = upload(gpu, w.data(), cd * e), *dg = upload(gpu, g.data(), nc * e);
  void *dl = upload(gpu, labels.data(), labels.size() * sizeof(int32_t));
  void *dlogits = upload(gpu, nullptr, nc * e), *dgx = upload(gpu, nullptr, nd * e), *dgw = upload(gpu, nullptr, cd * e);
  bool ok = dx && dw && dg && dl && dlogits && dgx && dgw;
  std::vector<T> logits(nc), gx(nd), gw(cd);
  if (ok) {
    ok = lsm_forward(gpu, dtype, dx, dw, static_cast<const int32_t *>(dl), s.n, s.d, s.c, margin, lambda, dlogits) ==
             LSM_OK &&
         lsm_backward(gpu, dtype, dx, dw, static_cast<const int32_t *>(dl), dg, s.n, s.d, s.c, margin, lambda, dgx,
                      dgw) == LSM_OK &&
         lsm_memcpy_from_context(gpu, logits.data(), dlogits, nc * e) == LSM_OK &&
         lsm_memcpy_from_context(gpu, gx.data(), dgx, nd * e) == LSM_OK &&
         lsm_memcpy_from_context(gpu, gw.data(), dgw, cd * e) == LSM_OK;
    if (!ok) printf("FAIL %s: CUDA backend: %s\n", name.c_str(), lsm_last_error());
  } else {
    printf("FAIL %s: lsm_malloc: %s\n", name.c_str(), lsm_last_error());
  }
  if (ok) {
    ok = close(logits, logits_cpu, tol, name + " logits") && close(gx, gx_cpu, tol, name + " grad_x") &&
         close(gw, gw_cpu, tol, name + " grad_w");
  }
  if (!ok) ++g_failures;
  for (void *p : {dx, dw, dg, dl, dlogits, dgx, dgw}) lsm_free(gpu, p);
}

// A label outside [0, c) is an error on the CUDA path too, and is never used as an index.
void bad_label(lsm_context *gpu) {
  const int64_t n = 5, d = 3, c = 4;
  std::vector<float> x((size_t)(n * d), 0.5f), w((size_t)(c * d), 0.25f);
  std::vector<int32_t> labels = {0, 1, 7, 2, -1};
  void *dx = upload(gpu, x.data(), x.size() * 4), *dw = upload(gpu, w.data(), w.size() * 4);
  void *dl = upload(gpu, labels.data(), labels.size() * 4), *dlogits = upload(gpu, nullptr, (size_t)(n * c) * 4);
  const int32_t st = lsm_forward(gpu, LSM_FLOAT32, dx, dw, static_cast<const int32_t *>(dl), n, d, c, 2, 0.0, dlogits);
  const bool ok = st == LSM_ERR_INVALID_ARGUMENT && strstr(lsm_last_error(), "labels[2]") != nullptr;
  if (!ok) {
    printf("FAIL bad label: status %d, message \"%s\"\n", st, lsm_last_error());
    ++g_failures;
  }
  for (void *p : {dx, dw, dl, dlogits}) lsm_free(gpu, p);
}

}  // namespace

// `sanitize_driver quick`: margins 1 and 4 only, for the slower compute-sanitizer tools.
int main(int argc, char **argv) {
  const bool quick = argc > 1 && strcmp(argv[1], "quick") == 0;
  lsm_context *cpu = nullptr, *gpu = nullptr;
  if (lsm_context_create(LSM_BACKEND_CPU, 0, &cpu) != LSM_OK) {
    printf("FAIL CPU context: %s\n", lsm_last_error());
    return 1;
  }
  if (lsm_context_create(LSM_BACKEND_CUDA, 0, &gpu) != LSM_OK) {
    printf("FAIL CUDA context: %s\n", lsm_last_error());
    lsm_context_destroy(cpu);
    return 1;
  }
  // Below one tile, exactly one, between tiles, and the degenerate sizes D = 1, N = 1, C = 1.
  const shape shapes[] = {{1, 1, 1},   {1, 7, 5},    {9, 1, 6},   {8, 5, 1},    {3, 17, 4},   {31, 33, 47},
                          {64, 16, 64}, {65, 65, 65}, {130, 9, 3}, {5, 130, 70}, {66, 20, 130}};
  const double lambdas[] = {0.0, 0.5, 3.0};
  int i = 0;
  for (const shape &s : shapes) {
    for (int m = 1; m <= 6; ++m) {
      if (quick && m != 1 && m != 4) continue;
      const double lambda = lambdas[(i++) % 3];
      run_case<float>(cpu, gpu, s, m, lambda);
      run_case<double>(cpu, gpu, s, m, lambda);
    }
  }
  bad_label(gpu);
  lsm_context_destroy(gpu);
  lsm_context_destroy(cpu);
  printf("sanitize_driver: %d case(s), %d failure(s)\n", g_cases, g_failures);
  return g_failures == 0 ? 0 : 1;
}
