// nccl_stand_in.cpp: the few NCCL entry points the library calls (api/nccl.cpp), for the emulated
// CUDA backend, where "device" memory is host memory. Built as build/emu/libnccl_stand_in.so and
// loaded by the library as NCCL itself is (LSOFTMAX_NCCL=its path), so that distributed: "nccl"
// runs under mpirun without a GPU: the loading, the rendezvous (the unique id from rank 0), the
// padding of the ranks' parts, each collective's counts and types. The collectives are Open MPI's
// on the same buffers (libmpi.so.40, which the library has opened already). Stricter than NCCL
// where that catches a mistake of ours: a communicator whose rank or size is not MPI's, an id
// not made by ncclGetUniqueId, a type or an operation the library does not use, a collective on
// a communicator whose init is not complete.
//
// The init waits for every rank as NCCL's does: each rank sends rank 0 the id it was given, and
// rank 0 answers every rank once all have (MPI point-to-point on tags of their own, beside the
// library's collectives); so a rank whose peer never joins stays in ncclCommInitRank, or, made
// non-blocking (ncclCommInitRankConfig with blocking = 0), in ncclInProgress until ncclCommAbort.
// LSM_NCCL_STAND_IN_FAIL_INIT_RANK=R makes rank R's init fail without joining (the others' init
// then never completes), LSM_NCCL_STAND_IN_HANG_INIT_RANK=R rank R's never complete nor fail
// (nor anyone's, then), for the tests of the library's handling of them.
#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <vector>

namespace {

enum {
  kSuccess = 0,
  kUnhandledCudaError = 1,
  kSystemError = 2,
  kInternalError = 3,
  kInvalidArgument = 4,
  kInvalidUsage = 5,
  kInProgress = 7
};
enum { kUint8 = 1, kFloat64 = 8, kSum = 0, kMax = 2 };
const uint32_t kMagic = 0x6e63636c;

struct UniqueId {
  char internal[128];
};

// NCCL's ncclConfig_t, the fields up to `blocking` (those of 2.14; NCCL reads `size` bytes).
struct Config {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
};

using Handle = void *;

// The rendezvous' message: the id's first bytes (the magic, rank 0's pid, the id's number).
const int kKey = 12, kJoinTag = 0x4e43, kGoTag = 0x4e44;
struct Key {
  char bytes[kKey];
};

struct comm {
  uint32_t magic = kMagic;
  int rank = 0, size = 1;
  int state = kInProgress;  // kSuccess once every rank has joined, or the error of this rank's init
  Key key;
  std::vector<Key> got;       // rank 0: each rank's join; other ranks: [0], rank 0's answer
  std::vector<bool> joined;   // rank 0: whose join has come
  std::vector<Handle> recvs;  // pending receives (null: none)
  std::vector<Handle> sends;  // pending sends
  bool answered = false;      // rank 0: the answers are sent
  timespec fail_at = {0, 0};  // LSM_NCCL_STAND_IN_FAIL_INIT_RANK: when its init reports failure
  bool failing = false;
  bool hanging = false;  // LSM_NCCL_STAND_IN_HANG_INIT_RANK: in progress until ncclCommAbort
};

struct Mpi {
  bool ready = false;
  int (*rank)(Handle, int *) = nullptr;
  int (*size)(Handle, int *) = nullptr;
  int (*isend)(const void *, int, Handle, int, int, Handle, Handle *) = nullptr;
  int (*irecv)(void *, int, Handle, int, int, Handle, Handle *) = nullptr;
  int (*test)(Handle *, int *, void *) = nullptr;
  int (*wait)(Handle *, void *) = nullptr;
  int (*cancel)(Handle *) = nullptr;
  int (*allgather)(const void *, int, Handle, void *, int, Handle, Handle) = nullptr;
  int (*allreduce)(const void *, void *, int, Handle, Handle, Handle) = nullptr;
  int (*reduce_scatter_block)(const void *, void *, int, Handle, Handle, Handle) = nullptr;
  Handle world = nullptr, type_byte = nullptr, type_double = nullptr, op_sum = nullptr, op_max = nullptr;
} mpi;

template <typename F>
bool find(void *lib, F *out, const char *name) {
  *out = reinterpret_cast<F>(dlsym(lib, name));
  return *out != nullptr;
}

bool load() {
  if (mpi.ready) return true;
  void *lib = dlopen("libmpi.so.40", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
  if (lib == nullptr) return false;
  mpi.ready = find(lib, &mpi.rank, "MPI_Comm_rank") && find(lib, &mpi.size, "MPI_Comm_size") &&
              find(lib, &mpi.allgather, "MPI_Allgather") && find(lib, &mpi.allreduce, "MPI_Allreduce") &&
              find(lib, &mpi.reduce_scatter_block, "MPI_Reduce_scatter_block") &&
              find(lib, &mpi.isend, "MPI_Isend") && find(lib, &mpi.irecv, "MPI_Irecv") &&
              find(lib, &mpi.test, "MPI_Test") && find(lib, &mpi.wait, "MPI_Wait") &&
              find(lib, &mpi.cancel, "MPI_Cancel") &&
              (mpi.world = dlsym(lib, "ompi_mpi_comm_world")) != nullptr &&
              (mpi.type_byte = dlsym(lib, "ompi_mpi_byte")) != nullptr &&
              (mpi.type_double = dlsym(lib, "ompi_mpi_double")) != nullptr &&
              (mpi.op_sum = dlsym(lib, "ompi_mpi_op_sum")) != nullptr &&
              (mpi.op_max = dlsym(lib, "ompi_mpi_op_max")) != nullptr;
  return mpi.ready;
}

bool valid(const comm *c) { return c != nullptr && c->magic == kMagic; }
bool ready(const comm *c) { return valid(c) && c->state == kSuccess; }

uint32_t ids_made = 0;

timespec now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t;
}

bool later(const timespec &a, const timespec &b) {
  return a.tv_sec > b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec >= b.tv_nsec);
}

