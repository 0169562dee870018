#!/usr/bin/env bash
# MarginHead across processes (distributed: "mpi"): tests/mpi/ranks_check.ts in every process of
# `mpirun -np 3`, then 2, then 1 (the run of 3 saves the checkpoint the others load), then
# tests/mpi/adaptive_check.ts (the adaptive kinds) with 3 and 2, for each
# library and backend given as LIB=BACKEND pairs (the CPU backend of liblsoftmax.so, the CUDA
# backend of the emulated library). As root Open MPI needs the two ALLOW variables; more ranks
# than cores need --oversubscribe.
#
# With NCCL_STAND_IN (build/emu/libnccl_stand_in.so), each CUDA backend runs again with
# distributed: "nccl" through it, and once without NCCL (LSOFTMAX_NCCL naming no file).
#
#   NCCL_STAND_IN=build/emu/libnccl_stand_in.so \
#     scripts/test-mpi.sh build/liblsoftmax.so=cpu build/liblsoftmax_emu.so=cuda:0
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
deno=${DENO:-$here/scripts/deno}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for pair in "$@"; do
  lib=$(cd "$(dirname "${pair%%=*}")" && pwd)/$(basename "${pair%%=*}")
  backend=${pair#*=}
  engines=mpi
  if [[ $backend == cuda* && -n ${NCCL_STAND_IN:-} ]]; then engines="mpi nccl"; fi
  for engine in $engines; do
    for k in 3 2 1; do
      echo "test-mpi: mpirun -np $k, $backend on $(basename "$lib"), distributed: $engine"
      LSOFTMAX_LIB=$lib BACKEND=$backend DISTRIBUTED=$engine CHECKPOINT=$dir LSOFTMAX_NCCL=${NCCL_STAND_IN:-} \
        timeout 300 mpirun -np "$k" --oversubscribe "$deno" run --allow-ffi --allow-env --allow-read \
        --allow-write "$here/tests/mpi/ranks_check.ts"
    done
    for k in 3 2; do
      echo "test-mpi: mpirun -np $k, the adaptive kinds, $backend on $(basename "$lib"), distributed: $engine"
      LSOFTMAX_LIB=$lib BACKEND=$backend DISTRIBUTED=$engine LSOFTMAX_NCCL=${NCCL_STAND_IN:-} \
        timeout 300 mpirun -np "$k" --oversubscribe "$deno" run --allow-ffi --allow-env --allow-read \
        "$here/tests/mpi/adaptive_check.ts"
    done
  done
  if [[ $engines == *nccl* ]]; then
    echo "test-mpi: mpirun -np 2, $backend on $(basename "$lib"), distributed: nccl without NCCL"
    LSOFTMAX_LIB=$lib BACKEND=$backend DISTRIBUTED=nccl NO_NCCL=1 LSOFTMAX_NCCL=$dir/no-libnccl.so.2 \
      timeout 300 mpirun -np 2 --oversubscribe "$deno" run --allow-ffi --allow-env --allow-read \
      --allow-write "$here/tests/mpi/ranks_check.ts"
    echo "test-mpi: mpirun -np 2, $backend on $(basename "$lib"), distributed: nccl, rank 1 without NCCL"
    LSOFTMAX_LIB=$lib BACKEND=$backend DISTRIBUTED=nccl NO_NCCL=1 CHECKPOINT=$dir timeout 300 \
      mpirun --oversubscribe \
      -np 1 -x LSOFTMAX_NCCL="$NCCL_STAND_IN" "$deno" run --allow-ffi --allow-env --allow-read \
      "$here/tests/mpi/ranks_check.ts" : \
      -np 1 -x LSOFTMAX_NCCL="$dir/no-libnccl.so.2" "$deno" run --allow-ffi --allow-env --allow-read \
      "$here/tests/mpi/ranks_check.ts"
  fi
done
