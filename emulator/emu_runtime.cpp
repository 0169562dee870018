// emu_runtime.cpp: the CPU execution layer behind emulator/cuda_runtime.h.
//
// A launch runs its grid on the calling host thread, one block at a time, in a permuted block
// order. The threads of a block are cooperative fibers (ucontext): the scheduler resumes each
// runnable fiber in turn and the fiber runs until it reaches __syncthreads, a warp operation or
// its end. The order of each pass is shuffled or reversed (a seeded PRNG; LSM_EMU_SCHEDULE,
// LSM_EMU_SEED), and a warp whose warp operation completes runs on at once, ahead of the rest of
// the pass; so code that leans on a missing barrier or on warp lockstep reads stale data and
// fails, where a GPU would pass by luck.
//
// Device memory is host memory, tracked so that frees and copies are checked; fresh allocations
// are filled with 0xff bytes (NaN for floats) because a GPU's are undefined. Kernel launches are
// counted per name and appended to $LSM_EMU_LAUNCH_LOG at exit. Nothing here prints or aborts.
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "lsm_emu_launch.h"

#if defined(__SANITIZE_ADDRESS__)
#define LSM_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LSM_EMU_ASAN 1
#endif
#endif
#if defined(LSM_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

__thread uint3 threadIdx;
__thread uint3 blockIdx;
__thread dim3 blockDim;
__thread dim3 gridDim;

namespace lsm_emu {
namespace detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Process and thread state.
// ---------------------------------------------------------------------------------------------
struct CUevent_data {
  unsigned flags = 0;
  bool recorded = false;
  std::chrono::steady_clock::time_point when;
};

struct global_state {
  std::mutex mu;
  std::map<uintptr_t, size_t> allocations;  // device memory: base -> bytes
  size_t allocated = 0;
  std::set<const void *> streams;
  std::set<const void *> events;
  std::map<std::string, unsigned long long> launches;
};

// Never destroyed: a context released by another static destructor may still free memory.
global_state &G() {
  static global_state *g = new global_state();
  return *g;
}

struct thread_state {
  cudaError_t last_error = cudaSuccess;
  cudaError_t pending = cudaSuccess;  // a failed kernel, for the next synchronizing call
  int device = 0;
};
thread_local thread_state T;

cudaError_t fail(cudaError_t e) {
  T.last_error = e;
  return e;
}

// Reported by synchronizing calls, then cleared: unlike a GPU's, the emulated error is not sticky,
// so one planted failure does not poison the rest of a test process.
cudaError_t take_pending() {
  const cudaError_t e = T.pending;
  T.pending = cudaSuccess;
  return e == cudaSuccess ? e : fail(e);
}

long env_long(const char *name, long fallback, long lo, long hi) {
  const char *s = getenv(name);
  if (s == nullptr || *s == 0) return fallback;
  char *end = nullptr;
  const long v = strtol(s, &end, 0);
  if (*end != 0) return fallback;
  return std::min(std::max(v, lo), hi);
}

int device_count() { return (int)env_long("LSM_EMU_DEVICES", 1, 0, 16); }

size_t memory_limit() { return (size_t)env_long("LSM_EMU_MEMORY_MB", 16384, 1, 1L << 24) << 20; }

// True when [p, p + bytes) lies inside one live allocation.
bool device_range(const void *p, size_t bytes) {
  global_state &g = G();
  std::lock_guard<std::mutex> lock(g.mu);
  const uintptr_t a = (uintptr_t)p;
  auto it = g.allocations.upper_bound(a);
  if (it == g.allocations.begin()) return false;
  --it;
  const uintptr_t off = a - it->first;
  return off < it->second && bytes <= it->second - off;
}

bool stream_ok(cudaStream_t s) {
  if (s == nullptr) return true;
  global_state &g = G();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.streams.count(s) != 0;
}

CUevent_data *event_data(cudaEvent_t e) {
  if (e == nullptr) return nullptr;
  global_state &g = G();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.events.count(e) != 0 ? reinterpret_cast<CUevent_data *>(e) : nullptr;
}

// The registries of live handles (streams, events): a handle is added once made and removed once
// destroyed, so that a stale or foreign one is refused.
using handle_set = std::set<const void *> global_state::*;

bool register_handle(handle_set set, const void *h) {
  global_state &g = G();
  try {
    std::lock_guard<std::mutex> lock(g.mu);
    (g.*set).insert(h);
    return true;
  } catch (...) {
    return false;  // out of memory: the caller frees the handle
  }
}

// False when h is not a live handle of that registry.
bool unregister_handle(handle_set set, const void *h) {
  if (h == nullptr) return false;
  global_state &g = G();
  std::lock_guard<std::mutex> lock(g.mu);
  return (g.*set).erase(h) != 0;
}

// Appends "name count" lines to $LSM_EMU_LAUNCH_LOG; runs at exit (or when the library unloads).
struct launch_log_writer {
  ~launch_log_writer() {
    global_state &g = G();
    std::lock_guard<std::mutex> lock(g.mu);
    const char *path = getenv("LSM_EMU_LAUNCH_LOG");
    if (path != nullptr && *path != 0 && !g.launches.empty()) {
      std::ofstream log(path, std::ios::app);  // a file the test run asked for, not the console
      for (const auto &kv : g.launches) log << kv.first << ' ' << kv.second << '\n';
    }
    g.launches.clear();
  }
} g_launch_log_writer;

// ---------------------------------------------------------------------------------------------
// Fibers and the block scheduler.
// ---------------------------------------------------------------------------------------------
enum class fstate : unsigned char { runnable, barrier, warp, done };

struct fiber {
  ucontext_t ctx;
  void *map = nullptr;  // the mapping: a guard page, then the stack
  size_t map_bytes = 0;
  char *stack = nullptr;
  size_t stack_bytes = 0;
  fstate state = fstate::done;
  uint3 tid = {0, 0, 0};
  unsigned linear = 0;
  // The pending barrier vote or warp operation.
  unsigned mask = 0;
  uint64_t deposit = 0;
  int src = 0;
  int pred = 0;
  uint64_t result = 0;
  unsigned ballot = 0;
  void *fake_stack = nullptr;  // ASan's fake stack while switched out
};

struct scheduler {
  ucontext_t main_ctx;
  std::vector<std::unique_ptr<fiber>> fibers;  // stacks are reused by every block and launch
  fiber *current = nullptr;
  unsigned nthreads = 0;
  body_fn body = nullptr;
  void *closure = nullptr;
  int vote_count = 0, vote_arrivals = 0;
  std::vector<unsigned> order;
  std::vector<unsigned> released;  // threads a completed warp operation made runnable
  const void *main_stack_bottom = nullptr;
  size_t main_stack_bytes = 0;
  void *main_fake_stack = nullptr;

