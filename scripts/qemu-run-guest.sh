#!/bin/bash
# qemu-run-guest.sh SOCKET [EXTRA KERNEL ARGS...]
#
# Boots the test guest (built by scripts/qemu-setup.sh) under QEMU's TCG with one
# vfio-user-pci device at 00:05.0, connected to the vfio-user server listening on
# the UNIX socket SOCKET (a host path).  Prints the guest console on stdout and
# exits with QEMU's status; 124 = timed out (killed), 134 = QEMU aborted.
#
# The guest kernel command line always has "console=ttyS0 panic=-1 quiet" and
# memmap=64K$0x1f000000 (a reserved physical window for the DMA test); EXTRA
# KERNEL ARGS are appended (e.g. vfu_rd=0:0x100 vfu_db=0:0x0, see
# scripts/guest/vfu-guest-test).  QEMU is never run with KVM.
#
# Environment:
#   QEMU_ROOT (/var/tmp/vfu-qemu-root)  GUEST_DIR (.build/vfu-guest)  KERNEL (see qemu-env.sh)
#   BOOT_TIMEOUT (60)       seconds before QEMU is killed
#   GUEST_MEM (512M)        guest RAM (the DMA window assumes 512M)
#   GUEST_RAM (memfd)       memfd: guest RAM is a shared memfd, so DMA_MAP carries fds and
#                           the server mmaps guest memory; default: QEMU's default RAM
#                           (no fd), so every device DMA is a DMA_READ/DMA_WRITE message
#   RUN_MODE (direct)       direct: run the root's QEMU on the host through the root's
#                           own ld.so (no chroot, no mounts);  chroot: run it inside
#                           $QEMU_ROOT with the socket's directory bind-mounted (root only)
#   VFU_TRACE=FILE          write QEMU's vfio_user_* trace events to FILE
#   VFU_DEVICE_PROPS        extra JSON members for the device, e.g.
#                           ',"x-no-posted-writes":true,"x-msg-timeout":20000'
#   QEMU_EXTRA              extra QEMU arguments (word-split)
#   NO_DEVICE=1             boot without the vfio-user device (SOCKET is ignored)
#   EXTRA_SOCKETS           more vfio-user devices: space-separated socket paths, placed at
#                           06.0, 07.0, ... (RUN_MODE=direct only)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/qemu-env.sh
. "$SCRIPT_DIR/qemu-env.sh"
BOOT_TIMEOUT=${BOOT_TIMEOUT:-60}
GUEST_MEM=${GUEST_MEM:-512M}
RUN_MODE=${RUN_MODE:-direct}
GUEST_RAM=${GUEST_RAM:-memfd}
case "$GUEST_RAM" in
  memfd)   MEM_ARGS=(-machine q35,memory-backend=mem -object "memory-backend-memfd,id=mem,size=$GUEST_MEM,share=on") ;;
  default) MEM_ARGS=(-machine q35) ;;
  *) echo "qemu-run-guest.sh: GUEST_RAM must be memfd or default" >&2; exit 2 ;;
esac

