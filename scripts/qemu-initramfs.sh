#!/bin/bash
# qemu-initramfs.sh - build this checkout's guest initramfs ($GUEST_DIR/initramfs.cpio.gz)
# from the shared QEMU root: busybox, lspci/setpci with their libraries, pci.ids, the
# uio modules and scripts/guest/*. Needs no root. Rebuilt only when an input changed:
# the hash covers the contents (never the paths) of scripts/guest/*, the modules, the
# binaries and libraries copied, and this script.
#
# Usage: scripts/qemu-initramfs.sh [--force]
# Environment: QEMU_ROOT, GUEST_DIR (see scripts/qemu-env.sh)
set -euo pipefail
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/qemu-env.sh
. "$SCRIPT_DIR/qemu-env.sh"
log() { printf '[qemu-initramfs %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
FORCE=0
[ "${1:-}" = --force ] && FORCE=1

qemu_root_ready || die "the QEMU root $QEMU_ROOT is not ready: run scripts/qemu-setup.sh (as root) first"
GUEST_SRC="$SCRIPT_DIR/guest"
[ -f "$GUEST_SRC/init" ] && [ -f "$GUEST_SRC/vfu-guest-test" ] || die "missing $GUEST_SRC/init or $GUEST_SRC/vfu-guest-test"
LDSO="$QEMU_ROOT/lib64/ld-linux-x86-64.so.2"
LIBPATH="$QEMU_ROOT/usr/lib/x86_64-linux-gnu:$QEMU_ROOT/lib/x86_64-linux-gnu"
BINS=("$QEMU_ROOT/usr/bin/busybox" "$QEMU_ROOT/usr/bin/lspci" "$QEMU_ROOT/usr/bin/setpci")
MODULES=("$KERNEL_DIR/modules/uio.ko" "$KERNEL_DIR/modules/uio_pci_generic.ko")
# libraries of lspci/setpci, resolved by the root's own loader (no chroot needed)
LIBS=$(for b in lspci setpci; do "$LDSO" --library-path "$LIBPATH" --list "$QEMU_ROOT/usr/bin/$b" || exit 1; done \
       | awk '/=>/ {print $3}' | sort -u) || die "cannot list the libraries of lspci/setpci"
case "$LIBS" in *"$QEMU_ROOT"/*) ;; *) die "library paths of lspci/setpci do not point into $QEMU_ROOT: $LIBS" ;; esac

# name + content of the guest files (relative names), content of everything copied.
HASH=$( { for f in "$GUEST_SRC"/*; do echo "guest/$(basename "$f")"; sha256sum < "$f"; done
          for f in "${BINS[@]}" "${MODULES[@]}" $LIBS "$LDSO" "$QEMU_ROOT/usr/share/misc/pci.ids"; do
            [ -e "$f" ] && sha256sum < "$f" || echo "absent"; done
          sha256sum < "$SCRIPT_DIR/qemu-initramfs.sh"; } | sha256sum | cut -d' ' -f1)
if [ "$FORCE" = 0 ] && [ -s "$GUEST_DIR/initramfs.cpio.gz" ] && [ "$(cat "$GUEST_DIR/initramfs.inputs" 2>/dev/null)" = "$HASH" ]; then
  log "initramfs: up to date ($GUEST_DIR/initramfs.cpio.gz)"
  exit 0
fi
log "building $GUEST_DIR/initramfs.cpio.gz"
mkdir -p "$GUEST_DIR"
IR=$(mktemp -d "$GUEST_DIR/initramfs-root.XXXXXX")
trap 'rm -rf "$IR"' EXIT
mkdir -p "$IR"/{bin,sbin,proc,sys,dev,tmp,run,root,lib64,lib/x86_64-linux-gnu,lib/modules,usr/share/misc,etc}
cp "$QEMU_ROOT/usr/bin/busybox" "$IR/bin/busybox"
for a in $("$IR/bin/busybox" --list); do
  [ "$a" = busybox ] || ln -sf busybox "$IR/bin/$a"
done
for b in lspci setpci; do rm -f "$IR/bin/$b"; cp -L "$QEMU_ROOT/usr/bin/$b" "$IR/bin/$b"; done
for lib in $LIBS; do cp -L "$lib" "$IR/lib/x86_64-linux-gnu/"; done
cp -L "$LDSO" "$IR/lib64/"
if [ -f "$QEMU_ROOT/usr/share/misc/pci.ids" ]; then cp -L "$QEMU_ROOT/usr/share/misc/pci.ids" "$IR/usr/share/misc/"
else log "warning: no pci.ids in the root; lspci will show numbers only"; fi
cp "${MODULES[@]}" "$IR/lib/modules/"
install -m 755 "$GUEST_SRC/init" "$IR/init"
for f in "$GUEST_SRC"/*; do [ "$(basename "$f")" = init ] || install -m 755 "$f" "$IR/bin/$(basename "$f")"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$IR/etc/passwd"
(cd "$IR" && find . | LC_ALL=C sort | "$IR/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -6 > "$GUEST_DIR/initramfs.cpio.gz.tmp"
mv "$GUEST_DIR/initramfs.cpio.gz.tmp" "$GUEST_DIR/initramfs.cpio.gz"
echo "$HASH" > "$GUEST_DIR/initramfs.inputs"
rm -f "$GUEST_DIR/.vfu-smoke-ok"
sz=$(stat -c %s "$GUEST_DIR/initramfs.cpio.gz")
# QEMU loads the initrd just below the top of RAM; the DMA test reserves 0x1f000000 (496 MiB)
[ "$sz" -lt $((12 * 1024 * 1024)) ] || log "WARNING: initramfs is $((sz / 1048576)) MiB; it may overlap the DMA window at 496 MiB"
log "initramfs: built ($(du -h "$GUEST_DIR/initramfs.cpio.gz" | cut -f1))"
