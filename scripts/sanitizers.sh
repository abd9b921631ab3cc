#!/bin/bash
# sanitizers.sh - the Swift test suites under ThreadSanitizer and AddressSanitizer
# (with LeakSanitizer), each in its own build folder (.build-tsan, .build-asan).
#
# Usage: scripts/sanitizers.sh [thread] [address]      (default: both)
# Prints one line per sanitizer: the test run's closing line and the count of
# sanitizer reports. Exits non-zero if a run failed or reported anything.
# Logs: $LOG_DIR/sanitize-{thread,address}.log (LOG_DIR default .build/vfu-logs).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${LOG_DIR:-$PWD/.build/vfu-logs}
mkdir -p "$LOG_DIR"
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(thread address)
status=0
for kind in "${kinds[@]}"; do
  case $kind in thread) dir=.build-tsan; pattern='WARNING: ThreadSanitizer' ;;
                address) dir=.build-asan; pattern='ERROR: (AddressSanitizer|LeakSanitizer)' ;;
                *) echo "sanitizers.sh: unknown sanitizer '$kind' (thread, address)" >&2; exit 2 ;; esac
  log="$LOG_DIR/sanitize-$kind.log"
  # halt_on_error=0: report every race, not just the first; the exit code still says.
  TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0} ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    swift test --sanitize="$kind" --scratch-path "$dir" >"$log" 2>&1
  rc=$?
  reports=$(grep -cE "$pattern" "$log")
  closing=$(grep -E '^(✔|✘) Test run with' "$log" | tail -n 1)
  echo "sanitize=$kind: ${closing:-no test run line} ($reports sanitizer reports, status $rc; log: $log)"
  if [ "$rc" -ne 0 ] || [ "$reports" -ne 0 ]; then
    grep -E -A12 "$pattern" "$log" | head -n 60
    grep -E '^✘ Test .* recorded an issue' "$log" | head -n 20
    status=1
  fi
done
exit $status
