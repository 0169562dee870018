// mpi.h: the non-blocking MPI calls api/nccl_init.cpp's rendezvous needs on top of the C
// ABI's collectives (api/mpi.cpp, Open MPI loaded at run time): point-to-point sends and receives
// of ints, an in-place max all-reduce of ints, and their requests' test, wait and cancel. All on
// MPI_COMM_WORLD, after lsm_mpi_init. Not installed, not ABI.
#ifndef LSOFTMAX_API_MPI_H
#define LSOFTMAX_API_MPI_H

#include <stdint.h>

namespace lsm_mpi {

using Request = void *;  // Open MPI's MPI_Request, a pointer
constexpr int kAnySource = -1;  // Open MPI's MPI_ANY_SOURCE

int32_t isend(const int32_t *values, int count, int to, int tag, Request *request);
int32_t irecv(int32_t *values, int count, int from, int tag, Request *request);
int32_t iallreduce_max(int32_t *values, int count, Request *request);  // in place
int32_t test(Request *request, bool *done);
int32_t wait(Request *request);
int32_t cancel(Request *request);  // a receive that may never be matched: cancelled, then completed

}  // namespace lsm_mpi

#endif
