#!/bin/bash
# test.sh - every test of the project: the Swift test suites, then the end-to-end
# run of real guests under QEMU's vfio-user-pci against `vfu serve`.
#
# Needs root for the QEMU root (debootstrap). SKIP_QEMU=1 runs only `swift test`.
# Ends with the e2e summary line "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== swift build"
set +e
swift build >/tmp/vfu-swift-build.log 2>&1
status=$?
set -e
# Warnings and errors, then the closing line.
grep -E 'warning:|error:' /tmp/vfu-swift-build.log | sort -u || true
tail -n 1 /tmp/vfu-swift-build.log
[ "$status" -eq 0 ] || { echo "swift build failed (status $status); full log: /tmp/vfu-swift-build.log"; exit "$status"; }
echo "== benchmark C sources compile (scripts/bench; the benchmarks themselves are not run here)"
for c in scripts/bench/*.c; do cc -O2 -Wall -Werror -fsyntax-only "$c"; done
echo "== swift test"
set +e
swift test >/tmp/vfu-swift-test.log 2>&1
status=$?
set -e
# Show results, not the compile progress or every "started" line.
grep -vE '^\[[0-9]+/[0-9]+\] |Test .* started\.$|^Test Case .* started\.$' /tmp/vfu-swift-test.log | tail -n 300
[ "$status" -eq 0 ] || { echo "swift test failed (status $status); full log: /tmp/vfu-swift-test.log"; exit "$status"; }

echo "== vfu conform against vfu serve of every spec"
scripts/conform.sh

if [ "${SKIP_QEMU:-0}" = 1 ]; then
  echo "== QEMU end-to-end skipped (SKIP_QEMU=1)"
  exit 0
fi
echo "== QEMU end-to-end"
scripts/qemu-setup.sh
scripts/qemu-e2e.sh