  ~scheduler() {
    for (auto &f : fibers) munmap(f->map, f->map_bytes);
  }
};

thread_local std::unique_ptr<scheduler> tl_owner;
thread_local scheduler *tl_sched = nullptr;

inline void asan_start(void **fake, const void *bottom, size_t bytes) {
#if defined(LSM_EMU_ASAN)
  __sanitizer_start_switch_fiber(fake, bottom, bytes);
#else
  (void)fake, (void)bottom, (void)bytes;
#endif
}

inline void asan_finish(void *fake, const void **bottom, size_t *bytes) {
#if defined(LSM_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake, bottom, bytes);
#else
  (void)fake, (void)bottom, (void)bytes;
#endif
}

void fiber_entry() {
  scheduler *s = tl_sched;
  asan_finish(nullptr, &s->main_stack_bottom, &s->main_stack_bytes);
  s->body(s->closure);
  s->current->state = fstate::done;
  asan_start(nullptr, s->main_stack_bottom, s->main_stack_bytes);  // this frame is gone for good
  setcontext(&s->main_ctx);
}

// Called on a fiber: parks it in state st and returns when the scheduler resumes it.
void park(scheduler *s, fstate st) {
  fiber *f = s->current;
  f->state = st;
  asan_start(&f->fake_stack, s->main_stack_bottom, s->main_stack_bytes);
  swapcontext(&f->ctx, &s->main_ctx);
  asan_finish(f->fake_stack, &s->main_stack_bottom, &s->main_stack_bytes);
}

void resume(scheduler &s, fiber &f) {
  threadIdx = f.tid;
  s.current = &f;
  asan_start(&s.main_fake_stack, f.stack, f.stack_bytes);
  swapcontext(&s.main_ctx, &f.ctx);
  asan_finish(s.main_fake_stack, nullptr, nullptr);
}

size_t stack_bytes() {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  const size_t kib = (size_t)env_long("LSM_EMU_STACK_KB", 256, 32, 16384);
  return (kib * 1024 + page - 1) / page * page;
}

bool ensure_fibers(scheduler &s, unsigned n) {
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  while (s.fibers.size() < n) {
    std::unique_ptr<fiber> f(new fiber());
    f->stack_bytes = stack_bytes();
    f->map_bytes = f->stack_bytes + page;
    f->map = mmap(nullptr, f->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (f->map == MAP_FAILED) return false;
    // A guard page below the stack: an overflow faults instead of corrupting the next fiber.
    if (mprotect(f->map, page, PROT_NONE) != 0 || getcontext(&f->ctx) != 0) {
      munmap(f->map, f->map_bytes);
      return false;
    }
    f->stack = static_cast<char *>(f->map) + page;
    s.fibers.push_back(std::move(f));
  }
  return true;
}

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

enum class policy { mixed, shuffle, reverse, forward };

struct launch_params {
  policy order;
  uint64_t seed;
};

launch_params read_params() {
  launch_params p;
  const char *s = getenv("LSM_EMU_SCHEDULE");
  const std::string v = s == nullptr ? "" : s;
  p.order = v == "shuffle" ? policy::shuffle : v == "reverse" ? policy::reverse : v == "forward" ? policy::forward : policy::mixed;
  p.seed = (uint64_t)env_long("LSM_EMU_SEED", 0x5eed, 0, 0x7fffffffffffffffL);
  return p;
}

// The order of one pass over the runnable fibers. Mixed: shuffled on even passes, reversed on odd.
void permute(std::vector<unsigned> &v, const launch_params &p, uint64_t block_seed, unsigned pass) {
  const bool shuffle = p.order == policy::shuffle || (p.order == policy::mixed && pass % 2 == 0);
  if (p.order == policy::forward) return;
  if (!shuffle) {
    std::reverse(v.begin(), v.end());
    return;
  }
  uint64_t r = splitmix(block_seed ^ splitmix(pass + 1));
  for (size_t i = v.size(); i > 1; --i) {
    r = splitmix(r);
    std::swap(v[i - 1], v[r % i]);
  }
}

// Completes every warp operation of the warp starting at thread `base` whose live lanes have all
// arrived; appends the threads it made runnable to `released` when given.
void release_warp(scheduler &s, unsigned base, std::vector<unsigned> *released) {
  const unsigned n = s.nthreads;
  {
    const unsigned lanes = std::min(32u, n - base);
    unsigned live = 0, waiting = 0;
    for (unsigned l = 0; l < lanes; ++l) {
      const fstate st = s.fibers[base + l]->state;
      if (st != fstate::done) live |= 1u << l;
      if (st == fstate::warp) waiting |= 1u << l;
    }
    unsigned pending = waiting;
    while (pending != 0) {
      const unsigned l = (unsigned)__builtin_ctz(pending);
      // Lanes outside the mask, past the block's end or exited take no part.
      const unsigned group = (s.fibers[base + l]->mask | (1u << l)) & live;
      if ((group & ~waiting) != 0) {
        pending &= ~(1u << l);
        continue;
      }
      unsigned ballot = 0;
      for (unsigned g = group; g != 0; g &= g - 1) {
        const unsigned i = (unsigned)__builtin_ctz(g);
        if (s.fibers[base + i]->pred != 0) ballot |= 1u << i;
      }
      for (unsigned g = group; g != 0; g &= g - 1) {
        fiber &f = *s.fibers[base + (unsigned)__builtin_ctz(g)];
        const int src = f.src;
        const bool ok = src >= 0 && src < 32 && ((group >> src) & 1u) != 0;
        f.result = ok ? s.fibers[base + (unsigned)src]->deposit : ~0ull;  // undefined on a GPU: NaN here
        f.ballot = ballot;
        f.state = fstate::runnable;
        if (released != nullptr) released->push_back(f.linear);
      }
      pending &= ~group;
      waiting &= ~group;
    }
  }
}

void release_warps(scheduler &s) {
  for (unsigned base = 0; base < s.nthreads; base += 32) release_warp(s, base, nullptr);
}

// Runs one block to its end. False when it cannot go on: a warp operation waits for lanes that
// wait at __syncthreads (a hang on a GPU).
bool run_block(scheduler &s, const launch_params &p, uint64_t block_seed) {
  const unsigned n = s.nthreads;
  const unsigned bx = blockDim.x, bxy = blockDim.x * blockDim.y;
  for (unsigned i = 0; i < n; ++i) {
    fiber &f = *s.fibers[i];
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = f.stack_bytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
    // Hide the stack from ASan's swapcontext interceptor, which would otherwise wipe the live
    // frames' redzones on every switch; the fiber annotations tell it what it needs.
    f.ctx.uc_stack.ss_sp = nullptr;
    f.ctx.uc_stack.ss_size = 0;
    f.state = fstate::runnable;
    f.linear = i;
    f.tid = uint3{i % bx, (i / bx) % blockDim.y, i / bxy};
  }
  unsigned pass = 0;
  for (;;) {
    for (;;) {
      s.order.clear();
      for (unsigned i = 0; i < n; ++i)
        if (s.fibers[i]->state == fstate::runnable) s.order.push_back(i);
      if (s.order.empty()) break;
      permute(s.order, p, block_seed, pass);
      // A warp whose operation completes goes on at once, ahead of the rest of the pass, as a
      // GPU's warp may run ahead of the others: shared memory written before a warp operation
      // is then read by that warp before other warps have written theirs, unless a
      // __syncthreads stands between.
      for (size_t k = 0; k < s.order.size(); ++k) {
        fiber &f = *s.fibers[s.order[k]];
        resume(s, f);
        if (f.state != fstate::warp) continue;
        s.released.clear();
        release_warp(s, f.linear / 32 * 32, &s.released);
        if (s.released.empty()) continue;
        permute(s.released, p, block_seed ^ 0x77a9u, pass + (unsigned)k);
        s.order.insert(s.order.begin() + (std::ptrdiff_t)k + 1, s.released.begin(), s.released.end());
      }
      ++pass;
      release_warps(s);
    }
    bool done = true, warp = false;
    int arrivals = 0, count = 0;
    for (unsigned i = 0; i < n; ++i) {
      const fiber &f = *s.fibers[i];
      if (f.state == fstate::warp) warp = true;
      if (f.state == fstate::barrier) {
        done = false;
        ++arrivals;
        count += f.pred != 0 ? 1 : 0;
      }
    }
    if (warp) {
      s.current = nullptr;
#if defined(LSM_EMU_ASAN)
      // The abandoned fibers' frames left poisoned redzones behind.
      for (unsigned i = 0; i < n; ++i) __asan_unpoison_memory_region(s.fibers[i]->stack, s.fibers[i]->stack_bytes);
#endif
      return false;
    }
    if (done) return true;
    s.vote_arrivals = arrivals;
    s.vote_count = count;
    for (unsigned i = 0; i < n; ++i)
      if (s.fibers[i]->state == fstate::barrier) s.fibers[i]->state = fstate::runnable;
  }
}

uint64_t gcd(uint64_t a, uint64_t b) {
  while (b != 0) {
    const uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

bool valid_config(dim3 grid, dim3 block) {
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0) return false;
  if (block.x > 1024 || block.y > 1024 || block.z > 64) return false;
  if ((uint64_t)block.x * block.y * block.z > 1024) return false;
  return grid.x <= 0x7fffffffu && grid.y <= 65535 && grid.z <= 65535;
}

void run_grid_checked(const char *name, dim3 grid, dim3 block, cudaStream_t stream, body_fn body, void *closure) {
  if (device_count() == 0) {
    fail(cudaErrorNoDevice);
    return;
  }
  if (!valid_config(grid, block)) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  if (!stream_ok(stream)) {
    fail(cudaErrorInvalidResourceHandle);
    return;
  }
  if (tl_sched != nullptr && tl_sched->current != nullptr) {  // a launch from a kernel
    fail(cudaErrorNotSupported);
    return;
  }
  {
    std::string key;
    for (const char *c = name; *c != 0; ++c)
      if (*c != ' ') key += *c;
    global_state &g = G();
    std::lock_guard<std::mutex> lock(g.mu);
    ++g.launches[key];
  }
  if (tl_owner == nullptr) {
    tl_owner.reset(new scheduler());
    tl_sched = tl_owner.get();
  }
  scheduler &s = *tl_sched;
  const unsigned n = block.x * block.y * block.z;
  if (!ensure_fibers(s, n)) {
    fail(cudaErrorLaunchOutOfResources);
    return;
  }
  const launch_params p = read_params();
  s.nthreads = n;
  s.body = body;
  s.closure = closure;
  gridDim = grid;
  blockDim = block;
  // Blocks in a permuted order, k -> (a k + b) mod total with a coprime to total.
  const uint64_t total = (uint64_t)grid.x * grid.y * grid.z;
  uint64_t a = 1, b = 0;
  if (p.order != policy::forward && total > 1) {
    a = splitmix(p.seed ^ 0xb10c) % total;
    while (a == 0 || gcd(a, total) != 1) a = (a + 1) % total;
    b = splitmix(p.seed ^ 0x0ff5e7) % total;
  }
  for (uint64_t k = 0; k < total; ++k) {
    const uint64_t id = (uint64_t)(((unsigned __int128)a * k + b) % total);
    blockIdx = uint3{(unsigned)(id % grid.x), (unsigned)(id / grid.x % grid.y), (unsigned)(id / ((uint64_t)grid.x * grid.y))};
    if (!run_block(s, p, splitmix(p.seed ^ splitmix(id)))) {
      T.pending = cudaErrorLaunchFailure;
      fail(cudaErrorLaunchFailure);
      break;
    }
  }
  s.current = nullptr;
}

const char *error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorUnknown: return "cudaErrorUnknown";
  }
  return "cudaErrorUnknown";
}

const char *error_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure (emulator: a warp operation waits for lanes stuck at __syncthreads)";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorUnknown: return "unknown error";
  }
  return "unrecognized error code";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// What device code calls (declared in cuda_runtime.h).
