#!/usr/bin/env bash
# Installs what building and testing need when it is missing: OpenBLAS with its static archive
# (apt: libopenblas-pthread-dev, linked into the library) and Deno (npm). nvcc cannot be installed
# this way: without it the library is built without the CUDA backend (the CPU backend only; the
# CUDA backend then reports "built without CUDA"), and this says so and how to point at nvcc.
#
#   scripts/setup.sh        nvcc looked for first, then OpenBLAS and Deno
#   scripts/setup.sh host   OpenBLAS and Deno only (the emulated library and the checks)
#   scripts/setup.sh nvcc   the nvcc check only
#   scripts/setup.sh mpi    Open MPI (apt: openmpi-bin, libopenmpi-dev) for the tests of
#                           `distributed: "mpi"` under mpirun; the library itself never needs it
#   scripts/setup.sh dataset   Fashion-MNIST for `make demo` (Debian's dataset-fashion-mnist, 30 MB;
#                           never part of the tests, which use a small subset in tests/fixtures/)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-all}
case "$mode" in all | host | nvcc | dataset | mpi) ;; *)
  echo "setup: expected all, host, nvcc, dataset or mpi, got $mode" >&2
  exit 2
  ;;
esac
if [ "$mode" = dataset ]; then
  # The demo reads FASHION_MNIST_DIR when it is set: then nothing is installed.
  dir="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
  if [ ! -e "$dir/t10k-labels-idx1-ubyte.gz" ] && [ ! -e "$dir/t10k-labels-idx1-ubyte" ]; then
    if [ -n "${FASHION_MNIST_DIR:-}" ]; then
      echo "setup: FASHION_MNIST_DIR=$dir holds no Fashion-MNIST IDX files" >&2
      exit 1
    fi
    echo "setup: installing dataset-fashion-mnist (Fashion-MNIST, 30 MB)" >&2
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >&2
  fi
  exit 0
fi
if [ "$mode" = mpi ]; then
  # libmpi.so.40 is loaded at run time (dlopen) by `distributed: "mpi"`; mpirun starts the ranks.
  if ! command -v mpirun >/dev/null 2>&1 || ! ldconfig -p | grep -q 'libmpi\.so\.40'; then
    echo "setup: installing openmpi-bin and libopenmpi-dev (Open MPI)" >&2
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openmpi-bin libopenmpi-dev >&2
  fi
  exit 0
fi
if [ "$mode" != host ]; then
  nvcc="${NVCC:-${CUDA_HOME:-/usr/local/cuda}/bin/nvcc}"
  if [ ! -x "$nvcc" ] && ! command -v "$nvcc" >/dev/null 2>&1; then
    echo "setup: nvcc (the CUDA toolkit) was not found at $nvcc: building liblsoftmax.so" \
      "without the CUDA backend (CPU only; set CUDA_HOME=/path/to/cuda or NVCC=/path/to/nvcc" \
      "for the GPU)" >&2
  fi
  [ "$mode" = nvcc ] && exit 0
fi
# OpenBLAS counts as present when a program including cblas.h links against -lopenblas (the
# header alone may come from another BLAS) and the static archive the library links is there.
multiarch=$("${CC:-cc}" -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")
have_shared_openblas() {
  printf '#include <cblas.h>\nint main(void) { return 0; }\n' |
    "${CC:-cc}" -x c - -lopenblas -o /dev/null >/dev/null 2>&1
}
have_openblas() { have_shared_openblas && [ -e "/usr/lib/$multiarch/openblas-pthread/libopenblas.a" ]; }
if ! have_openblas; then
  echo "setup: installing libopenblas-pthread-dev (OpenBLAS, with its static archive)" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    $sudo apt-get install -y -qq libopenblas-pthread-dev; } >&2; then
    # No package manager to be had (an offline machine): a shared OpenBLAS still builds a library,
    # one that needs OpenBLAS installed where it runs (scripts/check-linkage.sh then fails).
    have_shared_openblas || exit 1
    echo "setup: could not install libopenblas-pthread-dev; linking the shared OpenBLAS" >&2
  fi
fi
"$here/scripts/deno" --version >/dev/null
