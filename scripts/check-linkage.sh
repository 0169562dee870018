#!/usr/bin/env bash
# check-linkage.sh LIB...: each library must be self-contained, as the one that ships is: ldd lists
# only the C library's own parts (libc, libm, libpthread, libdl, librt, the loader, the vDSO),
# and it exports only the C ABI (lsm_*), so that the OpenBLAS, libstdc++ and CUDA runtime inside
# cannot clash with a host process's. Prints the newest glibc symbol version each one needs (the
# oldest glibc it runs on), which must not be newer than LSM_MAX_GLIBC (2.35 by default: Ubuntu
# 22.04 and Debian 12 load it). Exit status 0 when every library passes.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: scripts/check-linkage.sh LIB..." >&2; exit 2; }
status=0
max_glibc=${LSM_MAX_GLIBC:-2.35}
for lib in "$@"; do
  if ! deps=$(ldd "$lib" 2>&1); then
    echo "check-linkage: $lib: ldd failed: $deps" >&2
    status=1
    continue
  fi
  foreign=$(echo "$deps" | grep -vE '^\s*(linux-vdso\.so|linux-gate\.so|lib(c|m|pthread|dl|rt)\.so\.[0-9]+ |/lib.*/ld-linux[^ ]*\.so|ld-linux[^ ]*\.so)' || true)
  if [ -n "$foreign" ]; then
    echo "check-linkage: $lib needs libraries besides the C library's own parts:" >&2
    echo "$foreign" >&2
    status=1
  fi
  exported=$(nm -D --defined-only "$lib" | awk '$3 != "" && $3 !~ /^lsm_/ { print $3 }' | head -n 5)
  if [ -n "$exported" ]; then
    echo "check-linkage: $lib exports symbols besides lsm_*, e.g.:" >&2
    echo "$exported" >&2
    status=1
  fi
  glibc=$(objdump -T "$lib" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
  newest=$(printf '%s\n' "${glibc#GLIBC_}" "$max_glibc" | sort -V | tail -n 1)
  if [ -n "$glibc" ] && [ "$newest" != "$max_glibc" ]; then
    echo "check-linkage: $lib needs $glibc, newer than the oldest glibc it must run on ($max_glibc):" >&2
    objdump -T "$lib" | grep -F "($glibc)" | awk '{ print "  " $NF }' >&2
    foreign+="glibc"
    status=1
  fi
  [ -z "$foreign$exported" ] && echo "check-linkage: $lib: self-contained (ldd: the C library only; exports lsm_* only; needs ${glibc:-no versioned glibc})"
done
exit "$status"
