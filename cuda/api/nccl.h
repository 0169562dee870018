// nccl.h: what api/nccl.cpp and api/nccl_init.cpp share: NCCL's types as the library declares
// them (no NCCL header needed to build), the table of its functions, loaded at run time and
// defined once in nccl.cpp, and the communicator's non-blocking init (nccl_init.cpp). Not
// installed, not ABI.
#ifndef LSOFTMAX_API_NCCL_H
#define LSOFTMAX_API_NCCL_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "api/backend.h"

namespace lsm_nccl {

struct UniqueId {
  char internal[128];
};
using Comm = void *;
using GetVersion = int (*)(int *);
using GetUniqueId = int (*)(UniqueId *);
// NCCL's ncclConfig_t as of 2.18: NCCL reads `size` bytes of it and ignores the fields newer than
// `version`, so this layout is valid for every NCCL that has ncclCommInitRankConfig.
struct Config {
  size_t size = sizeof(Config);
  unsigned int magic = 0xcafebeef;
  unsigned int version = 21400;  // NCCL_VERSION(2, 14, 0)
  int blocking = INT_MIN;  // INT_MIN and nullptr: NCCL_CONFIG_UNDEF_INT and _PTR, NCCL's defaults
  int cga_cluster_size = INT_MIN;
  int min_ctas = INT_MIN;
  int max_ctas = INT_MIN;
  const char *net_name = nullptr;
  int split_share = INT_MIN;
};
using CommInitRank = int (*)(Comm *, int, UniqueId, int);
using CommInitRankConfig = int (*)(Comm *, int, UniqueId, int, Config *);
using CommGetAsyncError = int (*)(Comm, int *);
using CommDestroy = int (*)(Comm);
using ErrorString = const char *(*)(int);
using AllGather = int (*)(const void *, void *, size_t, int, Comm, void *);
using AllReduce = int (*)(const void *, void *, size_t, int, int, Comm, void *);
using ReduceScatter = int (*)(const void *, void *, size_t, int, int, Comm, void *);

enum { kUint8 = 1, kFloat64 = 8, kSum = 0, kMax = 2, kInProgress = 7 };

struct Nccl {
  void *lib = nullptr;
  GetVersion version = nullptr;
  GetUniqueId unique_id = nullptr;
  CommInitRank init_rank = nullptr;
  CommInitRankConfig init_config = nullptr;  // these three: NCCL 2.14 and later, else null
  CommGetAsyncError async_error = nullptr;
  CommDestroy abort_comm = nullptr;
  CommDestroy destroy = nullptr;
  ErrorString error_string = nullptr;
  AllGather all_gather = nullptr;
  AllReduce all_reduce = nullptr;
  ReduceScatter reduce_scatter = nullptr;
  Comm comm = nullptr;
  lsm_context *ctx = nullptr;
  void *stream = nullptr;
  int32_t rank = 0, size = 1, device = -1;
};
extern Nccl nccl;  // nccl.cpp's: this process's NCCL and communicator

void pause_1ms();  // the polls' interval

// The seconds a rank's non-blocking init may take: LSOFTMAX_NCCL_INIT_TIMEOUT, else 300; an
// unreadable value is an error naming it (nccl_init.cpp).
int32_t init_deadline(int32_t *seconds);

// ncclCommInitRankConfig's communicator of rank r of k, made non-blocking, given up after
// deadline_s; every rank returns the same status (nccl_init.cpp). Needs nccl.init_config, and MPI
// initialised.
int32_t init_nonblocking(Comm *out, int32_t k, const UniqueId &id, int32_t r, int32_t deadline_s);

}  // namespace lsm_nccl

#endif
