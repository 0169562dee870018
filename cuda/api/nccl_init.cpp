// nccl_init.cpp: lsm_nccl_init's communicator where NCCL has ncclCommInitRankConfig (2.14 and
// later), made non-blocking, so that a rank whose own init fails, or never completes, cannot
// leave the others inside NCCL: each rank polls its init, tells the others of a failure over MPI
// (api/mpi.h), and every rank then agrees on the outcome (init_nonblocking).
#include <errno.h>
#include <stdlib.h>

#include <chrono>
#include <string>
#include <vector>

#include "api/mpi.h"
#include "api/nccl.h"

namespace lsm_nccl {

namespace {

// How long a rank waits for its ncclCommInitRankConfig unless LSOFTMAX_NCCL_INIT_TIMEOUT says:
// NCCL's own bootstrap gives up well before; a cluster whose ranks start slowly may want more.
constexpr int kInitDeadlineS = 300;
constexpr long kMostDeadlineS = 86400;
// MPI tag of the notice a rank whose init failed sends every other rank.
constexpr int kNoticeTag = 0x4c53;
// A rank's outcome of its init, all-reduced by max in a slot per rank: 0 done; the others failed.
constexpr int32_t kAborted = 1;         // aborted because another rank failed (no notice sent)
constexpr int32_t kNcclError = 16;      // + NCCL's code: its init failed (notice sent)
constexpr int32_t kTimedOut = 1 << 20;  // + the seconds waited: its deadline passed (notice sent)

bool notified(int32_t outcome) { return outcome >= kNcclError; }

}  // namespace

int32_t init_deadline(int32_t *seconds) {
  *seconds = kInitDeadlineS;
  const char *given = getenv("LSOFTMAX_NCCL_INIT_TIMEOUT");
  if (given == nullptr || *given == 0) return LSM_OK;
  char *end = nullptr;
  errno = 0;
  const long v = strtol(given, &end, 10);
  if (errno != 0 || *end != 0 || v < 1 || v > kMostDeadlineS)
    return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                    "LSOFTMAX_NCCL_INIT_TIMEOUT: expected whole seconds in [1, " + std::to_string(kMostDeadlineS) +
                        "], got \"" + std::string(given).substr(0, 64) + "\"");
  *seconds = (int32_t)v;
  return LSM_OK;
}

// ncclCommInitRankConfig with blocking = 0, polled to its end on every rank. While its own init is
// in progress a rank also tests for another rank's notice of failure, and then aborts its own;
// a rank whose init failed, or ran past the deadline, aborts it and notifies every other rank.
// Then each rank's outcome goes to every rank (MPI_Iallreduce, once each rank's init is over),
// so every rank returns the same result: the communicator, or the same Error naming the rank.
int32_t init_nonblocking(Comm *out, int32_t k, const UniqueId &id, int32_t r, int32_t deadline_s) {
  int32_t notice = 0;
  lsm_mpi::Request notice_req = nullptr;
  int32_t s = lsm_mpi::irecv(&notice, 1, lsm_mpi::kAnySource, kNoticeTag, &notice_req);
  if (s != LSM_OK) return s;
  bool noticed = false;
  Config config;
  config.blocking = 0;
  Comm comm = nullptr;
  int code = nccl.init_config(&comm, k, id, r, &config);
  const auto start = std::chrono::steady_clock::now();
  int32_t outcome = 0;
  for (;;) {
    if (code == kInProgress && comm != nullptr) {
      int state = 0;
      const int got = nccl.async_error(comm, &state);
      code = got != 0 ? got : state;
    }
    if (code != kInProgress) {
      outcome = code == 0 ? 0 : kNcclError + (code > 0 && code < 256 ? code : 3);
      break;
    }
    if ((s = lsm_mpi::test(&notice_req, &noticed)) != LSM_OK) break;
    if (noticed) {
      outcome = kAborted;
      break;
    }
    const auto waited = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - start);
    if (waited.count() >= deadline_s) {
      outcome = kTimedOut + (int32_t)waited.count();
      break;
    }
    pause_1ms();
  }
  if (s != LSM_OK) {  // MPI's own failure (Open MPI's default handler ends the job before)
    if (comm != nullptr) nccl.abort_comm(comm);
    return s;
  }
  if (outcome != 0 && comm != nullptr) nccl.abort_comm(comm), comm = nullptr;
  std::vector<lsm_mpi::Request> sent;
  for (int32_t q = 0; notified(outcome) && q < k && s == LSM_OK; ++q)
    if (q != r) {
      sent.push_back(nullptr);
      s = lsm_mpi::isend(&outcome, 1, q, kNoticeTag, &sent.back());
      if (s != LSM_OK) sent.pop_back();
    }
  std::vector<int32_t> outcomes((size_t)k, 0);
  outcomes[(size_t)r] = outcome;
  lsm_mpi::Request all = nullptr;
  if (s == LSM_OK) s = lsm_mpi::iallreduce_max(outcomes.data(), k, &all);
  if (s == LSM_OK) s = lsm_mpi::wait(&all);
  // The notices this rank has yet to receive: one from every other rank that sent them (each sent
  // before its all-reduce), so that none is left for a later init to take for its own.
  int32_t expected = 0;
  for (int32_t q = 0; q < k; ++q) expected += q != r && notified(outcomes[(size_t)q]);
  if (s == LSM_OK && !noticed) {
    if (expected > 0) s = lsm_mpi::wait(&notice_req);
    else s = lsm_mpi::cancel(&notice_req);
    noticed = expected > 0;
  }
  for (int32_t n = noticed ? 1 : 0; s == LSM_OK && n < expected; ++n) {
    lsm_mpi::Request more = nullptr;
    if ((s = lsm_mpi::irecv(&notice, 1, lsm_mpi::kAnySource, kNoticeTag, &more)) == LSM_OK) s = lsm_mpi::wait(&more);
  }
  for (lsm_mpi::Request &q : sent)
    if (s == LSM_OK) s = lsm_mpi::wait(&q);
  int32_t failed = -1;
  for (int32_t q = 0; q < k && s == LSM_OK; ++q) {
    const int32_t o = outcomes[(size_t)q];
    if (notified(o) && (failed < 0 || (o < kTimedOut && outcomes[(size_t)failed] >= kTimedOut))) failed = q;
  }
  if (s == LSM_OK && failed < 0) {
    *out = comm;
    return LSM_OK;
  }
  if (comm != nullptr) nccl.abort_comm(comm);
  if (s != LSM_OK) return s;
  const int32_t o = outcomes[(size_t)failed];
  const std::string who = "distributed: \"nccl\": rank " + std::to_string(failed) + " of " + std::to_string(k) + ": ";
  return lsm_fail(nullptr, LSM_ERR_INTERNAL,
                  o >= kTimedOut ? who + "ncclCommInitRankConfig did not complete in " +
                                       std::to_string(o - kTimedOut) + " s; every rank aborted its communicator"
                                 : who + "ncclCommInitRankConfig failed: " + nccl.error_string(o - kNcclError) +
                                       "; every rank aborted its communicator");
}

}  // namespace lsm_nccl