// MPI_STATUS_IGNORE is a null pointer in Open MPI.
int post_recv(comm *c, int slot, int from, int tag) {
  return mpi.irecv(c->got[(size_t)slot].bytes, kKey, mpi.type_byte, from, tag, mpi.world, &c->recvs[(size_t)slot]) == 0
             ? kSuccess
             : kInternalError;
}

// The receive of `slot`, if it has come: true once it holds this communicator's key (a message
// of an earlier, aborted init is dropped and the receive posted again).
bool received(comm *c, int slot, int from, int tag, int *error) {
  Handle &h = c->recvs[(size_t)slot];
  if (h == nullptr) return false;
  int flag = 0;
  if (mpi.test(&h, &flag, nullptr) != 0) return *error = kInternalError, false;
  if (!flag) return false;
  h = nullptr;
  if (memcmp(c->got[(size_t)slot].bytes, c->key.bytes, kKey) == 0) return true;
  *error = post_recv(c, slot, from, tag);
  return false;
}

bool sends_done(comm *c, int *error) {
  for (Handle &h : c->sends) {
    if (h == nullptr) continue;
    int flag = 0;
    if (mpi.test(&h, &flag, nullptr) != 0) return *error = kInternalError, false;
    if (!flag) return false;
    h = nullptr;
  }
  return true;
}

int post_send(comm *c, int to, int tag) {
  c->sends.push_back(nullptr);
  return mpi.isend(c->key.bytes, kKey, mpi.type_byte, to, tag, mpi.world, &c->sends.back()) == 0 ? kSuccess
                                                                                                  : kInternalError;
}