// ---------------------------------------------------------------------------------------------
void syncthreads() {
  scheduler *s = tl_sched;
  if (s == nullptr || s->current == nullptr) return;  // host code: a single thread
  s->current->pred = 0;
  park(s, fstate::barrier);
}

int syncthreads_vote(int predicate, int op) {
  scheduler *s = tl_sched;
  if (s == nullptr || s->current == nullptr) return predicate != 0;  // host code: a single thread
  s->current->pred = predicate != 0;
  park(s, fstate::barrier);
  if (op == 0) return s->vote_count;
  if (op == 1) return s->vote_count == s->vote_arrivals;
  return s->vote_count > 0;
}

uint64_t warp_exchange(unsigned mask, uint64_t value, int src, int predicate, unsigned *ballot) {
  scheduler *s = tl_sched;
  if (s == nullptr || s->current == nullptr) {
    *ballot = predicate != 0 ? 1u : 0u;
    return src == 0 ? value : ~0ull;
  }
  fiber *f = s->current;
  f->mask = mask;
  f->deposit = value;
  f->src = src;
  f->pred = predicate;
  park(s, fstate::warp);
  *ballot = f->ballot;
  return f->result;
}

int lane_id() {
  scheduler *s = tl_sched;
  return s == nullptr || s->current == nullptr ? 0 : (int)(s->current->linear % 32);
}

