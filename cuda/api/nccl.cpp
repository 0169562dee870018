// nccl.cpp: MarginHead's distributed: "nccl", the collectives of class shards across the ranks of
// an MPI job through NCCL on device buffers. libnccl.so.2 is opened at run time (LSOFTMAX_NCCL
// names another file), so the library loads and works without it. The rendezvous goes through
// MPI (api/mpi.cpp): rank 0's ncclGetUniqueId is given to every rank, then ncclCommInitRank on the
// rank's device, non-blocking where NCCL allows it (api/nccl_init.cpp). The communicator owns a
// CUDA context of that device; each collective copies its host input into that context's memory,
// runs on its stream, and copies the result back. NCCL's all-gather and reduce-scatter take one
// count for every rank, so ranks' parts are padded to the largest. Every call is a collective
// that every rank makes in the same order.
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <string>
#include <vector>

#include "api/nccl.h"

// The CUDA backend's (gpu/nccl.cu); absent where the library has no CUDA backend.
extern void *lsm_cuda_stream_of(lsm_context *ctx) __attribute__((weak));

namespace lsm_nccl {

Nccl nccl;

void pause_1ms() {
  const timespec t = {0, 1000000};
  nanosleep(&t, nullptr);
}

}  // namespace lsm_nccl

using namespace lsm_nccl;

namespace {

const char *kInstall =
    "distributed: \"nccl\" needs NCCL's libnccl.so.2 (the CUDA redistributable libnccl2, or pip install "
    "nvidia-nccl-cu12; set LSOFTMAX_NCCL to its path) and the program started by mpirun";

template <typename F>
bool find(F *out, const char *name) {
  *out = reinterpret_cast<F>(dlsym(nccl.lib, name));
  return *out != nullptr;
}

int32_t load() {
  if (nccl.lib != nullptr) return LSM_OK;
  const char *named = getenv("LSOFTMAX_NCCL");
  const std::string name = named != nullptr && *named != 0 ? named : "libnccl.so.2";
  void *lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char *why = dlerror();
    return lsm_fail(nullptr, LSM_ERR_UNAVAILABLE, std::string(kInstall) + ": " + (why != nullptr ? why : name));
  }
  nccl.lib = lib;
  const bool ok = find(&nccl.version, "ncclGetVersion") && find(&nccl.unique_id, "ncclGetUniqueId") &&
                  find(&nccl.init_rank, "ncclCommInitRank") && find(&nccl.destroy, "ncclCommDestroy") &&
                  find(&nccl.error_string, "ncclGetErrorString") && find(&nccl.all_gather, "ncclAllGather") &&
                  find(&nccl.all_reduce, "ncclAllReduce") && find(&nccl.reduce_scatter, "ncclReduceScatter");
  if (!ok) {
    dlclose(lib);
    nccl = Nccl();
    return lsm_fail(nullptr, LSM_ERR_UNAVAILABLE, std::string(kInstall) + ": " + name + " is not NCCL (a symbol is missing)");
  }
  if (!(find(&nccl.init_config, "ncclCommInitRankConfig") && find(&nccl.async_error, "ncclCommGetAsyncError") &&
        find(&nccl.abort_comm, "ncclCommAbort")))
    nccl.init_config = nullptr;
  return LSM_OK;
}

int32_t check(int code, const char *what) {
  if (code == 0) return LSM_OK;
  return lsm_fail(nullptr, LSM_ERR_INTERNAL, std::string(what) + " failed: " + nccl.error_string(code));
}

// The context's failure as this thread's (the ABI's messages are read from lsm_last_error).
int32_t on_ctx(int32_t status) {
  if (status == LSM_OK) return LSM_OK;
  return lsm_fail(nullptr, status, std::string("NCCL's context: ") + lsm_context_last_error(nccl.ctx));
}

int32_t ready() {
  if (nccl.comm != nullptr) return LSM_OK;
  return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "NCCL: lsm_nccl_init first");
}

// Device scratch of the communicator's context, freed when it goes out of scope.
struct Scratch {
  void *p = nullptr;
  ~Scratch() {
    if (p != nullptr) lsm_free(nccl.ctx, p);
  }
  int32_t get(size_t bytes) { return on_ctx(lsm_malloc(nccl.ctx, bytes == 0 ? 1 : bytes, &p)); }
};

// A call's result on a non-blocking communicator: ncclInProgress until it has been enqueued.
int settle(Comm comm, int code) {
  while (code == kInProgress && nccl.async_error != nullptr) {
    int state = 0;
    const int got = nccl.async_error(comm, &state);
    code = got != 0 ? got : state;
    if (code == kInProgress) pause_1ms();
  }
  return code;
}

