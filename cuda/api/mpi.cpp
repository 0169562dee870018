// mpi.cpp: the collectives of class shards across processes (MarginHead's `distributed: "mpi"`)
// through Open MPI, loaded at run time: libmpi.so.40 is opened on the first lsm_mpi_init, so
// that the library loads and works where MPI is not installed. Open MPI's handles
// (MPI_COMM_WORLD, MPI_DOUBLE, MPI_SUM, ...) are addresses of its global objects, reached by
// dlsym; no mpi.h is needed to build. Host memory only; every call is a collective that every
// rank must make in the same order. api/mpi.h's non-blocking calls serve api/nccl_init.cpp.
#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>

#include <string>
#include <vector>

#include "api/backend.h"
#include "api/mpi.h"

namespace {

using Handle = void *;
using InitThread = int (*)(int *, char ***, int, int *);
using Flag = int (*)(int *);
using CommInt = int (*)(Handle, int *);
using Allreduce = int (*)(const void *, void *, int, Handle, Handle, Handle);
using Allgatherv = int (*)(const void *, int, Handle, void *, const int *, const int *, Handle, Handle);
using ReduceScatter = int (*)(const void *, void *, const int *, Handle, Handle, Handle);
using Isend = int (*)(const void *, int, Handle, int, int, Handle, Handle *);
using Irecv = int (*)(void *, int, Handle, int, int, Handle, Handle *);
using Iallreduce = int (*)(const void *, void *, int, Handle, Handle, Handle, Handle *);
using Test = int (*)(Handle *, int *, void *);
using Wait = int (*)(Handle *, void *);
using Cancel = int (*)(Handle *);
using Abort = int (*)(Handle, int);
using Finalize = int (*)();

struct Mpi {
  void *lib = nullptr;
  InitThread init_thread = nullptr;
  Flag initialized = nullptr, finalized = nullptr;
  CommInt rank = nullptr, size = nullptr;
  Allreduce allreduce = nullptr;
  Allgatherv allgatherv = nullptr;
  ReduceScatter reduce_scatter = nullptr;
  Isend isend = nullptr;
  Irecv irecv = nullptr;
  Iallreduce iallreduce = nullptr;
  Test test = nullptr;
  Wait wait = nullptr;
  Cancel cancel = nullptr;
  Abort abort_job = nullptr;
  Finalize finalize = nullptr;
  Handle world = nullptr, type_double = nullptr, type_byte = nullptr, type_int = nullptr, op_sum = nullptr, op_max = nullptr;
  bool ready = false;
  int32_t my_rank = 0, world_size = 1;
} mpi;

const char *kInstall =
    "distributed: \"mpi\" needs Open MPI's libmpi.so.40 (Debian/Ubuntu: apt-get install openmpi-bin "
    "libopenmpi-dev) and the program started by mpirun";

int32_t fail(const std::string &message) { return lsm_fail(nullptr, LSM_ERR_UNAVAILABLE, message); }

template <typename F>
bool find(F *out, const char *name) {
  *out = reinterpret_cast<F>(dlsym(mpi.lib, name));
  return *out != nullptr;
}

int32_t load() {
  if (mpi.lib != nullptr) return LSM_OK;
  // RTLD_GLOBAL: Open MPI's own plug-ins resolve their symbols against libmpi. LSOFTMAX_MPI_LIB
  // names another file (a test of the missing library, or an Open MPI elsewhere).
  const char *name = getenv("LSOFTMAX_MPI_LIB");
  void *lib = dlopen(name != nullptr && *name != 0 ? name : "libmpi.so.40", RTLD_NOW | RTLD_GLOBAL);
  if (lib == nullptr) {
    const char *why = dlerror();
    return fail(std::string(kInstall) + ": " + (why != nullptr ? why : "dlopen failed"));
  }
  mpi.lib = lib;
  const bool ok = find(&mpi.init_thread, "MPI_Init_thread") && find(&mpi.initialized, "MPI_Initialized") &&
                  find(&mpi.finalized, "MPI_Finalized") && find(&mpi.rank, "MPI_Comm_rank") &&
                  find(&mpi.size, "MPI_Comm_size") && find(&mpi.allreduce, "MPI_Allreduce") &&
                  find(&mpi.allgatherv, "MPI_Allgatherv") && find(&mpi.reduce_scatter, "MPI_Reduce_scatter") &&
                  find(&mpi.isend, "MPI_Isend") && find(&mpi.irecv, "MPI_Irecv") &&
                  find(&mpi.iallreduce, "MPI_Iallreduce") && find(&mpi.test, "MPI_Test") &&
                  find(&mpi.wait, "MPI_Wait") && find(&mpi.cancel, "MPI_Cancel") &&
                  find(&mpi.abort_job, "MPI_Abort") && find(&mpi.finalize, "MPI_Finalize") &&
                  (mpi.world = dlsym(lib, "ompi_mpi_comm_world")) != nullptr &&
                  (mpi.type_double = dlsym(lib, "ompi_mpi_double")) != nullptr &&
                  (mpi.type_byte = dlsym(lib, "ompi_mpi_byte")) != nullptr &&
                  (mpi.type_int = dlsym(lib, "ompi_mpi_int")) != nullptr &&
                  (mpi.op_sum = dlsym(lib, "ompi_mpi_op_sum")) != nullptr &&
                  (mpi.op_max = dlsym(lib, "ompi_mpi_op_max")) != nullptr;
  if (!ok) {
    dlclose(lib);
    mpi = Mpi();
    return fail(std::string(kInstall) + ": libmpi.so.40 is not Open MPI's (a symbol is missing)");
  }
  return LSM_OK;
}

int32_t check(int code, const char *what) {
  if (code == 0) return LSM_OK;
  return lsm_fail(nullptr, LSM_ERR_INTERNAL, std::string(what) + " failed with MPI error " + std::to_string(code));
}

int32_t ready() {
  if (mpi.ready) return LSM_OK;
  return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "MPI: lsm_mpi_init first");
}

