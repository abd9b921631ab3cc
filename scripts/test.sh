#!/bin/bash
# test.sh - every test of the project: the Swift test suites, then the end-to-end
# run of real guests under QEMU's vfio-user-pci against `vfu serve`.
#
# Runs as root or not. As root it installs what the tests need (pciutils, python3)
# and sets up the QEMU root. Without root it says in one line what is missing and
# what to run; then the lspci tests are skipped (if pciutils is missing) and so is
# the QEMU part (if the QEMU root is not set up), each with that reason.
# SKIP_QEMU=1 runs only `swift test`.
# Ends with the e2e summary line "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# Logs go to this checkout's $LOG_DIR (default .build/vfu-logs), never a shared path.
. scripts/qemu-env.sh
mkdir -p "$LOG_DIR"

# ------------------------------------------------------------ tools the tests use
missing=()
command -v lspci >/dev/null 2>&1 || [ -x /usr/bin/lspci ] || missing+=(pciutils)
[ "${SKIP_QEMU:-0}" = 1 ] || command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing ${missing[*]} (apt-get; log: $LOG_DIR/apt.log)"
  { apt-get -o DPkg::Lock::Timeout=600 update -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"$LOG_DIR/apt.log" 2>&1 || { tail -5 "$LOG_DIR/apt.log"; echo "test.sh: cannot install ${missing[*]}"; exit 1; }
  missing=()
fi
for m in "${missing[@]}"; do
  case $m in
    pciutils) echo "test.sh: lspci is missing: install pciutils (sudo apt-get install pciutils); until then LspciTests are skipped"
              export VFU_ALLOW_MISSING_TOOLS=1 ;;
    python3)  echo "test.sh: python3 is missing: install it (sudo apt-get install python3); until then the QEMU end-to-end part is skipped"
              SKIP_QEMU_WHY="python3 is missing" ;;
  esac
done

echo "== Package.swift's dependencies match the imports (scripts/check-deps.sh)"
scripts/check-deps.sh
echo "== swift build"
set +e
swift build >"$LOG_DIR/swift-build.log" 2>&1
status=$?
set -e
# Warnings and errors, then the closing line.
grep -E 'warning:|error:' "$LOG_DIR/swift-build.log" | sort -u || true
tail -n 1 "$LOG_DIR/swift-build.log"
[ "$status" -eq 0 ] || { echo "swift build failed (status $status); full log: $LOG_DIR/swift-build.log"; exit "$status"; }
echo "== benchmark C sources compile (scripts/bench; the benchmarks themselves are not run here)"
for c in scripts/bench/*.c; do cc -O2 -Wall -Werror -fsyntax-only "$c"; done
echo "== swift test"
set +e
swift test >"$LOG_DIR/swift-test.log" 2>&1
status=$?
set -e
# Show results, not the compile progress or every "started" line.
grep -vE '^\[[0-9]+/[0-9]+\] |Test .* started\.$|^Test Case .* started\.$' "$LOG_DIR/swift-test.log" | tail -n 300
[ "$status" -eq 0 ] || { echo "swift test failed (status $status); full log: $LOG_DIR/swift-test.log"; exit "$status"; }

echo "== examples/TemperatureSensor: a device package of its own, built against our products"
set +e
(cd examples/TemperatureSensor && swift build --build-tests && swift test --skip-build) >"$LOG_DIR/example.log" 2>&1
status=$?
set -e
grep -E 'warning:|error:|Test run|✘' "$LOG_DIR/example.log" | sort -u || true
[ "$status" -eq 0 ] || { echo "the example package failed (status $status); full log: $LOG_DIR/example.log"; exit "$status"; }

# Skips are listed again here, where they are seen (swift test prints them mid-log).
grep -E '(Test|Suite) .* skipped' "$LOG_DIR/swift-test.log" | sed 's/^/skipped: /' || true

echo "== vfu conform against vfu serve of every spec"
scripts/conform.sh
echo "== captures and the Wireshark dissector"
scripts/capture-test.sh

if [ "${SKIP_QEMU:-0}" = 1 ]; then
  echo "== QEMU end-to-end skipped (SKIP_QEMU=1)"
  exit 0
fi
if [ -n "${SKIP_QEMU_WHY:-}" ]; then
  echo "== QEMU end-to-end skipped: $SKIP_QEMU_WHY"
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  echo "== QEMU end-to-end"
  scripts/qemu-setup.sh --no-smoke   # the e2e boots guests anyway
elif qemu_root_ready; then
  echo "== QEMU end-to-end (QEMU root $QEMU_ROOT set up by root earlier)"
else
  echo "== QEMU end-to-end skipped: the QEMU root $QEMU_ROOT is not set up, and that needs root: run 'scripts/qemu-setup.sh' once (it asks sudo)"
  exit 0
fi
scripts/qemu-initramfs.sh 2>/dev/null   # this checkout's guest (a no-op when up to date)
# The initramfs depends on its inputs only: asking again by another path, from
# another folder, rebuilds nothing.
repo=$PWD
again=$(cd / && bash "$repo/scripts/../scripts/qemu-initramfs.sh" 2>&1)
grep -q 'up to date' <<<"$again" \
  || { echo "FAIL: the initramfs was rebuilt when only the script's path changed"; exit 1; }
echo "== the launcher: interactive guest fed on stdin (scripts/qemu-e2e-launcher.sh)"
scripts/qemu-e2e-launcher.sh
echo "== examples/ci/run.sh: a guest-side program against an emulated device"
examples/ci/run.sh >"$LOG_DIR/examples-ci.log" 2>&1 || { tr -d '\r' <"$LOG_DIR/examples-ci.log" | tail -30; echo "FAIL: examples/ci/run.sh"; exit 1; }
tr -d '\r' <"$LOG_DIR/examples-ci.log" | grep -aE '^(PASS|FAIL) |^guest-test:'
echo "== hot-plug: 10 QMP device_add/device_del cycles (scripts/qemu-e2e-hotplug.py)"
python3 scripts/qemu-e2e-hotplug.py --spec specs/minimal.json --cycles 10
echo "== specs under QEMU (scripts/qemu-e2e.sh)"
scripts/qemu-e2e.sh
echo "== QEMU end-to-end through vfu proxy (capture decoded by tshark)"
# Both guest-RAM configurations: memfds on DMA_MAP, and DMA by messages.
VFU_PROXY=1 TWO_VMMS=0 TWO_DEVICES=0 LOG_DIR=/tmp/vfu-e2e-proxy-logs scripts/qemu-e2e.sh specs/default.json
