// nccl_stand_in.cpp: the few NCCL entry points the library calls (api/nccl.cpp), for the emulated
// CUDA backend, where "device" memory is host memory. Built as build/emu/libnccl_stand_in.so and
// loaded by the library as NCCL itself is (LSOFTMAX_NCCL=its path), so that distributed: "nccl"
// runs under mpirun without a GPU: the loading, the rendezvous (the unique id from rank 0), the
// padding of the ranks' parts, each collective's counts and types. The collectives are Open MPI's
// on the same buffers (libmpi.so.40, which the library has opened already). Stricter than NCCL
// where that catches a mistake of ours: a communicator whose rank or size is not MPI's, an id
// not made by ncclGetUniqueId, a type or an operation the library does not use.
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

namespace {

enum { kSuccess = 0, kSystemError = 2, kInternalError = 3, kInvalidArgument = 4, kInvalidUsage = 5 };
enum { kUint8 = 1, kFloat64 = 8, kSum = 0, kMax = 2 };
const uint32_t kMagic = 0x6e63636c;

struct UniqueId {
  char internal[128];
};

struct comm {
  uint32_t magic = kMagic;
  int rank = 0, size = 1;
};

using Handle = void *;
struct Mpi {
  bool ready = false;
  int (*rank)(Handle, int *) = nullptr;
  int (*size)(Handle, int *) = nullptr;
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
              (mpi.world = dlsym(lib, "ompi_mpi_comm_world")) != nullptr &&
              (mpi.type_byte = dlsym(lib, "ompi_mpi_byte")) != nullptr &&
              (mpi.type_double = dlsym(lib, "ompi_mpi_double")) != nullptr &&
              (mpi.op_sum = dlsym(lib, "ompi_mpi_op_sum")) != nullptr &&
              (mpi.op_max = dlsym(lib, "ompi_mpi_op_max")) != nullptr;
  return mpi.ready;
}

bool valid(const comm *c) { return c != nullptr && c->magic == kMagic; }

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
    case kSystemError: return "unhandled system error (the stand-in: Open MPI is not loaded)";
    case kInternalError: return "internal error (the stand-in: an MPI call failed)";
    case kInvalidArgument: return "invalid argument";
    case kInvalidUsage: return "invalid usage";
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
  return kSuccess;
}

STAND_IN int ncclCommInitRank(comm **out, int size, UniqueId id, int rank) {
  uint32_t magic = 0;
  memcpy(&magic, id.internal, 4);
  if (out == nullptr || magic != kMagic || size < 1 || rank < 0 || rank >= size) return kInvalidArgument;
  if (!load()) return kSystemError;
  int r = -1, k = -1;
  if (mpi.rank(mpi.world, &r) != 0 || mpi.size(mpi.world, &k) != 0) return kInternalError;
  if (r != rank || k != size) return kInvalidUsage;
  comm *c = new comm();
  c->rank = rank, c->size = size;
  *out = c;
  return kSuccess;
}

STAND_IN int ncclCommDestroy(comm *c) {
  if (!valid(c)) return kInvalidArgument;
  c->magic = 0;
  delete c;
  return kSuccess;
}

STAND_IN int ncclAllGather(const void *send, void *recv, size_t count, int type, comm *c, void *stream) {
  if (!valid(c) || stream == nullptr || type != kUint8 || !fits(count) || send == nullptr || recv == nullptr)
    return kInvalidArgument;
  return mpi.allgather(send, (int)count, mpi.type_byte, recv, (int)count, mpi.type_byte, mpi.world) == 0
             ? kSuccess
             : kInternalError;
}

STAND_IN int ncclAllReduce(const void *send, void *recv, size_t count, int type, int op, comm *c, void *stream) {
  if (!valid(c) || stream == nullptr || type != kFloat64 || (op != kSum && op != kMax) || !fits(count) ||
      send == nullptr || recv == nullptr)
    return kInvalidArgument;
  // In place as NCCL allows it: MPI_IN_PLACE is (void *)1 in Open MPI.
  const void *in = send == recv ? reinterpret_cast<const void *>(1) : send;
  return mpi.allreduce(in, recv, (int)count, mpi.type_double, op == kMax ? mpi.op_max : mpi.op_sum, mpi.world) == 0
             ? kSuccess
             : kInternalError;
}

STAND_IN int ncclReduceScatter(const void *send, void *recv, size_t count, int type, int op, comm *c, void *stream) {
  if (!valid(c) || stream == nullptr || type != kFloat64 || op != kSum || !fits(count * (size_t)c->size) ||
      send == nullptr || recv == nullptr)
    return kInvalidArgument;
  return mpi.reduce_scatter_block(send, recv, (int)count, mpi.type_double, mpi.op_sum, mpi.world) == 0
             ? kSuccess
             : kInternalError;
}
