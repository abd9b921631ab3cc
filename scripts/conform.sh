#!/bin/bash
# conform.sh - `vfu conform` against `vfu serve` of every spec in specs/, the suite
# running the server itself (--server-cmd, with the state-changing checks). Each
# spec must get 0 FAIL. JUnit reports go to $CONFORM_JUNIT_DIR (default
# $LOG_DIR/conform-junit, i.e. .build/vfu-logs/conform-junit of this checkout).
# Needs a built .build/debug/vfu.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/qemu-env.sh   # LOG_DIR: per checkout, never a shared path
vfu=.build/debug/vfu
out=${CONFORM_JUNIT_DIR:-$LOG_DIR/conform-junit}
mkdir -p "$out"
failed=0
for spec in specs/*.json; do
  name=$(basename "$spec" .json)
  if summary=$("$vfu" conform --server-cmd "$vfu serve $spec --socket {sock} --log-level error" \
                 --junit "$out/$name.xml" | tail -n 1); then
    echo "conform $name: $summary"
  else
    echo "conform $name: FAILED ($summary)"
    "$vfu" conform --server-cmd "$vfu serve $spec --socket {sock} --log-level error" | grep '^FAIL' || true
    failed=1
  fi
done
exit $failed
