#!/bin/bash
# e2e-control.sh - the control plane end to end (called by scripts/qemu-e2e.sh; runs alone too).
#
# Serves specs/default.json with --control, records `vfu ctl watch` while a real guest
# under QEMU runs the guest program's control mode (vfu_ctl=1), and drives the device
# from the host with `vfu ctl`, meeting the guest at the doorbell's SCRATCH register:
#   step 1: poke BAR0 0x104 = 0x7e57da7a        -> the guest reads it back
#   step 3: fault add dma --count 1 --errno EIO  -> the guest's next FILL sees ERROR=5, the one after 0
#   steps 5, 7: irq intx                        -> the guest's uio_pci_generic counts each
#   (before the guest enabled anything: irq msix is refused with not-enabled)
#   step 9: the guest wrote SCRATCH 0xa11ce001, 0xa11ce002, read 0x100, wrote 0xa11ce003:
#           the watch log must hold those accesses in that order; it read an unmodeled offset
#           (0x200) and spun 20 reads on COMPLETIONS: the unmodeled and polls reports show them.
# Prints PASS/FAIL lines (scripts/e2e_check.py --control) and "N passed, M failed".
# Environment: VFU, LOG_DIR, BOOT_TIMEOUT, QEMU_ROOT, GUEST_DIR as for qemu-e2e.sh.
set -euo pipefail
exec </dev/null
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
VFU=${VFU:-$REPO/.build/debug/vfu}
LOG_DIR=${LOG_DIR:-/tmp/vfu-e2e-logs}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-60}
# The handshakes add host round trips to the guest's run: give it more time.
export BOOT_TIMEOUT=$(( BOOT_TIMEOUT + 60 ))
PY=${PYTHON:-python3}
SPEC=${SPEC:-$REPO/specs/default.json}
mkdir -p "$LOG_DIR"
# Standalone runs pick up edits of scripts/guest/ (qemu-e2e.sh has done this already).
[ -n "${E2E_INITRAMFS_DONE:-}" ] || "$SCRIPT_DIR/qemu-setup.sh" --initramfs-only --no-smoke >"$LOG_DIR/control.setup.log" 2>&1 \
  || { echo "FAIL spec=control check=setup: expected initramfs got failure"; echo "0 passed, 1 failed"; exit 2; }
WORK=$(mktemp -d /tmp/vfu-ctl-e2e.XXXXXX)
SOCK=$WORK/d.sock; CTL=$WORK/c.sock
SLOG=$LOG_DIR/control.server.log; GLOG=$LOG_DIR/control.guest.log
WLOG=$LOG_DIR/control.watch.jsonl; HLOG=$LOG_DIR/control.host.log
: >"$HLOG"
SERVER_PID=""; WATCH_PID=""; GUEST_PID=""
cleanup() {
  for p in $GUEST_PID $WATCH_PID $SERVER_PID; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $GUEST_PID $WATCH_PID $SERVER_PID; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
host() { echo "HOST $*" >>"$HLOG"; }
ctl() { "$VFU" ctl --control "$CTL" "$@"; }

"$VFU" serve "$SPEC" --socket "$SOCK" --control "$CTL" >"$SLOG" 2>&1 &
SERVER_PID=$!
for _ in $(seq 150); do [ -S "$SOCK" ] && [ -S "$CTL" ] && break; sleep 0.1; done
if ! [ -S "$CTL" ]; then echo "FAIL spec=control check=server-start: expected control socket got none"; echo "0 passed, 1 failed"; exit 1; fi
host "ctl-mode=$(stat -c %a "$CTL")"
# The guest spins 20 reads on COMPLETIONS (step 9): a loop of more than 10 counts.
ctl polls --threshold 10 >/dev/null

ctl watch --kinds access,irq,dma,fault >"$WLOG" 2>>"$HLOG" &
WATCH_PID=$!
# Before the guest enabled anything, an MSI-X is refused with a reason.
set +e
out=$(ctl --json irq msix --vector 0 2>&1); rc=$?
set -e
host "irq-before rc=$rc reply=$out"

"$SCRIPT_DIR/qemu-run-guest.sh" "$SOCK" vfu_db=0:0x0 vfu_ctl=1 >"$GLOG" 2>&1 &
GUEST_PID=$!

# wait_for STEP: until the guest says it is ready for STEP (SCRATCH = 0xc0de0000 + STEP)
wait_for() {
  local want k=0 v
  want=$(printf '0x%x' $(( 0xc0de0000 + $1 )))
  while [ $k -lt $(( BOOT_TIMEOUT * 20 )) ]; do
    v=$(ctl peek bar0 0x8 2>/dev/null || true)
    [ "$v" = "$want" ] && return 0
    kill -0 "$GUEST_PID" 2>/dev/null || return 1
    sleep 0.05; k=$((k + 1))
  done
  return 1
}
done_step() { ctl poke bar0 0x8 $(( 0xc0de0000 + $1 + 1 )); }

ok=1
if wait_for 1; then
  ctl poke bar0 0x104 0x7e57da7a && host "poke rc=0"
  done_step 1
else ok=0; host "step1 timeout"; fi
if [ $ok = 1 ] && wait_for 3; then
  ctl --json fault add dma --count 1 --errno EIO >>"$HLOG"
  done_step 3
else ok=0; host "step3 timeout"; fi
for step in 5 7; do
  if [ $ok = 1 ] && wait_for $step; then
    set +e; out=$(ctl --json irq intx 2>&1); rc=$?; set -e
    host "irq-intx step=$step rc=$rc reply=$out"
    done_step $step
  else ok=0; host "step$step timeout"; fi
done
if [ $ok = 1 ] && wait_for 9; then
  ctl --json polls >"$LOG_DIR/control.polls.json" || true
  ctl --json stats >"$LOG_DIR/control.stats.json" || true
  ctl --json unmodeled >"$LOG_DIR/control.unmodeled.json" || true
  ctl --json fault list >>"$HLOG" || true
  done_step 9
else host "step9 timeout"; fi

set +e
wait "$GUEST_PID"; QST=$?
set -e
GUEST_PID=""
host "qemu-status=$QST"
sleep 0.3   # let the watch client write what it was sent
kill -TERM "$WATCH_PID" 2>/dev/null || true; wait "$WATCH_PID" 2>/dev/null || true; WATCH_PID=""
kill -TERM "$SERVER_PID" 2>/dev/null || true
set +e; wait "$SERVER_PID"; SST=$?; set -e
SERVER_PID=""
host "server-status=$SST"

set +e
"$PY" "$SCRIPT_DIR/e2e_check.py" --control "$GLOG" "$WLOG" "$HLOG" "$LOG_DIR/control.polls.json"
st=$?
set -e
if [ $st -ne 0 ] || [ "${E2E_VERBOSE:-0}" = 1 ]; then
  echo "e2e-control: guest console ($GLOG):" >&2
  tr -d '\r' <"$GLOG" | grep -a 'E2E\|qemu' | sed 's/^/  guest: /' >&2
  echo "e2e-control: host log ($HLOG):" >&2; sed 's/^/  host: /' "$HLOG" >&2
  echo "e2e-control: server log, last 20 lines:" >&2; tail -20 "$SLOG" | sed 's/^/  server: /' >&2
fi
exit $st
