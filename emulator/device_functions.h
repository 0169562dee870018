// device_functions.h of the CPU execution layer (LSM_EMU), included by its cuda_runtime.h: the
// device functions CUDA C++ calls (barriers, warp shuffles and votes, atomics, the min/max and
// fast-math intrinsics), on the fibers of emu_runtime.cpp.
#ifndef LSM_EMU_DEVICE_FUNCTIONS_H
#define LSM_EMU_DEVICE_FUNCTIONS_H

#ifndef LSM_EMU_CUDA_RUNTIME_H
#error "emulator/device_functions.h comes with emulator/cuda_runtime.h: include that"
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

// ---------------------------------------------------------------------------------------------
// Device functions. Barriers and warp operations switch fibers; they are out of line (and not
// `leaf`) so the compiler assumes they may write any memory, shared memory included.
// ---------------------------------------------------------------------------------------------
namespace lsm_emu {
namespace detail {
void syncthreads();
int syncthreads_vote(int predicate, int op);  // op: 0 count, 1 and, 2 or
// The warp rendezvous: every live lane of `mask` deposits `value`, then each reads the value of
// lane `src` (all-ones bits where src did not take part). *ballot: lanes with predicate != 0.
uint64_t warp_exchange(unsigned mask, uint64_t value, int src, int predicate, unsigned *ballot);
unsigned active_mask();
int lane_id();

template <typename T>
inline T shuffle(unsigned mask, T var, int src) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle: at most 8 trivially copyable bytes");
  uint64_t bits = 0;
  memcpy(&bits, &var, sizeof(T));
  unsigned ballot = 0;
  bits = warp_exchange(mask, bits, src, 0, &ballot);
  T out;
  memcpy(&out, &bits, sizeof(T));
  return out;
}

// CAS loop for the atomics the compiler has no fetch-op builtin for.
template <typename T, typename F>
inline T atomic_update(T *address, F f) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(address, &old, f(old), false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
template <typename T, typename F>
inline T atomic_update_float(T *address, F f) {
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  U *bits = reinterpret_cast<U *>(address);
  U old = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    T oldv, newv;
    memcpy(&oldv, &old, sizeof(T));
    newv = f(oldv);
    U next;
    memcpy(&next, &newv, sizeof(T));
    if (__atomic_compare_exchange_n(bits, &old, next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return oldv;
  }
}
}  // namespace detail
}  // namespace lsm_emu

inline void __syncthreads() { lsm_emu::detail::syncthreads(); }
inline int __syncthreads_count(int p) { return lsm_emu::detail::syncthreads_vote(p, 0); }
inline int __syncthreads_and(int p) { return lsm_emu::detail::syncthreads_vote(p, 1); }
inline int __syncthreads_or(int p) { return lsm_emu::detail::syncthreads_vote(p, 2); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  unsigned ballot = 0;
  lsm_emu::detail::warp_exchange(mask, 0, 0, 0, &ballot);
}
inline unsigned __activemask() { return lsm_emu::detail::active_mask(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  const int lane = lsm_emu::detail::lane_id();
  return lsm_emu::detail::shuffle(mask, var, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int lane = lsm_emu::detail::lane_id();
  const int src = (lane & (width - 1)) >= (int)delta ? lane - (int)delta : lane;
  return lsm_emu::detail::shuffle(mask, var, src);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int lane = lsm_emu::detail::lane_id();
  const int src = (lane & (width - 1)) + (int)delta < width ? lane + (int)delta : lane;
  return lsm_emu::detail::shuffle(mask, var, src);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  const int lane = lsm_emu::detail::lane_id();
  const int src = lane ^ lane_mask;
  // A lane of a later width-group is out of reach: the caller gets its own value.
  const int end = (lane & ~(width - 1)) + width;
  return lsm_emu::detail::shuffle(mask, var, src >= end ? lane : src);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  unsigned ballot = 0;
  lsm_emu::detail::warp_exchange(mask, 0, 0, predicate, &ballot);
  return ballot;
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) {
  unsigned ballot = 0;
  lsm_emu::detail::warp_exchange(mask, 0, 0, predicate != 0 ? 0 : 1, &ballot);
  return ballot == 0;  // no participating lane had a false predicate
}

inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, sizeof u);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
template <typename T>
inline T __ldg(const T *p) {
  return *p;
}

// Atomics: real ones, since host threads may launch concurrently.
inline int atomicAdd(int *a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned *a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long *a, unsigned long long v) {
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float *a, float v) {
  return lsm_emu::detail::atomic_update_float(a, [v](float o) { return o + v; });
}
inline double atomicAdd(double *a, double v) {
  return lsm_emu::detail::atomic_update_float(a, [v](double o) { return o + v; });
}
inline int atomicSub(int *a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned *a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline int atomicExch(int *a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned *a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicExch(unsigned long long *a, unsigned long long v) {
  return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
}
inline float atomicExch(float *a, float v) {
  return lsm_emu::detail::atomic_update_float(a, [v](float) { return v; });
}
inline int atomicCAS(int *a, int compare, int v) {
  __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}
inline unsigned atomicCAS(unsigned *a, unsigned compare, unsigned v) {
  __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}
inline unsigned long long atomicCAS(unsigned long long *a, unsigned long long compare, unsigned long long v) {
  __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}
#define LSM_EMU_MINMAX_ATOMIC(T)                                                                     \
  inline T atomicMin(T *a, T v) {                                                                    \
    return lsm_emu::detail::atomic_update(a, [v](T o) { return v < o ? v : o; });                    \
  }                                                                                                  \
  inline T atomicMax(T *a, T v) {                                                                    \
    return lsm_emu::detail::atomic_update(a, [v](T o) { return v > o ? v : o; });                    \
  }
LSM_EMU_MINMAX_ATOMIC(int)
LSM_EMU_MINMAX_ATOMIC(unsigned)
LSM_EMU_MINMAX_ATOMIC(long long)
LSM_EMU_MINMAX_ATOMIC(unsigned long long)
#undef LSM_EMU_MINMAX_ATOMIC
#define LSM_EMU_BIT_ATOMIC(T)                                                                        \
  inline T atomicAnd(T *a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }              \
  inline T atomicOr(T *a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }                \
  inline T atomicXor(T *a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }
LSM_EMU_BIT_ATOMIC(int)
LSM_EMU_BIT_ATOMIC(unsigned)
LSM_EMU_BIT_ATOMIC(unsigned long long)
#undef LSM_EMU_BIT_ATOMIC
inline unsigned atomicInc(unsigned *a, unsigned limit) {
  return lsm_emu::detail::atomic_update(a, [limit](unsigned o) { return o >= limit ? 0u : o + 1u; });
}
inline unsigned atomicDec(unsigned *a, unsigned limit) {
  return lsm_emu::detail::atomic_update(a, [limit](unsigned o) { return (o == 0u || o > limit) ? limit : o - 1u; });
}

// Integer and float min/max as device code sees them, and a few fast-math intrinsics.
#define LSM_EMU_MINMAX(T)                                  \
  inline T min(T a, T b) { return b < a ? b : a; }         \
  inline T max(T a, T b) { return a < b ? b : a; }
LSM_EMU_MINMAX(int)
LSM_EMU_MINMAX(unsigned)
LSM_EMU_MINMAX(long long)
LSM_EMU_MINMAX(unsigned long long)
#undef LSM_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
#if !(defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 41)))  // C23 has them
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
#endif
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : (x == x ? x : 0.0f)); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }

#endif  // LSM_EMU_DEVICE_FUNCTIONS_H
