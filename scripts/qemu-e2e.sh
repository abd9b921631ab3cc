#!/bin/bash
# qemu-e2e.sh [SPEC.json...] - end-to-end test of `vfu serve` against QEMU's real
# vfio-user client (vfio-user-pci, QEMU 11.x from trixie-backports).
#
# For each spec (default: every specs/*.json that scripts/e2e_check.py --can-test accepts)
# and each guest-RAM configuration in $RAM_MODES (default "memfd default"):
#   1. starts  $VFU serve SPEC --socket $WORK/NAME.sock   (log: $LOG_DIR/NAME@RAM.server.log)
#   2. boots the test guest with scripts/qemu-run-guest.sh, kernel parameters from
#      `e2e_check.py --cmdline SPEC` (log: $LOG_DIR/NAME@RAM.guest.log). RAM "memfd": guest
#      RAM is a shared memfd and DMA_MAP carries fds; "default": QEMU's default RAM, no
#      fds, so every device DMA is a DMA_READ/DMA_WRITE message to QEMU.
#   3. stops the server with SIGTERM: only exit status 0 passes (SIGKILL after
#      $STOP_TIMEOUT s, 143 or anything else is a failure)
#   4. runs scripts/e2e_check.py SPEC GUEST_LOG: ids, BARs, capabilities, MMIO values,
#      scratch write, DMA, interrupts; QEMU abort (134) / timeout / dropped connection fail.
# Then (unless TWO_VMMS=0) two QEMUs on one server: the first boots and passes its checks,
# the second is refused (it exits with "Device or resource busy") and nothing of the
# first guest's is disturbed. And (unless TWO_DEVICES=0) one `vfu serve` process serving two
# specs to one guest.
# Prints PASS/FAIL lines and ends with exactly one line "N passed, M failed".
# Exit status: 0 if everything passed, 1 if a check failed, 2 on a setup problem.
#
# Needs scripts/qemu-setup.sh to have run (it is re-invoked with --initramfs-only to
# pick up edits of scripts/guest/).
#
# Environment:
#   VFU (.build/debug/vfu)      server binary
#   BOOT_TIMEOUT (90)           seconds per guest boot
#   SERVER_START_TIMEOUT (15)   seconds to wait for the server's socket
#   STOP_TIMEOUT (10)           seconds to wait for the server after SIGTERM
#   LOG_DIR (.build/vfu-logs)   where logs are kept (per checkout; scripts/qemu-env.sh)
#   E2E_VERBOSE=1               print every guest console (default: only on failure)
#   DROP_PATTERN                regex (Python) for server-log lines meaning "dropped the
#                               connection"; default in e2e_check.py
#   QEMU_ROOT, GUEST_DIR, RUN_MODE, VFU_TRACE=1 (QEMU trace per spec in LOG_DIR)
#   RAM_MODES ("memfd default")  guest-RAM configurations to run every spec in
#   TWO_VMMS (1)                 0 skips the two-QEMUs-on-one-server check
#   TWO_DEVICES (1)              0 skips the two-devices-from-one-process check
#   VFU_PROXY=1                 put `vfu proxy --pcap --validate` between QEMU and the
#                               server; tshark then checks the capture (LOG_DIR/NAME.pcapng)
#                               with scripts/capture_check.py
#   CONTROL (1)                  0 skips the control-plane check (scripts/e2e-control.sh)
set -euo pipefail
exec </dev/null

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
VFU=${VFU:-$REPO/.build/debug/vfu}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-90}
SERVER_START_TIMEOUT=${SERVER_START_TIMEOUT:-15}
STOP_TIMEOUT=${STOP_TIMEOUT:-10}
# shellcheck source=scripts/qemu-env.sh
. "$SCRIPT_DIR/qemu-env.sh"
PY=${PYTHON:-python3}
RAM_MODES=${RAM_MODES:-memfd default}
export BOOT_TIMEOUT

say() { echo "qemu-e2e: $*" >&2; }
setup_fail() { say "ERROR: $*"; echo "0 passed, 1 failed"; exit 2; }

