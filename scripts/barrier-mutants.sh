#!/usr/bin/env bash
# Removes each barrier (__syncthreads, __syncwarp) of the CUDA kernels in turn, builds the
# emulated library with that one barrier gone, and runs the CUDA-path tests against it: every
# mutant must fail them. Shows that the emulator's scheduling turns a missing barrier into a
# failure on the real kernels, not only on tests/native/planted.cu.
#
#   scripts/barrier-mutants.sh            (make mutants-emu; needs build/ from make test-emu)
#
# MUTANT_HEADERS and MUTANT_TESTS narrow the run (e.g. one header against the tests that use it).
#
# Exit status 0 when every mutant was caught; prints one line per barrier.
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-g++}
DENO=${DENO:-scripts/deno}
BUILD=${BUILD:-build}
HOST_OBJ=${HOST_OBJ:-$(for s in api/checks api/context api/layout api/ops cpu/backend cpu/loss cpu/loss_blocks cpu/loss_direct cpu/loss_op cpu/op cpu/optim cpu/rows cpu/rows_avx2; do echo "$BUILD/obj/$s.o"; done)}
CUDA_SRC=${CUDA_SRC:-gpu/backend gpu/op gpu/loss gpu/optim}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The CUDA-path tests: all of them for the unmutated kernels, and for a mutant those of its header
# (each header's kernels run in its tests; MUTANT_TESTS overrides both).
all_tests="tests/cuda_test.ts tests/tf32_test.ts tests/gradient_test.ts tests/loss_test.ts tests/margins_test.ts tests/head_test.ts
  tests/subcenter_cuda_test.ts"
tests_of() {
  if [ -n "${MUTANT_TESTS:-}" ]; then echo "$MUTANT_TESTS"; return; fi
  case $1 in
    cuda/gpu/gemm_kernels.cuh) echo "tests/cuda_test.ts tests/tf32_test.ts tests/loss_test.ts" ;;
    cuda/gpu/loss_kernels.cuh) echo "tests/loss_test.ts tests/margins_test.ts tests/subcenter_cuda_test.ts" ;;
    cuda/gpu/optim_kernels.cuh) echo "tests/head_test.ts" ;;
    *) echo "tests/cuda_test.ts tests/gradient_test.ts tests/margins_test.ts tests/loss_test.ts" ;;
  esac
}

# Builds the emulated library from the kernels in $work/cuda and runs the tests given on it:
# status 0 when they pass, 1 when they fail. A build that fails stops the script: that is no catch.
build_and_test() {
  local objs=()
  for src in $CUDA_SRC; do
    objs+=("$work/${src//\//_}.o")
    if ! $CXX -std=c++17 -O2 -fPIC -x c++ -DLSM_EMU -Iemulator -I"$work/cuda" \
      -c "$work/cuda/$src.cu" -o "$work/${src//\//_}.o"; then
      echo "barrier mutants: the build failed (${what:-unmutated kernels})" >&2
      exit 1
    fi
  done
  # shellcheck disable=SC2086 # HOST_OBJ is a list of paths
  if ! $CXX -shared -o "$work/lib.so" $HOST_OBJ "${objs[@]}" "$BUILD/emu/emu_runtime.o" \
    -lopenblas -lpthread -Wl,--no-undefined; then
    echo "barrier mutants: the link failed (${what:-unmutated kernels})" >&2
    exit 1
  fi
  LSOFTMAX_LIB="$work/lib.so" "$DENO" test --allow-ffi --allow-env --allow-read --allow-run \
    --no-check "$@" >"$work/log" 2>&1
}

# The unmutated kernels first: a mutant "caught" by tests that fail anyway proves nothing.
cp -r cuda "$work/cuda"
# shellcheck disable=SC2086 # lists of paths
if ! build_and_test ${MUTANT_TESTS:-$all_tests}; then
  echo "barrier mutants: the tests fail without any mutation; not run" >&2
  tail -n 30 "$work/log" >&2
  exit 1
fi
echo "baseline  unmutated kernels pass the tests"
survived=0 total=0
for header in ${MUTANT_HEADERS:-cuda/gpu/target_kernels.cuh cuda/gpu/loss_kernels.cuh cuda/gpu/gemm_kernels.cuh cuda/gpu/optim_kernels.cuh}; do
  while IFS=: read -r line _; do
    total=$((total + 1))
    rm -rf "$work/cuda" && cp -r cuda "$work/cuda"
    # The barrier call becomes an empty statement; the rest of the line stays.
    sed -i "${line}s/__sync\(threads\|warp\)()/(void)0/" "$work/$header"
    what="$header:$line: $(sed -n "${line}p" "$header" | sed 's/^ *//' | cut -c1-60)"
    # A barrier the comment above it marks as one the emulator cannot tell from a no-op (its
    # need rests on GPU memory ordering) is listed, not mutated.
    if sed -n "$((line - 1))p" "$header" | grep -q "barrier-mutants: redundant in the emulator"; then
      echo "kept      $what (marked: needed for GPU memory ordering only)"
      total=$((total - 1))
      continue
    fi
    # shellcheck disable=SC2086 # a list of paths
    if build_and_test $(tests_of "$header"); then
      echo "SURVIVED  $what"
      survived=$((survived + 1))
    else
      echo "caught    $what ($(grep -c 'FAILED' "$work/log" || true) failure lines)"
    fi
  done < <(grep -n "__syncthreads()\|__syncwarp()" "$header" | grep -v "^[0-9]*: *//")
done
echo "barrier mutants: $((total - survived)) of $total caught"
[ "$survived" -eq 0 ]
