#!/usr/bin/env bash
# gpu-check.sh OUT_DIR: the checks only a CUDA machine can run, in one go, in under 8 minutes:
#   1. build liblsoftmax.so for this GPU's architecture only (nvidia-smi or __nvcc_device_query)
#   2. the Deno test suite on the real CUDA backend (its products on cuBLAS where the machine has
#      it: the step "products" says which), then the CUDA suites on the library's own kernels
#      (LSOFTMAX_CUBLAS=off)
#   3. the C ABI driver (tests/native/sanitize_driver.cpp, linked against the library just built)
#   4. bench/torch_compare.py, where python3 imports torch: ours through ctypes against PyTorch's
#      linear layer and a composed PyTorch L-Softmax (forward+backward), and their agreement;
#      bench/torch_loss.py: the fused loss against F.cross_entropy on both, up to C = 1,000,000;
#      bench/torch_head.py: a resident head's training step against a PyTorch head (nn.Linear,
#      F.cross_entropy, SGD with momentum), exact and TF32, up to C = 1,000,000
#   5. deno bench on the CUDA backend (without the TensorFlow.js peer: no network needed), and
#      bench/products.ts: cuBLAS against the library's kernels, each precision, up to C = 1,000,000
#   6. compute-sanitizer memcheck, racecheck, synccheck and initcheck on the driver (last: the
#      slowest, and on some machines the sanitizer refuses the device)
# A step's failure is recorded and the next steps still run (those that need its output are
# marked skipped). Each step has its own time limit, and all of them together at most
# GPU_CHECK_BUDGET_S (450 s): a step gets the smaller of its limit and the time left.
#
# Output: OUT_DIR/summary.md (GPU, a table of steps with verdicts and times, key lines, the
# PyTorch tables, the tails of failed steps' logs), OUT_DIR/torch_compare.md, torch_loss.md,
# torch_head.md and
# OUT_DIR/logs.tar.gz (every step's log, repacked after each step). The logs themselves are in
# GPU_CHECK_LOGS (default OUT_DIR/logs). Exit status 0 when every step passed (a missing PyTorch
# is a skip, not a failure; a missing Deno is a failure).
#
# Deno: $DENO, else .deno-xz/deno.xz (decompressed to /tmp), else deno on the PATH, else the copy
# in .tools/. The GPU machine has no network and no Deno, so Deno travels with the working tree as
# an xz-compressed copy in the git-ignored .deno-xz/ folder (about 31 MB of the tool's 64 MiB),
# which the device tool's `carry` must name (ignored paths travel only when carried). Once, here:
#   mkdir -p .deno-xz && xz -T2 -9 -c .tools/node_modules/@deno/linux-x64-glibc/deno > .deno-xz/deno.xz
# then one device call (it returns at most 8 files from $OUT, so the logs stay outside it and
# come back packed):
#   run(command: "GPU_CHECK_LOGS=/tmp/gpu-check-logs scripts/gpu-check.sh $OUT",
#       carry: [".deno-xz"], timeout_s: 540)
# The build happens there (build/gpu-check, for that GPU only); nothing built here needs to travel.
#
# --quick: steps 1-3 only (build, the suite on the device, the driver; not the kernels' second
# suite), within 240 s, so that a
# session with little device time learns first whether the CUDA paths pass; then the full check.
set -uo pipefail
quick=0
if [ "${1:-}" = --quick ]; then quick=1; shift; fi
[ $# -eq 1 ] || { echo "usage: scripts/gpu-check.sh [--quick] OUT_DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd) || exit 2
mkdir -p "$1" && out=$(cd "$1" && pwd) || exit 2
logs=${GPU_CHECK_LOGS:-$out/logs}
mkdir -p "$logs" && logs=$(cd "$logs" && pwd) || exit 2
cd "$here" || exit 2
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH" DENO_NO_UPDATE_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
build=${GPU_CHECK_BUILD:-build/gpu-check}
budget=${GPU_CHECK_BUDGET_S:-450}
((quick)) && budget=${GPU_CHECK_BUDGET_S:-240}
python=${PYTHON:-python3}
start=$(date +%s)
summary=$out/summary.md
status=0
failed_steps=()

note() { echo "$*" | tee -a "$summary" >&2; }
skip() { echo "| $1 | skipped: $2 | |" >>"$summary"; echo "gpu-check: $1: skipped: $2" >&2; }

# step NAME LIMIT_S CMD...: CMD's output into NAME.log, under LIMIT_S or the time left if less.
step() {
  local name=$1 limit=$2 left t0 rc verdict
  shift 2
  left=$((budget - ($(date +%s) - start)))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then
    skip "$name" "out of time (budget ${budget}s)"
    status=1
    return 1
  fi
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  verdict=ok
  if ((rc != 0)); then
    verdict="FAILED (exit $rc)"
    ((rc == 124 || rc == 137)) && verdict="FAILED (timed out after ${limit}s)"
    status=1
    failed_steps+=("$name")
  fi
  echo "| $name | $verdict | $(($(date +%s) - t0))s |" >>"$summary"
  echo "gpu-check: $name: $verdict" >&2
  tar -czf "$out/logs.tar.gz" -C "$logs" . 2>/dev/null
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
  arch=$("$CUDA_HOME/bin/__nvcc_device_query" 2>/dev/null | tr ', ' '\n' | grep -E '^[0-9]+$' | head -1)
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
driver=$here/$build/sanitize_driver
sanitizer_steps=(memcheck racecheck synccheck initcheck)
torch_md=$out/torch_compare.md
loss_md=$out/torch_loss.md
head_md=$out/torch_head.md
products_md=$out/products.md
rm -f "$torch_md" "$loss_md" "$head_md" "$products_md"
if step build 200 make -j"$(nproc)" BUILD="$build" CUDA_ARCHS="$arch" CUDA_PTX= "$build/liblsoftmax.so"; then
  if [ -n "$deno" ]; then
    step products 20 env LSOFTMAX_LIB="$lib" "$deno" eval \
      'import { backends } from "./mod.ts"; console.log("cuda:0 products: " + backends().cuda.products)'
    step deno-test 120 env LSOFTMAX_LIB="$lib" "$deno" test --allow-ffi --allow-env --allow-read --allow-write --allow-net --allow-run tests/
    # distributed: "nccl" with one rank: the rendezvous and the collectives through the real NCCL.
    if ! command -v mpirun >/dev/null 2>&1; then
      skip nccl-one-rank "no mpirun"
    elif [ -z "${LSOFTMAX_NCCL:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2'; then
      skip nccl-one-rank "no libnccl.so.2 (ldconfig -p; LSOFTMAX_NCCL names one elsewhere)"
    else
      step nccl-one-rank 90 env LSOFTMAX_LIB="$lib" BACKEND=cuda:0 DISTRIBUTED=nccl NO_CHECKPOINT=1 \
        CHECKPOINT="$logs" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun -np 1 \
        "$deno" run --allow-ffi --allow-env --allow-read --allow-write tests/mpi/ranks_check.ts
    fi
    if ((!quick)); then
      step deno-test-kernels 90 env LSOFTMAX_CUBLAS=off LSOFTMAX_LIB="$lib" "$deno" test --allow-ffi --allow-env \
        --allow-read --allow-write --allow-run tests/cuda_test.ts tests/tf32_test.ts tests/bf16_test.ts \
        tests/loss_test.ts tests/head_test.ts
    fi
  else
    skip deno-test "no Deno (\$DENO, .deno-xz/deno.xz, PATH, .tools/)"
    status=1
  fi

  driver_ok=0
  if step driver-build 60 g++ -std=c++17 -O1 -g -Wall -Wextra -Werror -Icuda tests/native/sanitize_driver.cpp \
    -o "$driver" -L"$here/$build" -l:liblsoftmax.so -Wl,-rpath,"$here/$build"; then
    driver_ok=1
    step driver 60 "$driver"
  else
    skip driver "the driver did not build"
  fi

  if ((quick)); then
    for s in torch-compare deno-bench "${sanitizer_steps[@]}"; do skip "$s" "--quick"; done
  elif ! command -v "$python" >/dev/null 2>&1; then
    skip torch-compare "no $python"
  elif ! timeout 90 "$python" -c "import torch" >"$logs/torch-import.log" 2>&1; then
    skip torch-compare "$python cannot import torch ($(tail -1 "$logs/torch-import.log" | cut -c1-120))"
  else
    step torch-compare 150 "$python" bench/torch_compare.py --lib "$lib" --out "$torch_md"
    step torch-loss 120 "$python" bench/torch_loss.py --lib "$lib" --out "$loss_md"
    step torch-head 120 "$python" bench/torch_head.py --lib "$lib" --out "$head_md"
  fi

  if ((quick)); then
    :
  elif [ -n "$deno" ]; then
    step deno-bench 90 env LSOFTMAX_LIB="$lib" LSOFTMAX_BACKEND=cuda LSOFTMAX_BENCH_TFJS=0 \
      "$deno" bench --allow-ffi --allow-env --allow-read bench/lsoftmax_bench.ts
    step products-bench 90 bash -c 'env LSOFTMAX_LIB="$1" "$2" run --allow-ffi --allow-env --allow-read \
      --allow-run bench/products.ts >"$3"' _ "$lib" "$deno" "$products_md"
  else
    skip deno-bench "no Deno"
  fi

  if ((quick)); then
    :
  elif ((driver_ok)); then
    sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/compute-sanitizer/compute-sanitizer")
    step memcheck 90 "$sanitizer" --tool memcheck --leak-check full --error-exitcode 1 "$driver"
    step racecheck 90 "$sanitizer" --tool racecheck --racecheck-report hazard --error-exitcode 1 "$driver" quick
    step synccheck 45 "$sanitizer" --tool synccheck --error-exitcode 1 "$driver" quick
    step initcheck 45 "$sanitizer" --tool initcheck --error-exitcode 1 "$driver" quick
  else
    for s in "${sanitizer_steps[@]}"; do skip "$s" "no driver"; done
  fi
else
  for s in products deno-test driver-build driver torch-compare torch-loss torch-head deno-bench products-bench \
    "${sanitizer_steps[@]}"; do
    skip "$s" "the library did not build"
  done
fi

{
  echo
  echo "Architecture sm_$arch; Deno: ${deno:-none}; logs in logs.tar.gz beside this file ($logs)."
  echo
  key=$(
    for f in products deno-test deno-test-kernels driver "${sanitizer_steps[@]}"; do
      [ -f "$logs/$f.log" ] || continue
      echo "== $f"
      sed 's/\x1b\[[0-9;]*m//g' "$logs/$f.log" |
        grep -aE "passed|failed|FAIL|ERROR SUMMARY|RACECHECK SUMMARY|sanitize_driver:|cuda:0" | tail -6
    done
    if [ -f "$logs/deno-bench.log" ]; then
      echo "== deno-bench"
      sed 's/\x1b\[[0-9;]*m//g' "$logs/deno-bench.log" | tail -40
    fi
  )
  if [ -n "$key" ]; then
    echo '```'
    echo "$key"
    echo '```'
  fi
  if [ -s "$products_md" ]; then
    echo
    echo "## cuBLAS against the library's kernels (bench/products.ts)"
    echo
    cat "$products_md"
  fi
  if [ -f "$logs/torch-compare.log" ]; then
    echo
    echo "## PyTorch comparison (bench/torch_compare.py)"
    echo
    if [ -s "$torch_md" ]; then
      cat "$torch_md"
    else
      echo '```'
      tail -20 "$logs/torch-compare.log"
      echo '```'
    fi
  fi
  if [ -f "$logs/torch-loss.log" ]; then
    echo
    echo "## The fused loss against PyTorch (bench/torch_loss.py)"
    echo
    if [ -s "$loss_md" ]; then
      cat "$loss_md"
    else
      echo '```'
      tail -20 "$logs/torch-loss.log"
      echo '```'
    fi
  fi
  if [ -f "$logs/torch-head.log" ]; then
    echo
    echo "## A training step against a PyTorch head (bench/torch_head.py)"
    echo
    if [ -s "$head_md" ]; then
      cat "$head_md"
    else
      echo '```'
      tail -20 "$logs/torch-head.log"
      echo '```'
    fi
  fi
  for f in ${failed_steps[@]+"${failed_steps[@]}"}; do
    [ "$f" = deno-bench ] && continue # its end is above already
    echo
    echo "### $f failed: the end of its log"
    echo
    echo '```'
    sed 's/\x1b\[[0-9;]*m//g' "$logs/$f.log" | tail -25
    echo '```'
  done
  echo
  echo "Total $(($(date +%s) - start))s; $([ $status -eq 0 ] && echo 'all passed' || echo 'FAILURES above')."
} >>"$summary"
tar -czf "$out/logs.tar.gz" -C "$logs" . 2>/dev/null
echo "gpu-check: summary in $summary" >&2
exit $status