unsigned active_mask() {
  scheduler *s = tl_sched;
  if (s == nullptr || s->current == nullptr) return 1u;
  const unsigned base = s->current->linear / 32 * 32;
  const unsigned lanes = std::min(32u, s->nthreads - base);
  unsigned m = 0;
  for (unsigned l = 0; l < lanes; ++l)
    if (s->fibers[base + l]->state != fstate::done) m |= 1u << l;
  return m;
}

void run_grid(const char *name, dim3 grid, dim3 block, cudaStream_t stream, body_fn body, void *closure) {
  try {
    run_grid_checked(name, grid, block, stream, body, closure);
  } catch (...) {  // std::bad_alloc from the bookkeeping
    fail(cudaErrorMemoryAllocation);
  }
}

}  // namespace detail
}  // namespace lsm_emu

// ---------------------------------------------------------------------------------------------
// Runtime API.
// ---------------------------------------------------------------------------------------------
using namespace lsm_emu::detail;

cudaError_t cudaGetDeviceCount(int *count) {
  if (count == nullptr) return fail(cudaErrorInvalidValue);
  *count = device_count();
  return *count == 0 ? fail(cudaErrorNoDevice) : cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
  if (prop == nullptr) return fail(cudaErrorInvalidValue);
  const int n = device_count();
  if (n == 0) return fail(cudaErrorNoDevice);
  if (device < 0 || device >= n) return fail(cudaErrorInvalidDevice);
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "lsm-emu (CPU execution layer)");
  prop->totalGlobalMem = memory_limit();
  prop->sharedMemPerBlock = 48 * 1024;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->totalConstMem = 64 * 1024;
  // sm_90 unless LSM_EMU_SM (e.g. 75) asks for another, for paths chosen by architecture.
  const long sm = env_long("LSM_EMU_SM", 90, 10, 990);
  prop->major = (int)(sm / 10);
  prop->minor = (int)(sm % 10);
  prop->multiProcessorCount = 1;
  prop->sharedMemPerMultiprocessor = 228 * 1024;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->l2CacheSize = 0;
  prop->memoryBusWidth = 0;
  prop->pciBusID = device;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return fail(cudaErrorInvalidValue);
  cudaDeviceProp p;
  const cudaError_t e = cudaGetDeviceProperties(&p, device);
  if (e != cudaSuccess) return e;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxBlockDimX: *value = p.maxThreadsDim[0]; break;
    case cudaDevAttrMaxBlockDimY: *value = p.maxThreadsDim[1]; break;
    case cudaDevAttrMaxBlockDimZ: *value = p.maxThreadsDim[2]; break;
    case cudaDevAttrMaxGridDimX: *value = p.maxGridSize[0]; break;
    case cudaDevAttrMaxGridDimY: *value = p.maxGridSize[1]; break;
    case cudaDevAttrMaxGridDimZ: *value = p.maxGridSize[2]; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)p.sharedMemPerBlock; break;
    case cudaDevAttrTotalConstantMemory: *value = (int)p.totalConstMem; break;
    case cudaDevAttrWarpSize: *value = p.warpSize; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = p.regsPerBlock; break;
    case cudaDevAttrMultiProcessorCount: *value = p.multiProcessorCount; break;
    case cudaDevAttrPciBusId: *value = p.pciBusID; break;
    case cudaDevAttrL2CacheSize: *value = p.l2CacheSize; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = p.maxThreadsPerMultiProcessor; break;
    case cudaDevAttrComputeCapabilityMajor: *value = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *value = p.minor; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = (int)p.sharedMemPerMultiprocessor; break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  const int n = device_count();
  if (n == 0) return fail(cudaErrorNoDevice);
  if (device < 0 || device >= n) return fail(cudaErrorInvalidDevice);
  T.device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
  if (device == nullptr) return fail(cudaErrorInvalidValue);
  if (device_count() == 0) return fail(cudaErrorNoDevice);
  *device = T.device;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return take_pending(); }

