#!/usr/bin/env bash
# Installs what building and testing need when it is missing: OpenBLAS (apt) and Deno (npm).
# nvcc cannot be installed this way: its absence is reported, with how to point at it.
#
#   scripts/setup.sh        nvcc checked first, then OpenBLAS and Deno
#   scripts/setup.sh host   OpenBLAS and Deno only (the emulated library and the checks)
#   scripts/setup.sh nvcc   the nvcc check only
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-all}
case "$mode" in all | host | nvcc) ;; *)
  echo "setup: expected all, host or nvcc, got $mode" >&2
  exit 2
  ;;
esac
if [ "$mode" != host ]; then
  nvcc="${NVCC:-${CUDA_HOME:-/usr/local/cuda}/bin/nvcc}"
  if [ ! -x "$nvcc" ] && ! command -v "$nvcc" >/dev/null 2>&1; then
    echo "setup: nvcc (the CUDA toolkit) was not found at $nvcc; building liblsoftmax.so" \
      "needs it (set CUDA_HOME=/path/to/cuda or NVCC=/path/to/nvcc)" >&2
    exit 1
  fi
  [ "$mode" = nvcc ] && exit 0
fi
# OpenBLAS counts as present when a program including cblas.h links against -lopenblas: the
# header alone may come from another BLAS.
have_openblas() {
  printf '#include <cblas.h>\nint main(void) { return 0; }\n' |
    "${CC:-cc}" -x c - -lopenblas -o /dev/null >/dev/null 2>&1
}
if ! have_openblas; then
  echo "setup: installing libopenblas-dev" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libopenblas-dev >&2
fi
"$here/scripts/deno" --version >/dev/null
