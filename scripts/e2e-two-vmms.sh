# e2e-two-vmms.sh - sourced by qemu-e2e.sh (uses its VFU, WORK, LOG_DIR, PY, SCRIPT_DIR,
# REPO, BOOT_TIMEOUT, hpass, hfail, count, say).
#
# Two QEMUs on one `vfu serve` socket. The first (A) owns the device from its first
# DMA_MAP; the second (B), with guest RAM at the same IOVAs, must be refused: its
# DMA_MAP, SET_IRQS, region writes and resets get EBUSY, so QEMU fails to realize the
# device and exits. A's guest runs its whole check list (DMA, interrupts, registers)
# undisturbed, and the server logs the refusal.
# shellcheck source=scripts/lib/e2e-report.sh
. "$SCRIPT_DIR/lib/e2e-report.sh"

TV_SPEC="$REPO/specs/default.json"
TV_NAME="default@two-vmms"
TV_SOCK="$WORK/two-vmms.sock"
TV_SLOG="$LOG_DIR/$TV_NAME.server.log"
TV_ALOG="$LOG_DIR/$TV_NAME.guest-a.log"
TV_BLOG="$LOG_DIR/$TV_NAME.guest-b.log"
say "---- $TV_NAME"
"$VFU" serve "$TV_SPEC" --socket "$TV_SOCK" >"$TV_SLOG" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [ -S "$TV_SOCK" ] && break; sleep 0.1; done
TV_ARGS=$("$PY" "$SCRIPT_DIR/e2e_check.py" --cmdline "$TV_SPEC")
set +e
# shellcheck disable=SC2086
GUEST_RAM=memfd "$SCRIPT_DIR/qemu-run-guest.sh" "$TV_SOCK" $TV_ARGS >"$TV_ALOG" 2>&1 &
TV_APID=$!
# B starts once A owns the device.
for _ in $(seq 200); do grep -q "now owns the device" "$TV_SLOG" && break; sleep 0.1; done
# shellcheck disable=SC2086
BOOT_TIMEOUT=30 GUEST_RAM=memfd "$SCRIPT_DIR/qemu-run-guest.sh" "$TV_SOCK" $TV_ARGS >"$TV_BLOG" 2>&1
TV_BST=$?
wait "$TV_APID"
TV_AST=$?
set -e
e2e_stop_server
TV_SST=$SERVER_STATUS

if [ "$TV_BST" -ne 0 ] && [ "$TV_BST" -ne 124 ] && grep -q "Device or resource busy" "$TV_BLOG"; then
  hpass "$TV_NAME" second-vmm-refused "QEMU B exited with status $TV_BST: $(grep -m1 -o 'error reply[^:]*: command [0-9]* error Device or resource busy' "$TV_BLOG")"
else
  hfail "$TV_NAME" second-vmm-refused "QEMU B refused (EBUSY) and exiting" "status $TV_BST; $(tail -3 "$TV_BLOG" | tr '\n' ' ')"
fi
if grep -q "refused (EBUSY): the device is owned by another client" "$TV_SLOG"; then
  hpass "$TV_NAME" refusal-logged
else
  hfail "$TV_NAME" refusal-logged "a warning naming the refusal in the server log" "none"
fi
if grep -aq "^E2E" "$TV_BLOG"; then
  hfail "$TV_NAME" second-guest-no-device "QEMU B never booting a guest with the device" "its guest ran"
else
  hpass "$TV_NAME" second-guest-no-device
fi
e2e_server_stopped "$TV_NAME" "$TV_SST"
# A's checks, in full (DMA into A's memory, A's interrupts, A's registers).
e2e_report "$TV_NAME" "$TV_SPEC" "$TV_ALOG" "$TV_AST" "$TV_SLOG" "guest A"
rm -f "$TV_SOCK"