cudaError_t cudaDeviceReset(void) {
  T.pending = cudaSuccess;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *version) {
  if (version == nullptr) return fail(cudaErrorInvalidValue);
  *version = 13000;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *version) {
  if (version == nullptr) return fail(cudaErrorInvalidValue);
  *version = 13000;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
  if (free_bytes == nullptr || total_bytes == nullptr) return fail(cudaErrorInvalidValue);
  global_state &g = G();
  std::lock_guard<std::mutex> lock(g.mu);
  *total_bytes = memory_limit();
  *free_bytes = g.allocated < *total_bytes ? *total_bytes - g.allocated : 0;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = T.last_error;
  T.last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return T.last_error; }

const char *cudaGetErrorString(cudaError_t error) { return error_string(error); }

const char *cudaGetErrorName(cudaError_t error) { return error_name(error); }

cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
  if (stream == nullptr || flags > cudaStreamNonBlocking) return fail(cudaErrorInvalidValue);
  if (device_count() == 0) return fail(cudaErrorNoDevice);
  // A stream is only a handle here; a heap byte gives it a unique address ASan can track.
  char *handle = new (std::nothrow) char(0);
  if (handle == nullptr) return fail(cudaErrorMemoryAllocation);
  if (!register_handle(&global_state::streams, handle)) {
    delete handle;
    return fail(cudaErrorMemoryAllocation);
  }
  *stream = reinterpret_cast<cudaStream_t>(handle);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!unregister_handle(&global_state::streams, stream)) return fail(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<char *>(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!stream_ok(stream)) return fail(cudaErrorInvalidResourceHandle);
  return take_pending();
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  if (!stream_ok(stream)) return fail(cudaErrorInvalidResourceHandle);
  return take_pending();
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  if (!stream_ok(stream) || event_data(event) == nullptr) return fail(cudaErrorInvalidResourceHandle);
  return flags == 0 ? cudaSuccess : fail(cudaErrorInvalidValue);  // work is done by then: nothing to wait for
}

