# e2e-two-devices.sh - sourced by qemu-e2e.sh (uses its VFU, WORK, LOG_DIR, PY, SCRIPT_DIR,
# REPO, BOOT_TIMEOUT, hpass, hfail, count, say).
#
# Two devices from one `vfu serve` process (default.json and minimal.json, --socket-dir),
# both in one guest: default at 00:05.0 runs the whole check list (DMA, interrupts,
# registers), minimal appears at 00:06.0 with its own ids, and the one server process
# stops with status 0 and removes both sockets.
# shellcheck source=scripts/lib/e2e-report.sh
. "$SCRIPT_DIR/lib/e2e-report.sh"

TD_NAME="default@two-devices"
TD_DIR="$WORK/two-devices"
TD_SLOG="$LOG_DIR/$TD_NAME.server.log"
TD_GLOG="$LOG_DIR/$TD_NAME.guest.log"
mkdir -p "$TD_DIR"
say "---- $TD_NAME"
"$VFU" serve "$REPO/specs/default.json" "$REPO/specs/minimal.json" --socket-dir "$TD_DIR" >"$TD_SLOG" 2>&1 &
SERVER_PID=$!
for _ in $(seq 150); do [ -S "$TD_DIR/default.sock" ] && [ -S "$TD_DIR/minimal.sock" ] && break; sleep 0.1; done
TD_ARGS=$("$PY" "$SCRIPT_DIR/e2e_check.py" --cmdline "$REPO/specs/default.json")
set +e
# shellcheck disable=SC2086
EXTRA_SOCKETS="$TD_DIR/minimal.sock" "$SCRIPT_DIR/qemu-run-guest.sh" "$TD_DIR/default.sock" $TD_ARGS >"$TD_GLOG" 2>&1
TD_QST=$?
set -e
e2e_stop_server
TD_SST=$SERVER_STATUS
if tr -d '\r' <"$TD_GLOG" | grep -q '^00:06.0 .*\[1b36:0011\]'; then
  hpass "$TD_NAME" second-device "00:06.0 is 1b36:0011 (minimal.json) from the same server process"
else
  hfail "$TD_NAME" second-device "00:06.0 [1b36:0011] in the guest's lspci" "$(tr -d '\r' <"$TD_GLOG" | grep -a '^00:06.0' || echo none)"
fi
e2e_server_stopped "$TD_NAME" "$TD_SST"
if [ ! -e "$TD_DIR/default.sock" ] && [ ! -e "$TD_DIR/minimal.sock" ]; then hpass "$TD_NAME" sockets-removed
else hfail "$TD_NAME" sockets-removed "both sockets removed" "$(ls "$TD_DIR")"; fi
e2e_report "$TD_NAME" "$REPO/specs/default.json" "$TD_GLOG" "$TD_QST" "$TD_SLOG"
