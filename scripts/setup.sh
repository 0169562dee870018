#!/usr/bin/env bash
# Installs what building and testing need when it is missing: OpenBLAS (apt) and Deno (npm).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -e /usr/include/x86_64-linux-gnu/cblas.h ] && [ ! -e /usr/include/cblas.h ] &&
  [ ! -e /usr/include/aarch64-linux-gnu/cblas.h ]; then
  echo "setup: installing libopenblas-dev" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq libopenblas-dev >&2
fi
"$here/scripts/deno" --version >/dev/null
if [ ! -x "${NVCC:-/usr/local/cuda/bin/nvcc}" ] && ! command -v nvcc >/dev/null 2>&1; then
  echo "setup: nvcc (the CUDA toolkit) was not found; building needs it (CUDA_HOME=/path/to/cuda)" >&2
  exit 1
fi