cudaError_t cudaMalloc(void **ptr, size_t bytes) {
  if (ptr == nullptr) return fail(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (device_count() == 0) return fail(cudaErrorNoDevice);
  if (bytes == 0) return cudaSuccess;
  global_state &g = G();
  std::lock_guard<std::mutex> lock(g.mu);
  const size_t limit = memory_limit();
  if (g.allocated > limit || bytes > limit - g.allocated) return fail(cudaErrorMemoryAllocation);
  void *p = nullptr;
  // The exact size: ASan sees an overrun of the buffer, not of a rounded-up block.
  if (posix_memalign(&p, 256, bytes) != 0 || p == nullptr) return fail(cudaErrorMemoryAllocation);
  try {
    g.allocations.emplace((uintptr_t)p, bytes);
  } catch (...) {
    free(p);
    return fail(cudaErrorMemoryAllocation);
  }
  g.allocated += bytes;
  memset(p, 0xff, bytes);
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void *ptr) {
  if (ptr == nullptr) return cudaSuccess;
  global_state &g = G();
  {
    std::lock_guard<std::mutex> lock(g.mu);
    auto it = g.allocations.find((uintptr_t)ptr);
    if (it == g.allocations.end()) return fail(cudaErrorInvalidValue);
    g.allocated -= it->second;
    g.allocations.erase(it);
  }
  free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void **ptr, size_t bytes) {
  if (ptr == nullptr) return fail(cudaErrorInvalidValue);
  *ptr = bytes == 0 ? nullptr : malloc(bytes);
  return bytes != 0 && *ptr == nullptr ? fail(cudaErrorMemoryAllocation) : cudaSuccess;
}

cudaError_t cudaFreeHost(void *ptr) {
  free(ptr);
  return cudaSuccess;
}

namespace {

cudaError_t copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  if (device_count() == 0) return fail(cudaErrorNoDevice);
  if (!stream_ok(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault) return fail(cudaErrorInvalidMemcpyDirection);
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return fail(cudaErrorInvalidValue);
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_dev && !device_range(dst, bytes)) || (src_dev && !device_range(src, bytes)))
    return fail(cudaErrorInvalidValue);
  memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t fill(void *ptr, int value, size_t bytes, cudaStream_t stream) {
  if (device_count() == 0) return fail(cudaErrorNoDevice);
  if (!stream_ok(stream)) return fail(cudaErrorInvalidResourceHandle);
  if (bytes == 0) return cudaSuccess;
  if (!device_range(ptr, bytes)) return fail(cudaErrorInvalidValue);
  memset(ptr, value, bytes);
  return cudaSuccess;
}

}  // namespace

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
  const cudaError_t e = take_pending();  // synchronous: reports a failed kernel first
  return e != cudaSuccess ? e : copy(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  return copy(dst, src, bytes, kind, stream);
}

