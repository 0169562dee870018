#!/usr/bin/env bash
# gpu-check.sh OUT_DIR: the checks only a CUDA machine can run, in one go, in under 8 minutes:
#   1. build liblsoftmax.so for this GPU's architecture only (nvidia-smi or __nvcc_device_query)
#   2. the Deno test suite on the real CUDA backend
#   3. compute-sanitizer memcheck, racecheck, synccheck and initcheck on the C ABI driver
#      (tests/native/sanitize_driver.cpp, linked against the library just built)
#   4. deno bench on the CUDA backend (without the TensorFlow.js peer: no network needed)
# Each step's output goes to OUT_DIR/<step>.log; OUT_DIR/summary.md has the verdicts, the GPU and
# the key lines. Exit status 0 when every step passed. Deno: $DENO, else .deno-xz/deno.xz
# (decompressed to /tmp), else deno on the PATH, else the copy in .tools/.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
[ $# -eq 1 ] || { echo "usage: scripts/gpu-check.sh OUT_DIR" >&2; exit 2; }
mkdir -p "$1" && out=$(cd "$1" && pwd) || exit 2
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH" DENO_NO_UPDATE_CHECK=1
build=${GPU_CHECK_BUILD:-build/gpu-check}
budget=${GPU_CHECK_BUDGET_S:-450}
start=$(date +%s)
summary=$out/summary.md
status=0

note() { echo "$*" | tee -a "$summary" >&2; }

# step NAME LIMIT_S CMD...: CMD's output into NAME.log, under LIMIT_S or the time left if less.
step() {
  local name=$1 limit=$2 left t0 rc verdict
  shift 2
  left=$((budget - ($(date +%s) - start)))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then
    echo "| $name | skipped: out of time | |" >>"$summary"
    status=1
    return 1
  fi
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  verdict=ok
  if ((rc != 0)); then
    verdict="FAILED (exit $rc)"
    ((rc == 124)) && verdict="FAILED (timed out after ${limit}s)"
    status=1
  fi
  echo "| $name | $verdict | $(($(date +%s) - t0))s |" >>"$summary"
  echo "gpu-check: $name: $verdict" >&2
  return $rc
}

{
  echo "# gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1 | head -5
  nvcc --version 2>&1 | tail -2
  echo '```'
  echo
} >"$summary"

arch=${CUDA_ARCH:-}
if [ -z "$arch" ]; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
fi
if [ -z "$arch" ] && [ -x "$CUDA_HOME/bin/__nvcc_device_query" ]; then
  arch=$("$CUDA_HOME/bin/__nvcc_device_query" 2>/dev/null | tr ', ' '\n\n' | grep -E '^[0-9]+$' | head -1)
fi
if [ -z "$arch" ]; then
  note "gpu-check: no GPU architecture found (nvidia-smi, __nvcc_device_query); set CUDA_ARCH=90 or the like"
  exit 1
fi

deno=""
if [ -n "${DENO:-}" ] && timeout 30 "$DENO" --version >/dev/null 2>&1; then
  deno=$DENO
elif [ -f .deno-xz/deno.xz ] && mkdir -p /tmp/gpu-check-deno &&
  xz -dc .deno-xz/deno.xz >/tmp/gpu-check-deno/deno && chmod +x /tmp/gpu-check-deno/deno; then
  deno=/tmp/gpu-check-deno/deno
elif command -v deno >/dev/null 2>&1; then
  deno=$(command -v deno)
elif [ -x .tools/node_modules/@deno/linux-x64-glibc/deno ]; then
  deno=$here/.tools/node_modules/@deno/linux-x64-glibc/deno
fi

echo "| step | verdict | time |" >>"$summary"
echo "|---|---|---|" >>"$summary"

lib=$here/$build/liblsoftmax.so
if step build 200 make -j"$(nproc)" BUILD="$build" CUDA_ARCHS="$arch" CUDA_PTX= "$build/liblsoftmax.so"; then
  if [ -n "$deno" ]; then
    step deno-test 120 env LSOFTMAX_LIB="$lib" "$deno" test --allow-ffi --allow-env --allow-read --allow-net --allow-run tests/
  else
    echo "| deno-test | skipped: no Deno (\$DENO, .deno-xz/deno.xz, PATH, .tools/) | |" >>"$summary"
    status=1
  fi
  driver=$here/$build/sanitize_driver
  if step driver-build 60 g++ -std=c++17 -O1 -g -Wall -Wextra -Werror -Icuda tests/native/sanitize_driver.cpp \
    -o "$driver" -L"$here/$build" -l:liblsoftmax.so -Wl,-rpath,"$here/$build"; then
    sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/compute-sanitizer/compute-sanitizer")
    step driver 60 "$driver"
    step memcheck 90 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 1 "$driver"
    step racecheck 90 "$sanitizer" --tool racecheck --racecheck-report hazard --error-exitcode 1 "$driver" quick
    step synccheck 45 "$sanitizer" --tool synccheck --error-exitcode 1 "$driver" quick
    step initcheck 45 "$sanitizer" --tool initcheck --error-exitcode 1 "$driver" quick
  fi
  if [ -n "$deno" ]; then
    step deno-bench 90 env LSOFTMAX_LIB="$lib" LSOFTMAX_BACKEND=cuda LSOFTMAX_BENCH_TFJS=0 \
      "$deno" bench --allow-ffi --allow-env --allow-read bench/lsoftmax_bench.ts
  fi
fi

{
  echo
  echo "Architecture sm_$arch; Deno: ${deno:-none}; logs beside this file."
  echo
  echo '```'
  for f in deno-test driver memcheck racecheck synccheck initcheck; do
    [ -f "$out/$f.log" ] || continue
    echo "== $f"
    grep -aE "passed|failed|FAIL|ERROR SUMMARY|RACECHECK SUMMARY|sanitize_driver:|cuda:0" "$out/$f.log" | tail -6
  done
  if [ -f "$out/deno-bench.log" ]; then
    echo "== deno-bench"
    sed 's/\x1b\[[0-9;]*m//g' "$out/deno-bench.log" | tail -40
  fi
  echo '```'
  echo
  echo "Total $(($(date +%s) - start))s; $([ $status -eq 0 ] && echo 'all passed' || echo 'FAILURES above')."
} >>"$summary"
echo "gpu-check: summary in $summary" >&2
exit $status