// Per-rank counts and their displacements as MPI's ints, each at most INT_MAX.
int32_t counts_of(const int64_t *counts, std::vector<int> *c, std::vector<int> *at) {
  c->resize((size_t)mpi.world_size);
  at->resize((size_t)mpi.world_size);
  int64_t total = 0;
  for (int32_t r = 0; r < mpi.world_size; ++r) {
    if (counts[r] < 0 || counts[r] > INT_MAX || total > INT_MAX)
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      "counts[" + std::to_string(r) + "]: expected at most " + std::to_string(INT_MAX) +
                          " in all, got " + std::to_string(counts[r]));
    (*c)[(size_t)r] = (int)counts[r];
    (*at)[(size_t)r] = (int)total;
    total += counts[r];
  }
  return LSM_OK;
}

}  // namespace

// Open MPI's MPI_STATUS_IGNORE is a null pointer and MPI_IN_PLACE is (void *)1.
namespace lsm_mpi {

int32_t isend(const int32_t *values, int count, int to, int tag, Request *request) {
  int32_t s = ready();
  if (s != LSM_OK) return s;
  return check(mpi.isend(values, count, mpi.type_int, to, tag, mpi.world, request), "MPI_Isend");
}

int32_t irecv(int32_t *values, int count, int from, int tag, Request *request) {
  int32_t s = ready();
  if (s != LSM_OK) return s;
  return check(mpi.irecv(values, count, mpi.type_int, from, tag, mpi.world, request), "MPI_Irecv");
}

int32_t iallreduce_max(int32_t *values, int count, Request *request) {
  int32_t s = ready();
  if (s != LSM_OK) return s;
  return check(mpi.iallreduce(reinterpret_cast<void *>(1), values, count, mpi.type_int, mpi.op_max, mpi.world, request),
               "MPI_Iallreduce");
}

int32_t test(Request *request, bool *done) {
  int flag = 0;
  const int32_t s = check(mpi.test(request, &flag, nullptr), "MPI_Test");
  *done = s == LSM_OK && flag != 0;
  return s;
}

int32_t wait(Request *request) { return check(mpi.wait(request, nullptr), "MPI_Wait"); }

int32_t cancel(Request *request) {
  const int32_t s = check(mpi.cancel(request), "MPI_Cancel");
  return s != LSM_OK ? s : wait(request);
}

}  // namespace lsm_mpi

