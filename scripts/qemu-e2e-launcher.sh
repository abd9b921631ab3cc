#!/bin/bash
# qemu-e2e-launcher.sh - checks scripts/vfu-qemu as a user drives it: the README's
# interactive guest (`scripts/vfu-qemu --guest --device SPEC`), fed commands on stdin.
# One boot with two devices (one `vfu serve` each) and a "driver" of the user's own
# (--guest-files): the guest's shell has /proc and /sys, lspci shows both devices
# with their spec's ids, and the module loads and binds to the device.
# Prints PASS/FAIL lines and ends with "N passed, M failed"; exit 0 only if all passed.
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/qemu-env.sh
. "$SCRIPT_DIR/qemu-env.sh"
cd "$VFU_REPO"
mkdir -p "$LOG_DIR"
PASSED=0 FAILED=0
check() {  # check NAME CONDITION-STATUS DETAIL
  if [ "$2" = 0 ]; then echo "PASS launcher check=$1"; PASSED=$((PASSED + 1))
  else echo "FAIL launcher check=$1: $3"; FAILED=$((FAILED + 1)); fi
}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vfu-launcher.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# "Your own driver": a module the guest does not have, with the files it needs.
mkdir -p "$WORK/files/opt/mydrv"
cp "$KERNEL_DIR/modules/uio.ko" "$KERNEL_DIR/modules/uio_pci_generic.ko" "$WORK/files/opt/mydrv/"

LOG=$LOG_DIR/launcher.guest.log
T0=$SECONDS
set +e
cat <<'CMDS' | timeout -k 5 120 scripts/vfu-qemu --guest --device specs/default.json --device specs/minimal.json \
    --guest-files "$WORK/files" >"$LOG" 2>&1
echo "mounts: $(grep -c -E ' /(proc|sys) ' /proc/mounts)"
lspci -n -s 00:05.0
lspci -n -s 00:06.0
insmod /opt/mydrv/uio.ko && insmod /opt/mydrv/uio_pci_generic.ko && echo "insmod: ok"
echo "1b36 0005" > /sys/bus/pci/drivers/uio_pci_generic/new_id
ls /sys/bus/pci/drivers/uio_pci_generic/ | grep -q 0000:00:05.0 && echo "bound: 0000:00:05.0"
poweroff
CMDS
rc=$?
set -e
C=$(tr -d '\r' <"$LOG")
check qemu-exit "$rc" "status $rc (log: $LOG)"
grep -q 'vfu-guest: ready' <<<"$C"; check shell-started $? "no 'vfu-guest: ready' banner"
grep -q '^mounts: 2$' <<<"$C"; check proc-and-sys-mounted $? "$(grep '^mounts:' <<<"$C")"
grep -qE '^00:05\.0 ff00: 1b36:0005' <<<"$C"; check lspci-device-1 $? "no 00:05.0 1b36:0005 in lspci -n"
grep -qE '^00:06\.0 0880: 1b36:0011' <<<"$C"; check lspci-device-2 $? "no 00:06.0 1b36:0011 in lspci -n"
grep -q '^insmod: ok' <<<"$C"; check own-module-loads $? "insmod from --guest-files failed"
grep -q '^bound: 0000:00:05.0' <<<"$C"; check own-module-binds $? "the module did not bind to 00:05.0"
[ $FAILED -eq 0 ] || { echo "guest console ($LOG):"; sed 's/^/  guest: /' <<<"$C" | tail -40; }
echo "launcher: one boot in $((SECONDS - T0))s" >&2
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