die() { echo "qemu-run-guest.sh: $*" >&2; exit 2; }
[ $# -ge 1 ] || die "usage: qemu-run-guest.sh SOCKET [extra kernel args...]"
SOCK=$1; shift
APPEND_EXTRA="$*"

[ -x "$QEMU_ROOT/usr/bin/qemu-system-x86_64" ] || die "no QEMU in $QEMU_ROOT: run scripts/qemu-setup.sh first"
[ -s "$KERNEL" ] || die "no guest kernel $KERNEL: run scripts/qemu-setup.sh first"
[ -s "$GUEST_DIR/initramfs.cpio.gz" ] || die "no initramfs in $GUEST_DIR: run scripts/qemu-setup.sh (or scripts/qemu-initramfs.sh) first"

if [ "${NO_DEVICE:-0}" != 1 ]; then
  SOCK=$(realpath -m "$SOCK")
  for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
  [ -S "$SOCK" ] || die "$SOCK is not a socket (is the server running?)"
fi

CLEANUP_CMDS=()
cleanup() { local c; for c in "${CLEANUP_CMDS[@]}"; do eval "$c" || true; done; }
trap cleanup EXIT

case "$RUN_MODE" in
  direct)
    CSOCK=$SOCK
    GUEST_KERNEL=$KERNEL
    GUEST_INITRD=$GUEST_DIR/initramfs.cpio.gz
    QEMU=("${QEMU_CMD[@]}")
    TRACE_FILE=${VFU_TRACE:-}
    ;;
  chroot)
    [ "$(id -u)" = 0 ] || die "RUN_MODE=chroot needs root (use RUN_MODE=direct)"
    MNT=/run/vfu/$$
    mkdir -p "$QEMU_ROOT$MNT" "$QEMU_ROOT/guest"
    cp "$KERNEL" "$QEMU_ROOT/guest/vmlinuz"; cp "$GUEST_DIR/initramfs.cpio.gz" "$QEMU_ROOT/guest/"
    if ! mountpoint -q "$QEMU_ROOT/proc"; then
      mount -t proc proc "$QEMU_ROOT/proc"; CLEANUP_CMDS+=("umount '$QEMU_ROOT/proc' || umount -l '$QEMU_ROOT/proc'")
    fi
    if [ "${NO_DEVICE:-0}" != 1 ]; then
      mount --bind "$(dirname "$SOCK")" "$QEMU_ROOT$MNT"
      CLEANUP_CMDS=("umount '$QEMU_ROOT$MNT' || umount -l '$QEMU_ROOT$MNT'" "${CLEANUP_CMDS[@]}")
    fi
    CLEANUP_CMDS+=("rmdir '$QEMU_ROOT$MNT'")
    CSOCK="$MNT/$(basename "$SOCK")"
    GUEST_KERNEL=/guest/vmlinuz
    GUEST_INITRD=/guest/initramfs.cpio.gz
    QEMU=(chroot "$QEMU_ROOT" /usr/bin/qemu-system-x86_64)
    TRACE_FILE=${VFU_TRACE:+/tmp/vfu-trace.$$.log}
    [ -n "${VFU_TRACE:-}" ] && CLEANUP_CMDS+=("mv '$QEMU_ROOT/tmp/vfu-trace.$$.log' '$VFU_TRACE' 2>/dev/null")
    ;;
  *) die "RUN_MODE must be direct or chroot" ;;
esac

DEV_ARGS=()
if [ "${NO_DEVICE:-0}" != 1 ]; then
  # only the JSON form of -device parses the nested socket address
  CSOCK_JSON=${CSOCK//\\/\\\\}; CSOCK_JSON=${CSOCK_JSON//\"/\\\"}
  DEV_ARGS=(-device "{\"driver\":\"vfio-user-pci\",\"id\":\"vfu0\",\"socket\":{\"type\":\"unix\",\"path\":\"$CSOCK_JSON\"},\"addr\":\"05.0\"${VFU_DEVICE_PROPS:-}}")
fi
k=6
for extra in ${EXTRA_SOCKETS:-}; do
  [ "$RUN_MODE" = direct ] || die "EXTRA_SOCKETS needs RUN_MODE=direct"
  extra=$(realpath -m "$extra"); extra=${extra//\\/\\\\}; extra=${extra//\"/\\\"}
  DEV_ARGS+=(-device "{\"driver\":\"vfio-user-pci\",\"id\":\"vfu$k\",\"socket\":{\"type\":\"unix\",\"path\":\"$extra\"},\"addr\":\"0$k.0\"}")
  k=$((k + 1))
done
TRACE_ARGS=()
[ -n "${TRACE_FILE:-}" ] && TRACE_ARGS=(-trace 'vfio_user_*' -D "$TRACE_FILE")

# memmap=64K$0x1f000000: the '$' is literal here (single quotes); QEMU passes -append as is.
# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can
# fail ("IO-APIC + timer doesn't work!") and panic the guest before it starts.
APPEND='console=ttyS0 panic=-1 quiet no_timer_check memmap=64K$0x1f000000'
[ -n "$APPEND_EXTRA" ] && APPEND="$APPEND $APPEND_EXTRA"

start=$(date +%s.%N)
set +e
# shellcheck disable=SC2086
timeout -k 5 "$BOOT_TIMEOUT" "${QEMU[@]}" \
  -nographic -no-reboot -accel tcg -smp 1 -m "$GUEST_MEM" \
  "${MEM_ARGS[@]}" \
  -vga none -net none \
  -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "$APPEND" \
  "${DEV_ARGS[@]}" "${TRACE_ARGS[@]}" ${QEMU_EXTRA:-} </dev/null
rc=$?
set -e
end=$(date +%s.%N)
secs=$(awk "BEGIN{printf \"%.1f\", $end-$start}")
echo
case $rc in
  0)   echo "qemu-run-guest.sh: qemu exited normally after ${secs}s" >&2 ;;
  124|137) echo "qemu-run-guest.sh: TIMEOUT: qemu killed after ${BOOT_TIMEOUT}s (status $rc)" >&2; rc=124 ;;
  134) echo "qemu-run-guest.sh: QEMU ABORTED (status 134, SIGABRT) after ${secs}s" >&2 ;;
  *)   echo "qemu-run-guest.sh: qemu exit status $rc after ${secs}s" >&2 ;;
esac
exit $rc