extern "C" {

int32_t lsm_mpi_init(int32_t *rank, int32_t *size) {
  if (rank == nullptr || size == nullptr)
    return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "rank, size: expected pointers, got NULL");
  int32_t s = load();
  if (s != LSM_OK) return s;
  if (!mpi.ready) {
    int done = 0, over = 0;
    if ((s = check(mpi.initialized(&done), "MPI_Initialized")) || (s = check(mpi.finalized(&over), "MPI_Finalized")))
      return s;
    if (over) return lsm_fail(nullptr, LSM_ERR_UNAVAILABLE, "MPI: already finalized in this process");
    if (!done) {
      int provided = 0;
      // MPI_THREAD_SERIALIZED (2): collectives may come from Deno's pool threads, one at a time.
      if ((s = check(mpi.init_thread(nullptr, nullptr, 2, &provided), "MPI_Init_thread"))) return s;
    }
    int r = 0, k = 1;
    if ((s = check(mpi.rank(mpi.world, &r), "MPI_Comm_rank")) || (s = check(mpi.size(mpi.world, &k), "MPI_Comm_size")))
      return s;
    mpi.my_rank = r, mpi.world_size = k, mpi.ready = true;
  }
  *rank = mpi.my_rank;
  *size = mpi.world_size;
  return LSM_OK;
}

int32_t lsm_mpi_allreduce(double *values, int64_t count, int32_t max) {
  int32_t s = ready();
  if (s != LSM_OK) return s;
  if (values == nullptr || count < 0 || count > INT_MAX)
    return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "values: expected [count] doubles, count in [0, INT_MAX]");
  // MPI_IN_PLACE is (void *)1 in Open MPI.
  return check(mpi.allreduce(reinterpret_cast<void *>(1), values, (int)count, mpi.type_double,
                             max ? mpi.op_max : mpi.op_sum, mpi.world),
               "MPI_Allreduce");
}

int32_t lsm_mpi_allgatherv(const void *send, int64_t bytes, void *recv, const int64_t *counts) {
  int32_t s = ready();
  if (s != LSM_OK) return s;
  std::vector<int> c, at;
  if (counts == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "counts: expected [size], got NULL");
  if ((s = counts_of(counts, &c, &at))) return s;
  if (bytes != counts[mpi.my_rank])
    return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                    "bytes: expected counts[rank] = " + std::to_string(counts[mpi.my_rank]) + ", got " +
                        std::to_string(bytes));
  return check(mpi.allgatherv(send, (int)bytes, mpi.type_byte, recv, c.data(), at.data(), mpi.type_byte, mpi.world),
               "MPI_Allgatherv");
}

int32_t lsm_mpi_reduce_scatter(const double *send, double *recv, const int64_t *counts) {
  int32_t s = ready();
  if (s != LSM_OK) return s;
  std::vector<int> c, at;
  if (counts == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "counts: expected [size], got NULL");
  if ((s = counts_of(counts, &c, &at))) return s;
  return check(mpi.reduce_scatter(send, recv, c.data(), mpi.type_double, mpi.op_sum, mpi.world),
               "MPI_Reduce_scatter");
}

int32_t lsm_mpi_abort(int32_t code) {
  int32_t s = ready();
  if (s != LSM_OK) return s;
  return check(mpi.abort_job(mpi.world, code), "MPI_Abort");
}

int32_t lsm_mpi_finalize(void) {
  if (!mpi.ready) return LSM_OK;
  mpi.ready = false;
  int over = 0;
  int32_t s = check(mpi.finalized(&over), "MPI_Finalized");
  if (s != LSM_OK || over) return s;
  return check(mpi.finalize(), "MPI_Finalize");
}

}  // extern "C"
