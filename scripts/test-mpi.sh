#!/usr/bin/env bash
# MarginHead across processes (distributed: "mpi"): tests/mpi/ranks_check.ts in every process of
# `mpirun -np 3`, then 2, then 1 (the run of 3 saves the checkpoint the others load), for each
# library and backend given as LIB=BACKEND pairs (the CPU backend of liblsoftmax.so, the CUDA
# backend of the emulated library). As root Open MPI needs the two ALLOW variables; more ranks
# than cores need --oversubscribe.
#
#   scripts/test-mpi.sh build/liblsoftmax.so=cpu build/liblsoftmax_emu.so=cuda:0
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
deno=${DENO:-$here/scripts/deno}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for pair in "$@"; do
  lib=$(cd "$(dirname "${pair%%=*}")" && pwd)/$(basename "${pair%%=*}")
  backend=${pair#*=}
  for k in 3 2 1; do
    echo "test-mpi: mpirun -np $k, $backend on $(basename "$lib")"
    LSOFTMAX_LIB=$lib BACKEND=$backend CHECKPOINT=$dir timeout 300 \
      mpirun -np "$k" --oversubscribe "$deno" run --allow-ffi --allow-env --allow-read --allow-write \
      "$here/tests/mpi/ranks_check.ts"
  done
done
