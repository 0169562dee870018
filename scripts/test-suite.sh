#!/usr/bin/env bash
# Runs the Deno suite (arguments go to `deno test`) and ends with what a reader of the log's last
# lines needs: on the emulated library, the kernel launches per kernel ($LSM_EMU_LAUNCH_LOG, which
# the library appends to at exit; none at all means the CUDA path was never reached); on a
# failure, each failing test with the first lines of its error. CI shows only the tail of a run.
set -uo pipefail
deno=${DENO:-scripts/deno}
label=${SUITE_LABEL:-test}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
[ -n "${LSM_EMU_LAUNCH_LOG:-}" ] && rm -f "$LSM_EMU_LAUNCH_LOG"

NO_COLOR=1 "$deno" test "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

if [ -n "${LSM_EMU_LAUNCH_LOG:-}" ]; then
  echo "$label: kernel launches on the emulated CUDA backend:"
  if [ -s "$LSM_EMU_LAUNCH_LOG" ]; then
    awk '{ n[$1] += $2 } END { for (k in n) printf "  %-34s %d\n", k, n[k] }' "$LSM_EMU_LAUNCH_LOG" | sort
    awk '{ t += $2 } END { printf "  %-34s %d\n", "total", t }' "$LSM_EMU_LAUNCH_LOG"
  else
    echo "  none: the tests never reached the CUDA backend" >&2
    [ "$status" -ne 0 ] || status=1
  fi
fi

if [ "$status" -ne 0 ]; then
  echo "$label: deno test exited with $status; the failures (the whole log is above):"
  # Deno's report: " ERRORS " then "name => file:line:col" and the error, up to " FAILURES ".
  awk '/^ ERRORS *$/ { on = 1; next } /^ FAILURES *$/ { on = 0 }
       on && / => / { print "  " $0; left = 6; next }
       on && left > 0 && NF { print "      " $0; left-- }' "$log"
  if grep -q '^ ERRORS *$' "$log"; then
    grep -E '^(FAILED|ok) \|' "$log" | tail -n 1
  else # no report: a type error, a crash, a test that never finished
    grep -v '^ *[0-9]*: <unknown>$' "$log" | tail -n 20
  fi
fi
exit "$status"