// One step of the init's rendezvous; c->state stays kInProgress until it is over.
void progress(comm *c) {
  if (c->state != kInProgress || c->hanging) return;
  if (c->failing) {
    if (later(now(), c->fail_at)) c->state = kUnhandledCudaError;
    return;
  }
  int error = kSuccess;
  if (c->rank == 0) {
    bool all = true;
    for (int q = 1; q < c->size; ++q) {
      if (!c->joined[(size_t)q]) c->joined[(size_t)q] = received(c, q, q, kJoinTag, &error);
      all = all && c->joined[(size_t)q];
    }
    if (all && !c->answered) {
      for (int q = 1; q < c->size && error == kSuccess; ++q) error = post_send(c, q, kGoTag);
      c->answered = true;
    }
    if (error == kSuccess && c->answered && sends_done(c, &error)) c->state = kSuccess;
  } else {
    if (!c->joined[0]) c->joined[0] = received(c, 0, 0, kGoTag, &error);
    if (error == kSuccess && c->joined[0] && sends_done(c, &error)) c->state = kSuccess;
  }
  if (error != kSuccess) c->state = error;
}

// Pending receives cancelled, pending sends completed (a key is small: sent eagerly by MPI).
void settle(comm *c) {
  for (Handle &h : c->recvs)
    if (h != nullptr) mpi.cancel(&h), mpi.wait(&h, nullptr), h = nullptr;
  for (Handle &h : c->sends)
    if (h != nullptr) mpi.wait(&h, nullptr), h = nullptr;
}

int named_rank(const char *variable) {
  const char *named = getenv(variable);
  if (named == nullptr || *named == 0) return -1;
  char *end = nullptr;
  const long r = strtol(named, &end, 10);
  return *end == 0 && r >= 0 && r < INT_MAX ? (int)r : -1;
}

int init(comm **out, int size, const UniqueId &id, int rank, bool blocking) {
  uint32_t magic = 0;
  memcpy(&magic, id.internal, 4);
  if (out == nullptr || magic != kMagic || size < 1 || rank < 0 || rank >= size) return kInvalidArgument;
  if (!load()) return kSystemError;
  int r = -1, k = -1;
  if (mpi.rank(mpi.world, &r) != 0 || mpi.size(mpi.world, &k) != 0) return kInternalError;
  if (r != rank || k != size) return kInvalidUsage;
  comm *c = new comm();
  c->rank = rank, c->size = size;
  memcpy(c->key.bytes, id.internal, kKey);
  const int slots = rank == 0 ? size : 1;
  c->got.resize((size_t)slots), c->recvs.assign((size_t)slots, nullptr), c->joined.assign((size_t)slots, false);
  if (named_rank("LSM_NCCL_STAND_IN_HANG_INIT_RANK") == rank) {
    c->hanging = true;  // never joins, as a rank stuck in NCCL's bootstrap
  } else if (named_rank("LSM_NCCL_STAND_IN_FAIL_INIT_RANK") == rank) {
    // Fails a little later, as NCCL's bootstrap would, while the other ranks wait for it.
    c->failing = true;
    c->fail_at = now();
    c->fail_at.tv_nsec += 50000000;
    if (c->fail_at.tv_nsec >= 1000000000) c->fail_at.tv_sec += 1, c->fail_at.tv_nsec -= 1000000000;
  } else if (size == 1) {
    c->state = kSuccess;
  } else {
    int error = kSuccess;
    if (rank == 0)
      for (int q = 1; q < size && error == kSuccess; ++q) error = post_recv(c, q, q, kJoinTag);
    else if ((error = post_send(c, 0, kJoinTag)) == kSuccess)
      error = post_recv(c, 0, 0, kGoTag);
    if (error != kSuccess) c->state = error;
  }
  *out = c;
  if (!blocking) return c->failing || c->hanging || c->state != kSuccess ? kInProgress : kSuccess;
  const timespec pause = {0, 1000000};
  for (progress(c); c->state == kInProgress; progress(c)) nanosleep(&pause, nullptr);
  if (c->state == kSuccess) return kSuccess;
  const int error = c->state;
  settle(c);
  delete c;
  *out = nullptr;
  return error;
}

bool fits(size_t count) { return count <= 0x7fffffff; }

}  // namespace

#define STAND_IN extern "C" __attribute__((visibility("default")))

STAND_IN int ncclGetVersion(int *version) {
  if (version == nullptr) return kInvalidArgument;
  *version = 22304;
  return kSuccess;
}

