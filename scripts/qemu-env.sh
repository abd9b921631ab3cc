# qemu-env.sh - sourced by the QEMU scripts: where things live, defined once.
#
#   QEMU_ROOT  (/var/tmp/vfu-qemu-root)   SHARED by every checkout on the machine, on
#              purpose: it holds only Debian packages (QEMU, busybox, pciutils) and the
#              guest kernel with its modules ($QEMU_ROOT/vfu-kernel), nothing from a
#              checkout, so a fresh clone (CI) reuses it and its setup takes ~1 s.
#              qemu-setup.sh builds it under a lock ($QEMU_ROOT.lock).
#   GUEST_DIR  ($REPO/.build/vfu-guest)   PER CHECKOUT: the test initramfs, built
#              from this checkout's scripts/guest/ (no root needed, ~1 s).
#   LOG_DIR    ($REPO/.build/vfu-logs)    PER CHECKOUT: build, test, setup and e2e logs.
#   KERNEL     ($QEMU_ROOT/vfu-kernel/vmlinuz)  the guest kernel the scripts boot.
# Set any of them to use another place.
VFU_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QEMU_ROOT=${QEMU_ROOT:-/var/tmp/vfu-qemu-root}
GUEST_DIR=${GUEST_DIR:-$VFU_REPO/.build/vfu-guest}
LOG_DIR=${LOG_DIR:-$VFU_REPO/.build/vfu-logs}
KERNEL_DIR=$QEMU_ROOT/vfu-kernel
KERNEL=${KERNEL:-$KERNEL_DIR/vmlinuz}
export QEMU_ROOT GUEST_DIR LOG_DIR KERNEL

# The root's QEMU, run on the host through the root's own dynamic loader: no chroot,
# no mounts, host paths work unchanged. "${QEMU_CMD[@]}" ARGS... runs it.
QEMU_CMD=(env QEMU_MODULE_DIR="$QEMU_ROOT/usr/lib/x86_64-linux-gnu/qemu"
          "$QEMU_ROOT/lib64/ld-linux-x86-64.so.2"
          --library-path "$QEMU_ROOT/usr/lib/x86_64-linux-gnu:$QEMU_ROOT/lib/x86_64-linux-gnu"
          "$QEMU_ROOT/usr/bin/qemu-system-x86_64"
          -L "$QEMU_ROOT/usr/share/seabios" -L "$QEMU_ROOT/usr/share/qemu")

# Whether the shared root is complete (QEMU installed and the kernel extracted).
qemu_root_ready() {
  [ -e "$QEMU_ROOT/.vfu-stage-qemu" ] && [ -e "$KERNEL_DIR/.vfu-stage-kernel" ] \
    && [ -x "$QEMU_ROOT/usr/bin/qemu-system-x86_64" ] && [ -s "$KERNEL_DIR/vmlinuz" ]
}