command -v "$PY" >/dev/null || setup_fail "python3 not found"
[ -x "$VFU" ] || setup_fail "server binary $VFU not found or not executable (build it: swift build; or set VFU=...)"
qemu_root_ready \
  || setup_fail "QEMU/guest not prepared: run scripts/qemu-setup.sh first (QEMU_ROOT=$QEMU_ROOT GUEST_DIR=$GUEST_DIR)"
mkdir -p "$LOG_DIR"
"$SCRIPT_DIR/qemu-initramfs.sh" >"$LOG_DIR/initramfs.log" 2>&1 \
  || { cat "$LOG_DIR/initramfs.log" >&2; setup_fail "rebuilding the initramfs failed"; }

# ------------------------------------------------------------ which specs
SPECS=()
if [ $# -gt 0 ]; then
  for s in "$@"; do [ -f "$s" ] || setup_fail "no such spec: $s"; SPECS+=("$s"); done
else
  for s in "$REPO"/specs/*.json; do
    [ -f "$s" ] || continue
    if why=$("$PY" "$SCRIPT_DIR/e2e_check.py" --can-test "$s"); then SPECS+=("$s")
    else say "skipping $(basename "$s"): $why"; fi
  done
  [ ${#SPECS[@]} -gt 0 ] || setup_fail "no testable specs in $REPO/specs/"
fi

WORK=$(mktemp -d /tmp/vfu-e2e.XXXXXX)
SERVER_PID=""
PROXY_PID=""
cleanup() {
  [ -n "$PROXY_PID" ] && kill -KILL "$PROXY_PID" 2>/dev/null || true
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

PASSED=0; FAILED=0
count() {  # count FILE: add its PASS/FAIL lines to the totals
  local p f
  p=$(grep -c '^PASS ' "$1" || true); f=$(grep -c '^FAIL ' "$1" || true)
  PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
}
hfail() {  # harness-level failure line
  echo "FAIL spec=$1 check=$2: expected $3 got $4"; FAILED=$((FAILED + 1))
}
hpass() { echo "PASS spec=$1 check=$2${3:+ $3}"; PASSED=$((PASSED + 1)); }

T_ALL=$SECONDS
for SPEC in "${SPECS[@]}"; do
for RAM in $RAM_MODES; do
  BASE=$(basename "$SPEC" .json)
  NAME="$BASE@$RAM"
  SOCK="$WORK/$BASE.sock"
  SLOG="$LOG_DIR/$NAME.server.log"
  GLOG="$LOG_DIR/$NAME.guest.log"
  CLOG="$LOG_DIR/$NAME.check.log"
  rm -f "$SLOG" "$GLOG" "$CLOG"
  say "---- $NAME ($SPEC)"
  T0=$SECONDS

  # 1. server
  "$VFU" serve "$SPEC" --socket "$SOCK" >"$SLOG" 2>&1 &
  SERVER_PID=$!
  ok=0
  for _ in $(seq $((SERVER_START_TIMEOUT * 10))); do
    [ -S "$SOCK" ] && { ok=1; break; }
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ $ok = 0 ]; then
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      hfail "$NAME" server-start "socket $SOCK within ${SERVER_START_TIMEOUT}s" "no socket"
      kill -KILL "$SERVER_PID" 2>/dev/null || true
    else
      set +e; wait "$SERVER_PID"; st=$?; set -e
      hfail "$NAME" server-start "server listening on $SOCK" "server exited with status $st"
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    sed 's/^/  server: /' "$SLOG" | tail -20 >&2
    continue
  fi
  hpass "$NAME" server-start "pid=$SERVER_PID"
  GUEST_SOCK=$SOCK
  if [ "${VFU_PROXY:-0}" = 1 ]; then
    GUEST_SOCK="$WORK/$NAME.proxy.sock"
    rm -f "$LOG_DIR/$NAME.pcapng"
    "$VFU" proxy --listen "$GUEST_SOCK" --connect "$SOCK" --pcap "$LOG_DIR/$NAME.pcapng" --validate \
      >"$LOG_DIR/$NAME.proxy.log" 2>&1 &
    PROXY_PID=$!
    for _ in $(seq 100); do [ -S "$GUEST_SOCK" ] && break; sleep 0.05; done
    if [ -S "$GUEST_SOCK" ]; then hpass "$NAME" proxy-start "pid=$PROXY_PID"
    else hfail "$NAME" proxy-start "proxy listening on $GUEST_SOCK" "no socket"; fi
  fi

  # 2. guest
  ARGS=$("$PY" "$SCRIPT_DIR/e2e_check.py" --cmdline "$SPEC")
  say "guest kernel args: $ARGS"
  TRACE_ENV=()
  [ -n "${VFU_TRACE:-}" ] && TRACE_ENV=(VFU_TRACE="$LOG_DIR/$NAME.qemu-trace.log")
  set +e
  # shellcheck disable=SC2086
  env "${TRACE_ENV[@]}" GUEST_RAM="$RAM" "$SCRIPT_DIR/qemu-run-guest.sh" "$GUEST_SOCK" $ARGS >"$GLOG" 2>&1
  QST=$?
  set -e
  say "guest finished with QEMU status $QST after $((SECONDS - T0))s (log: $GLOG)"

  # 3. stop the proxy (its sessions ended with QEMU), then the server
  if [ -n "$PROXY_PID" ]; then
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    set +e; wait "$PROXY_PID"; pst=$?; set -e
    case $pst in 0) hpass "$NAME" proxy-stop "SIGTERM -> status $pst" ;;
                *) hfail "$NAME" proxy-stop "exit status 0 after SIGTERM" "status $pst" ;; esac
    PROXY_PID=""
  fi
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    stopped=0
    for _ in $(seq $((STOP_TIMEOUT * 10))); do kill -0 "$SERVER_PID" 2>/dev/null || { stopped=1; break; }; sleep 0.1; done
    if [ $stopped = 1 ]; then
      set +e; wait "$SERVER_PID"; st=$?; set -e
      case $st in 0) hpass "$NAME" server-stop "SIGTERM -> status $st" ;;
                  *) hfail "$NAME" server-stop "exit status 0 after SIGTERM" "status $st" ;; esac
    else
      kill -KILL "$SERVER_PID" 2>/dev/null || true
      wait "$SERVER_PID" 2>/dev/null || true
      hfail "$NAME" server-stop "server to exit within ${STOP_TIMEOUT}s of SIGTERM" "still running (killed)"
    fi
  else
    set +e; wait "$SERVER_PID"; st=$?; set -e
    hfail "$NAME" server-alive "server running until SIGTERM" "server had exited with status $st during the test"
  fi
  SERVER_PID=""
  rm -f "$SOCK"

  # 4. check
  CHECK_ARGS=(--qemu-status "$QST" --server-log "$SLOG" --timeout-seconds "$BOOT_TIMEOUT" --no-summary)
  [ -n "${DROP_PATTERN:-}" ] && CHECK_ARGS+=(--drop-pattern "$DROP_PATTERN")
  set +e
  EFF="$LOG_DIR/$NAME.effective.json"
  if "$VFU" check-spec --effective "$SPEC" >"$EFF" 2>/dev/null; then CHECK_ARGS+=(--effective "$EFF"); fi
  # The checks name the spec; the RAM configuration is added to every line.
  "$PY" "$SCRIPT_DIR/e2e_check.py" "$SPEC" "$GLOG" "${CHECK_ARGS[@]}" 2>&1 | sed "s/ spec=$BASE / spec=$NAME /" >"$CLOG"
  set -e
  if [ "${VFU_PROXY:-0}" = 1 ]; then
    if [ "$RAM" = memfd ]; then  # guest RAM comes with its memfd
      RAM_EXPECT=(--expect 'vfio-user.command == 2 && vfio-user.capture.fds == 1 && vfio-user.capture.fd.kind == 1 && vfio-user.dma.address == 0')
    else  # no fd: the server reaches guest RAM with DMA messages, in QEMU's layout
      RAM_EXPECT=(--expect 'vfio-user.command == 2 && vfio-user.capture.fds == 0'
                  --expect 'vfio-user.command == 12 && vfio-user.flags.type == 0 && vfio-user.data'
                  # QEMU 11.1.3 answers in the spec's layout (docs/debugging.md).
                  --expect 'vfio-user.command == 11 && vfio-user.flags.type == 1 && vfio-user.dma.count == 4096'
                  --none 'vfio-user.qemu_dma_layout')
    fi
    # What QEMU 11.1 always does (qemu-client.md): the capture must decode cleanly and show it.
    "$PY" "$SCRIPT_DIR/capture_check.py" "$LOG_DIR/$NAME.pcapng" --min-frames 50 \
      --expect 'vfio-user.command == 1 && vfio-user.flags.type == 0 && vfio-user.version.max_msg_fds == 16 && vfio-user.version.write_multiple' \
      "${RAM_EXPECT[@]}" \
      --expect 'vfio-user.command == 4 && vfio-user.flags.type == 1 && vfio-user.device_info.flags.pci' \
      --expect 'vfio-user.command == 5 && vfio-user.flags.type == 1 && vfio-user.region.index == 7' \
      --expect 'vfio-user.command == 9 && vfio-user.region.index == 7 && vfio-user.access.offset == 0 && vfio-user.access.count == 256' \
      --expect 'vfio-user.command == 8 && vfio-user.set_irqs.data_eventfd && vfio-user.capture.fd.kind == 3' \
      --expect 'vfio-user.command == 10 && vfio-user.flags.no_reply' \
      --none 'vfio-user.reply_to_no_reply' >"$CLOG.capture" 2>&1 || true
    sed 's/^\(PASS\|FAIL\) /\1 spec='"$NAME"' check=capture: /' "$CLOG.capture" >>"$CLOG"
    DEV=$(grep -c 'deviation:' "$LOG_DIR/$NAME.proxy.log" || true)
    if [ "$DEV" = 0 ]; then echo "PASS spec=$NAME check=validate: QEMU shows no protocol deviation" >>"$CLOG"
    else echo "FAIL spec=$NAME check=validate: expected no deviation got $DEV (see $LOG_DIR/$NAME.proxy.log)" >>"$CLOG"; fi
  fi
  cat "$CLOG"
  count "$CLOG"
  if [ "${E2E_VERBOSE:-0}" = 1 ] || grep -q '^FAIL ' "$CLOG"; then
    say "guest console ($GLOG):"
    tr -d '\r' <"$GLOG" | sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' | grep -v '^$' | sed 's/^/  guest: /' >&2
    say "server log ($SLOG), last 30 lines:"
    tail -30 "$SLOG" | sed 's/^/  server: /' >&2
  fi
  say "$NAME done in $((SECONDS - T0))s"
done
done

# ------------------------------------------------------------ two VMMs, one device
if [ "${TWO_VMMS:-1}" = 1 ]; then
  . "$SCRIPT_DIR/e2e-two-vmms.sh"
fi
# ------------------------------------------------------------ two devices, one process
if [ "${TWO_DEVICES:-1}" = 1 ]; then
  . "$SCRIPT_DIR/e2e-two-devices.sh"
fi
# ------------------------------------------------------------ the control plane
# vfu serve --control and vfu ctl against a real guest.
if [ "${CONTROL:-1}" = 1 ]; then
  say "---- control plane (scripts/e2e-control.sh)"
  T0=$SECONDS
  CTL_LOG="$LOG_DIR/control.check.log"
  set +e
  E2E_INITRAMFS_DONE=1 VFU="$VFU" LOG_DIR="$LOG_DIR" "$SCRIPT_DIR/e2e-control.sh" >"$CTL_LOG" 2>&1
  set -e
  grep -E '^(PASS|FAIL) ' "$CTL_LOG" || true
  count "$CTL_LOG"
  if grep -q '^FAIL ' "$CTL_LOG"; then grep -v -E '^(PASS|FAIL|NOTE|SKIP) |passed, .* failed$' "$CTL_LOG" >&2 || true; fi
  say "control plane done in $((SECONDS - T0))s"
fi
say "all specs done in $((SECONDS - T_ALL))s; logs in $LOG_DIR"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