// The collective `run` after its inputs' copies and before the results' (the stream's order).
template <typename F>
int32_t collective(F run, const char *what) {
  int32_t s = on_ctx(lsm_synchronize(nccl.ctx));  // also makes the context's device current
  if (s != LSM_OK || (s = check(settle(nccl.comm, run()), what)) != LSM_OK) return s;
  return on_ctx(lsm_synchronize(nccl.ctx));
}

int64_t largest(const int64_t *counts) {
  int64_t m = 0;
  for (int32_t r = 0; r < nccl.size; ++r) m = counts[r] > m ? counts[r] : m;
  return m;
}

int32_t check_counts(const int64_t *counts) {
  if (counts == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "counts: expected [size], got NULL");
  for (int32_t r = 0; r < nccl.size; ++r)
    if (counts[r] < 0 || counts[r] > LSM_MAX_ELEMENTS * 8)
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      "counts[" + std::to_string(r) + "]: expected in [0, " + std::to_string(LSM_MAX_ELEMENTS * 8) +
                          "], got " + std::to_string(counts[r]));
  return LSM_OK;
}

}  // namespace

extern "C" {

int32_t lsm_nccl_init(int32_t device, int32_t *rank, int32_t *size) {
  if (rank == nullptr || size == nullptr)
    return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "rank, size: expected pointers, got NULL");
  if (nccl.comm != nullptr) {
    if (device != nccl.device)
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      "device: expected this process's NCCL device " + std::to_string(nccl.device) + ", got " +
                          std::to_string(device));
    *rank = nccl.rank, *size = nccl.size;
    return LSM_OK;
  }
  if (lsm_cuda_stream_of == nullptr)
    return lsm_fail(nullptr, LSM_ERR_UNAVAILABLE, "distributed: \"nccl\": this library was built without CUDA");
  int32_t r = 0, k = 1;
  int32_t s = lsm_mpi_init(&r, &k);
  if (s != LSM_OK) return s;
  // This rank's NCCL and device, then (rank 0) the unique id; every rank's status and rank 0's id
  // to every rank, so that a failure anywhere fails every rank instead of leaving the others in
  // ncclCommInitRank.
  lsm_context *ctx = nullptr;
  int32_t deadline_s = 0;
  int32_t local = init_deadline(&deadline_s);
  if (local == LSM_OK) local = load();
  if (local == LSM_OK) local = lsm_context_create(LSM_BACKEND_CUDA, device, &ctx);
  if (local == LSM_OK && (local = lsm_synchronize(ctx)) != LSM_OK)  // the device current on this thread
    lsm_fail(nullptr, local, lsm_context_last_error(ctx));
  std::string mine_error = local == LSM_OK ? std::string() : std::string(lsm_last_error());
  struct Part {
    int32_t status, code;
    UniqueId id;
  };
  Part mine;
  memset(&mine, 0, sizeof mine);
  mine.status = local;
  if (r == 0 && local == LSM_OK) mine.code = nccl.unique_id(&mine.id);
  std::vector<Part> all((size_t)k);
  std::vector<int64_t> counts((size_t)k, (int64_t)sizeof(Part));
  s = lsm_mpi_allgatherv(&mine, (int64_t)sizeof mine, all.data(), counts.data());
  if (s == LSM_OK && local != LSM_OK) s = lsm_fail(nullptr, local, mine_error);
  for (int32_t q = 0; s == LSM_OK && q < k; ++q)
    if (all[(size_t)q].status != LSM_OK)
      s = lsm_fail(nullptr, LSM_ERR_UNAVAILABLE,
                   "distributed: \"nccl\": rank " + std::to_string(q) + " of " + std::to_string(k) +
                       " could not open NCCL or its CUDA device, or refused LSOFTMAX_NCCL_INIT_TIMEOUT (its own "
                       "Error says which)");
  if (s == LSM_OK) s = check(all[0].code, "ncclGetUniqueId on rank 0");
  Comm comm = nullptr;
  // Without ncclCommInitRankConfig (NCCL before 2.14) the init blocks: a rank whose init fails
  // there leaves the others in ncclCommInitRank until NCCL's bootstrap gives up.
  if (s == LSM_OK)
    s = nccl.init_config != nullptr ? init_nonblocking(&comm, k, all[0].id, r, deadline_s)
                                    : check(nccl.init_rank(&comm, k, all[0].id, r), "ncclCommInitRank");
  if (s != LSM_OK) {
    if (ctx != nullptr) lsm_context_destroy(ctx);
    return s;
  }
  nccl.comm = comm, nccl.ctx = ctx, nccl.stream = lsm_cuda_stream_of(ctx);
  nccl.rank = r, nccl.size = k, nccl.device = device;
  *rank = r, *size = k;
  return LSM_OK;
}