cudaError_t cudaMemset(void *ptr, int value, size_t bytes) {
  const cudaError_t e = take_pending();
  return e != cudaSuccess ? e : fill(ptr, value, bytes, nullptr);
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream) {
  return fill(ptr, value, bytes, stream);
}

cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
  if (event == nullptr || flags > (cudaEventBlockingSync | cudaEventDisableTiming)) return fail(cudaErrorInvalidValue);
  if (device_count() == 0) return fail(cudaErrorNoDevice);
  CUevent_data *e = new (std::nothrow) CUevent_data();
  if (e == nullptr) return fail(cudaErrorMemoryAllocation);
  e->flags = flags;
  if (!register_handle(&global_state::events, e)) {
    delete e;
    return fail(cudaErrorMemoryAllocation);
  }
  *event = reinterpret_cast<cudaEvent_t>(e);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  CUevent_data *e = event_data(event);
  if (e == nullptr || !stream_ok(stream)) return fail(cudaErrorInvalidResourceHandle);
  e->recorded = true;
  e->when = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event_data(event) == nullptr) return fail(cudaErrorInvalidResourceHandle);
  return take_pending();
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (event_data(event) == nullptr) return fail(cudaErrorInvalidResourceHandle);
  return take_pending();
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr) return fail(cudaErrorInvalidValue);
  const CUevent_data *a = event_data(start), *b = event_data(end);
  if (a == nullptr || b == nullptr || !a->recorded || !b->recorded || ((a->flags | b->flags) & cudaEventDisableTiming))
    return fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(b->when - a->when).count();
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!unregister_handle(&global_state::events, event)) return fail(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<CUevent_data *>(event);
  return cudaSuccess;
}