STAND_IN const char *ncclGetErrorString(int code) {
  switch (code) {
    case kSuccess: return "no error";
    case kUnhandledCudaError:
      return "unhandled cuda error (the stand-in: LSM_NCCL_STAND_IN_FAIL_INIT_RANK named this rank)";
    case kSystemError: return "unhandled system error (the stand-in: Open MPI is not loaded)";
    case kInternalError: return "internal error (the stand-in: an MPI call failed)";
    case kInvalidArgument: return "invalid argument";
    case kInvalidUsage: return "invalid usage";
    case kInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

STAND_IN int ncclGetUniqueId(UniqueId *id) {
  if (id == nullptr) return kInvalidArgument;
  memset(id, 0, sizeof *id);
  const uint32_t magic = kMagic;
  const int32_t pid = (int32_t)getpid();
  memcpy(id->internal, &magic, 4);
  memcpy(id->internal + 4, &pid, 4);
  const uint32_t made = ++ids_made;  // so that an earlier init's messages are told apart
  memcpy(id->internal + 8, &made, 4);
  return kSuccess;
}

STAND_IN int ncclCommInitRank(comm **out, int size, UniqueId id, int rank) {
  return init(out, size, id, rank, true);
}

STAND_IN int ncclCommInitRankConfig(comm **out, int size, UniqueId id, int rank, Config *config) {
  if (config == nullptr) return init(out, size, id, rank, true);
  // Stricter than NCCL: the library's config is NCCL_CONFIG_INITIALIZER's of 2.14 or later.
  if (config->size < sizeof(Config) || config->magic != 0xcafebeef || config->version < 21400 ||
      (config->blocking != 0 && config->blocking != 1 && config->blocking != INT_MIN))
    return kInvalidArgument;
  return init(out, size, id, rank, config->blocking != 0);
}

STAND_IN int ncclCommGetAsyncError(comm *c, int *state) {
  if (!valid(c) || state == nullptr) return kInvalidArgument;
  progress(c);
  *state = c->state;
  return kSuccess;
}

STAND_IN int ncclCommAbort(comm *c) {
  if (!valid(c)) return kInvalidArgument;
  settle(c);
  c->magic = 0;
  delete c;
  return kSuccess;
}

STAND_IN int ncclCommDestroy(comm *c) {
  if (!valid(c)) return kInvalidArgument;
  if (c->state == kInProgress) return kInvalidUsage;  // NCCL: ncclCommAbort, not Destroy, mid-init
  settle(c);
  c->magic = 0;
  delete c;
  return kSuccess;
}

STAND_IN int ncclAllGather(const void *send, void *recv, size_t count, int type, comm *c, void *stream) {
  if (!ready(c) || stream == nullptr || type != kUint8 || !fits(count) || send == nullptr || recv == nullptr)
    return kInvalidArgument;
  return mpi.allgather(send, (int)count, mpi.type_byte, recv, (int)count, mpi.type_byte, mpi.world) == 0
             ? kSuccess
             : kInternalError;
}

STAND_IN int ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, comm *c, void *stream) {
  if (!ready(c) || stream == nullptr || type != kFloat64 || (op != kSum && op != kMax) || !fits(count) ||
      send == nullptr || recv == nullptr)
    return kInvalidArgument;
  // In place as NCCL allows it: MPI_IN_PLACE is (void *)1 in Open MPI.
  const void *in = send == recv ? reinterpret_cast<const void *>(1) : send;
  return mpi.allreduce(in, recv, (int)count, mpi.type_double, op == kMax ? mpi.op_max : mpi.op_sum, mpi.world) == 0
             ? kSuccess
             : kInternalError;
}

STAND_IN int ncclReduceScatter(const void *send, void *recv, size_t count, int type, int op, comm *c, void *stream) {
  if (!ready(c) || stream == nullptr || type != kFloat64 || op != kSum || !fits(count * (size_t)c->size) ||
      send == nullptr || recv == nullptr)
    return kInvalidArgument;
  return mpi.reduce_scatter_block(send, recv, (int)count, mpi.type_double, mpi.op_sum, mpi.world) == 0
             ? kSuccess
             : kInternalError;
}