int32_t lsm_nccl_allreduce(double *values, int64_t count, int32_t max) {
  int32_t s = ready();
  if (s != LSM_OK) return s;
  if (values == nullptr || count < 0 || count > LSM_MAX_ELEMENTS)
    return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "values: expected [count] doubles, count in [0, 2^31)");
  const size_t bytes = (size_t)count * sizeof(double);
  Scratch d;
  if ((s = d.get(bytes)) || (s = on_ctx(lsm_memcpy_to_context(nccl.ctx, d.p, values, bytes)))) return s;
  s = collective([&] { return nccl.all_reduce(d.p, d.p, (size_t)count, kFloat64, max ? kMax : kSum, nccl.comm, nccl.stream); },
                 "ncclAllReduce");
  if (s != LSM_OK) return s;
  return on_ctx(lsm_memcpy_from_context(nccl.ctx, values, d.p, bytes));
}

int32_t lsm_nccl_allgatherv(const void *send, int64_t bytes, void *recv, const int64_t *counts) {
  int32_t s = ready();
  if (s != LSM_OK || (s = check_counts(counts)) != LSM_OK) return s;
  if (bytes != counts[nccl.rank])
    return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                    "bytes: expected counts[rank] = " + std::to_string(counts[nccl.rank]) + ", got " +
                        std::to_string(bytes));
  const size_t most = (size_t)largest(counts);
  Scratch d;
  if ((s = d.get(most * (size_t)(nccl.size + 1)))) return s;
  char *own = static_cast<char *>(d.p) + most * (size_t)nccl.size;
  if (bytes > 0 && (s = on_ctx(lsm_memcpy_to_context(nccl.ctx, own, send, (size_t)bytes)))) return s;
  s = collective([&] { return nccl.all_gather(own, d.p, most, kUint8, nccl.comm, nccl.stream); }, "ncclAllGather");
  size_t at = 0;
  for (int32_t r = 0; s == LSM_OK && r < nccl.size; at += (size_t)counts[r], ++r)
    if (counts[r] > 0)
      s = on_ctx(lsm_memcpy_from_context(nccl.ctx, static_cast<char *>(recv) + at,
                                         static_cast<char *>(d.p) + most * (size_t)r, (size_t)counts[r]));
  return s;
}

int32_t lsm_nccl_reduce_scatter(const double *send, double *recv, const int64_t *counts) {
  int32_t s = ready();
  if (s != LSM_OK || (s = check_counts(counts)) != LSM_OK) return s;
  const size_t most = (size_t)largest(counts);
  std::vector<double> padded(most * (size_t)nccl.size, 0.0);
  size_t at = 0;
  for (int32_t r = 0; r < nccl.size; at += (size_t)counts[r], ++r)
    if (counts[r] > 0) memcpy(padded.data() + most * (size_t)r, send + at, (size_t)counts[r] * sizeof(double));
  Scratch d;
  const size_t bytes = padded.size() * sizeof(double);
  if ((s = d.get(bytes + most * sizeof(double))) || (s = on_ctx(lsm_memcpy_to_context(nccl.ctx, d.p, padded.data(), bytes))))
    return s;
  double *mine = static_cast<double *>(d.p) + padded.size();
  s = collective([&] { return nccl.reduce_scatter(d.p, mine, most, kFloat64, kSum, nccl.comm, nccl.stream); },
                 "ncclReduceScatter");
  if (s != LSM_OK || counts[nccl.rank] == 0) return s;
  return on_ctx(lsm_memcpy_from_context(nccl.ctx, recv, mine, (size_t)counts[nccl.rank] * sizeof(double)));
}

int32_t lsm_nccl_version(int32_t *version) {
  int32_t s = ready();
  if (s != LSM_OK) return s;
  int v = 0;
  if ((s = check(nccl.version(&v), "ncclGetVersion"))) return s;
  *version = v;
  return LSM_OK;
}

int32_t lsm_nccl_finalize(void) {
  if (nccl.comm == nullptr) return LSM_OK;
  int code = nccl.destroy(nccl.comm);
  if (code == kInProgress) code = 0;  // a non-blocking communicator's: freed in the background
  nccl.comm = nullptr;
  lsm_context_destroy(nccl.ctx);
  nccl.ctx = nullptr;
  return check(code, "ncclCommDestroy");
}

}  // extern "C"
