#!/bin/bash
# qemu-setup.sh - prepare everything needed to run swift-vfio-user's server under
# QEMU's vfio-user client (vfio-user-pci), from Debian packages only.
#
# Builds (paths: scripts/qemu-env.sh):
#   $QEMU_ROOT   (shared, default /var/tmp/vfu-qemu-root) Debian trixie minbase root
#                (debootstrap) with qemu-system-x86 11.x from trixie-backports (Debian
#                12's own QEMU 7.2 has no vfio-user-pci), busybox-static, pciutils.
#                Nothing from trixie is ever installed into the host.
#   $QEMU_ROOT/vfu-kernel/vmlinuz       Debian trixie kernel (from linux-image-amd64's .deb)
#   $QEMU_ROOT/vfu-kernel/modules/*.ko  uio.ko + uio_pci_generic.ko from the same .deb
#   $GUEST_DIR/initramfs.cpio.gz  (per checkout, default .build/vfu-guest) busybox,
#                lspci/setpci + libs, pci.ids, the modules and scripts/guest/*
#                (scripts/qemu-initramfs.sh; no root needed for that step)
#
# Idempotent: every stage leaves a marker when it is complete; re-running skips
# finished stages and redoes half-finished ones. Two checkouts setting up at once
# wait for each other ($QEMU_ROOT.lock). The initramfs is rebuilt only when its
# inputs (the contents of scripts/guest/*, busybox, ...) changed.
#
# Usage: scripts/qemu-setup.sh [--initramfs-only] [--no-smoke]
#   --initramfs-only  only (re)build the initramfs if stale (needs the earlier stages)
#   --no-smoke        skip the guest smoke boot (also SKIP_SMOKE=1)
#
# Environment:
#   QEMU_ROOT (/var/tmp/vfu-qemu-root)  GUEST_DIR (.build/vfu-guest)  LOG_DIR (.build/vfu-logs)
#   QEMU_CACHE (/var/tmp/vfu-qemu-cache)  debootstrap's .deb cache (speeds up retries)
#   MIRROR (http://deb.debian.org/debian)  SUITE (trixie)  BPO (trixie-backports)
#   RETRIES (3)  attempts for debootstrap / apt-get inside the root
#   FORCE=1      wipe $QEMU_ROOT and $GUEST_DIR and start from scratch (every checkout
#                sharing the root must then wait for it to be rebuilt)
#
# Needs root (debootstrap, chroot; run by a user, it asks sudo), an x86_64 Debian/Ubuntu
# host, and access to $MIRROR.
# Works non-interactively (CI=true, no stdin).
set -euo pipefail
exec </dev/null

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/qemu-env.sh
. "$SCRIPT_DIR/qemu-env.sh"
QEMU_CACHE=${QEMU_CACHE:-/var/tmp/vfu-qemu-cache}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-trixie}
BPO=${BPO:-${SUITE}-backports}
RETRIES=${RETRIES:-3}
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

INITRAMFS_ONLY=0
for a in "$@"; do
  case "$a" in
    --initramfs-only) INITRAMFS_ONLY=1 ;;
    --no-smoke) SKIP_SMOKE=1 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "qemu-setup.sh: unknown argument '$a' (try --help)" >&2; exit 2 ;;
  esac
done

# Root is needed for debootstrap and chroot; a user with sudo is asked for it. Files
# made for the user's checkout (logs, initramfs) are given back to the user at the end.
if [ "$(id -u)" != 0 ] && [ "$INITRAMFS_ONLY" = 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "qemu-setup.sh: must run as root (debootstrap, chroot), and sudo is not installed" >&2; exit 1; }
  echo "qemu-setup.sh: needs root (debootstrap, chroot): running it under sudo" >&2
  exec sudo --preserve-env=QEMU_ROOT,GUEST_DIR,LOG_DIR,KERNEL,QEMU_CACHE,MIRROR,SUITE,BPO,RETRIES,FORCE,SKIP_SMOKE,SMOKE_TIMEOUT \
    "$SCRIPT_DIR/qemu-setup.sh" "$@"
fi
give_back() {
  [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ] || return 0
  local d
  for d in "$LOG_DIR" "$GUEST_DIR"; do [ -e "$d" ] && chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$d"; done
  # .build itself, if this run created it (swift build must still be able to write there)
  [ "$BUILD_EXISTED" = 1 ] || [ ! -d "$VFU_REPO/.build" ] || chown "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$VFU_REPO/.build"
}
BUILD_EXISTED=0
[ -d "$VFU_REPO/.build" ] && BUILD_EXISTED=1

T0=$SECONDS
STEP_T=$SECONDS
log()  { printf '[qemu-setup %s +%3ss] %s\n' "$(date +%T)" "$((SECONDS - T0))" "$*" >&2; }
die()  { log "ERROR: $*"; exit 1; }
step_begin() { STEP_T=$SECONDS; log "==> $*"; }
step_end()   { log "    done in $((SECONDS - STEP_T))s"; }

[ "$(uname -m)" = x86_64 ] || die "x86_64 host expected (got $(uname -m))"
case "$QEMU_ROOT" in /|/usr|/var|/var/tmp|/tmp|"") die "refusing QEMU_ROOT=$QEMU_ROOT" ;; esac
case "$GUEST_DIR" in /|/usr|/var|/var/tmp|/tmp|"") die "refusing GUEST_DIR=$GUEST_DIR" ;; esac
QEMU_ROOT=$(realpath -m "$QEMU_ROOT")
GUEST_DIR=$(realpath -m "$GUEST_DIR")
KERNEL_DIR=$QEMU_ROOT/vfu-kernel
mkdir -p "$LOG_DIR"

M_DEBOOTSTRAP="$QEMU_ROOT/.vfu-stage-debootstrap"
M_QEMU="$QEMU_ROOT/.vfu-stage-qemu"
M_KERNEL="$KERNEL_DIR/.vfu-stage-kernel"
# Before the kernel moved into the shared root it lived here; a complete one is adopted.
LEGACY_GUEST=/var/tmp/vfu-guest

# ------------------------------------------------------------------ helpers
MOUNTED_PROC=0
cleanup() {
  if [ "$MOUNTED_PROC" = 1 ]; then umount "$QEMU_ROOT/proc" 2>/dev/null || umount -l "$QEMU_ROOT/proc" 2>/dev/null || true; fi
  give_back || true
}
trap cleanup EXIT

mount_proc() {
  if ! mountpoint -q "$QEMU_ROOT/proc"; then mount -t proc proc "$QEMU_ROOT/proc"; MOUNTED_PROC=1; fi
}

# unmount everything below $QEMU_ROOT (deepest first); refuse to continue otherwise
umount_all() {
  local m
  for m in $(findmnt -rn -o TARGET | grep -E "^$QEMU_ROOT(/|\$)" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
  if findmnt -rn -o TARGET | grep -qE "^$QEMU_ROOT(/|\$)"; then die "mounts remain under $QEMU_ROOT"; fi
  MOUNTED_PROC=0
}

wipe_root() { umount_all; rm -rf --one-file-system "$QEMU_ROOT"; }

in_root() {
  chroot "$QEMU_ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"
}

# retry N CMD...: run CMD up to N times with a growing pause
retry() {
  local n=$1 i; shift
  for ((i = 1; i <= n; i++)); do
    if "$@"; then return 0; fi
    [ "$i" -lt "$n" ] && { log "    attempt $i/$n failed; retrying in $((i * 5))s"; sleep $((i * 5)); }
  done
  return 1
}

APT_OPTS=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
          -o DPkg::Lock::Timeout=300 --no-install-recommends)

# QEMU of the root, run on the host through the root's own dynamic loader (no chroot)
qemu_direct() { "${QEMU_CMD[@]}" "$@"; }

if [ "$INITRAMFS_ONLY" = 0 ] && [ "$(id -u)" = 0 ]; then
  # One setup of the shared root at a time; a second checkout waits, then finds it done.
  mkdir -p "$(dirname "$QEMU_ROOT")"
  exec 9>"$QEMU_ROOT.lock"
  flock -n 9 || { log "another setup holds $QEMU_ROOT.lock; waiting"; flock 9; }
fi
if [ "${FORCE:-0}" = 1 ] && [ "$INITRAMFS_ONLY" = 0 ]; then
  [ "$(id -u)" = 0 ] || die "must run as root"
  log "FORCE=1: wiping $QEMU_ROOT and $GUEST_DIR"
  [ -d "$QEMU_ROOT" ] && wipe_root
  rm -rf --one-file-system "$GUEST_DIR"
fi

if [ "$INITRAMFS_ONLY" = 0 ]; then
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap/chroot)"

# ------------------------------------------------------- 0. host tools
need=()
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
command -v timeout >/dev/null 2>&1 || need+=(coreutils)
if [ ${#need[@]} -gt 0 ]; then
  step_begin "installing host tools from the host's own repositories: ${need[*]}"
  retry "$RETRIES" apt-get -q -o DPkg::Lock::Timeout=300 update >"$LOG_DIR/qemu-host-apt.log" 2>&1 || true
  retry "$RETRIES" apt-get install "${APT_OPTS[@]}" "${need[@]}" >>"$LOG_DIR/qemu-host-apt.log" 2>&1 \
    || { tail -20 "$LOG_DIR/qemu-host-apt.log" >&2; die "cannot install ${need[*]} on the host (log: $LOG_DIR/qemu-host-apt.log)"; }
  step_end
fi
DEBOOTSTRAP=$(command -v debootstrap || echo /usr/sbin/debootstrap)
[ -e "/usr/share/debootstrap/scripts/$SUITE" ] || die "host debootstrap has no script for '$SUITE' (too old?)"

# ------------------------------------------------------- 1. debootstrap
if [ ! -e "$M_DEBOOTSTRAP" ]; then
  step_begin "debootstrap --variant=minbase $SUITE $QEMU_ROOT $MIRROR (log: $LOG_DIR/qemu-debootstrap.log)"
  mkdir -p "$QEMU_CACHE"
  : >"$LOG_DIR/qemu-debootstrap.log"
  do_debootstrap() {
    if [ -e "$QEMU_ROOT" ]; then log "    removing half-finished $QEMU_ROOT"; wipe_root; fi
    "$DEBOOTSTRAP" --variant=minbase --cache-dir="$QEMU_CACHE" "$SUITE" "$QEMU_ROOT" "$MIRROR" \
      >>"$LOG_DIR/qemu-debootstrap.log" 2>&1
  }
  retry "$RETRIES" do_debootstrap \
    || { tail -20 "$LOG_DIR/qemu-debootstrap.log" >&2; die "debootstrap failed $RETRIES times (log: $LOG_DIR/qemu-debootstrap.log)"; }
  touch "$M_DEBOOTSTRAP"
  step_end
else
  log "debootstrap: already done ($M_DEBOOTSTRAP)"
fi

# ------------------------------------------------------- 2. QEMU from backports
if [ ! -e "$M_QEMU" ]; then
  step_begin "installing qemu-system-x86 from $BPO + busybox-static pciutils pci.ids in the root (log: $LOG_DIR/qemu-apt.log)"
  echo "deb $MIRROR $SUITE main" > "$QEMU_ROOT/etc/apt/sources.list"
  echo "deb $MIRROR $BPO main" > "$QEMU_ROOT/etc/apt/sources.list.d/backports.list"
  printf '%s\n' 'Acquire::Retries "5";' 'Acquire::http::Timeout "30";' 'Acquire::Check-Valid-Until "false";' \
    'APT::Install-Recommends "false";' > "$QEMU_ROOT/etc/apt/apt.conf.d/99vfu"
  cp -L /etc/resolv.conf "$QEMU_ROOT/etc/resolv.conf" 2>/dev/null || true
  mount_proc
  : >"$LOG_DIR/qemu-apt.log"
  # a previous run may have been interrupted in the middle of dpkg
  in_root dpkg --configure -a >>"$LOG_DIR/qemu-apt.log" 2>&1 || true
  retry "$RETRIES" in_root apt-get -q update >>"$LOG_DIR/qemu-apt.log" 2>&1 \
    || { tail -20 "$LOG_DIR/qemu-apt.log" >&2; die "apt-get update in the root failed"; }
  apt_install() {
    in_root apt-get install "${APT_OPTS[@]}" "$@" >>"$LOG_DIR/qemu-apt.log" 2>&1 && return 0
    in_root dpkg --configure -a >>"$LOG_DIR/qemu-apt.log" 2>&1 || true
    in_root apt-get install "${APT_OPTS[@]}" -f >>"$LOG_DIR/qemu-apt.log" 2>&1 || true
    return 1
  }
  retry "$RETRIES" apt_install -t "$BPO" qemu-system-x86 \
    || { tail -20 "$LOG_DIR/qemu-apt.log" >&2; die "installing qemu-system-x86 from $BPO failed"; }
  retry "$RETRIES" apt_install busybox-static pciutils pci.ids \
    || { tail -20 "$LOG_DIR/qemu-apt.log" >&2; die "installing busybox-static pciutils pci.ids failed"; }
  in_root apt-get clean >/dev/null 2>&1 || true
  touch "$M_QEMU"
  step_end
else
  log "qemu install: already done ($M_QEMU)"
fi

# ------------------------------------------------------- QEMU sanity (always)
QVER=$(qemu_direct --version 2>&1 | head -1) || die "QEMU from $QEMU_ROOT does not run on this host: $QVER"
log "QEMU: $QVER ($(in_root dpkg-query -W -f '${Version}' qemu-system-x86 2>/dev/null || echo '?'))"
echo "$QVER"
if ! qemu_direct -device help 2>/dev/null | grep -q '"vfio-user-pci"'; then
  die "this QEMU ($QVER) has no vfio-user-pci device: it needs QEMU >= 10.1 (trixie-backports). Remove $M_QEMU and re-run, or check BPO=$BPO"
fi
log "QEMU has vfio-user-pci"

# ------------------------------------------------------- 3. guest kernel + modules
kernel_complete() {  # kernel_complete DIR
  [ -e "$1/.vfu-stage-kernel" ] && [ -s "$1/vmlinuz" ] && [ -s "$1/modules/uio.ko" ] && [ -s "$1/modules/uio_pci_generic.ko" ]
}
if ! kernel_complete "$KERNEL_DIR" && kernel_complete "$LEGACY_GUEST"; then
  log "guest kernel: adopting the one in $LEGACY_GUEST (the old, shared GUEST_DIR)"
  rm -rf "$KERNEL_DIR.tmp"; mkdir -p "$KERNEL_DIR.tmp/modules"
  cp "$LEGACY_GUEST/vmlinuz" "$LEGACY_GUEST/kernel.version" "$KERNEL_DIR.tmp/"
  cp "$LEGACY_GUEST/kernel.config" "$KERNEL_DIR.tmp/" 2>/dev/null || true
  cp "$LEGACY_GUEST"/modules/*.ko "$KERNEL_DIR.tmp/modules/"
  touch "$KERNEL_DIR.tmp/.vfu-stage-kernel"
  rm -rf "$KERNEL_DIR"; mv "$KERNEL_DIR.tmp" "$KERNEL_DIR"
fi
if ! kernel_complete "$KERNEL_DIR"; then
  step_begin "guest kernel: downloading Debian's linux-image .deb (nothing is installed)"
  rm -f "$M_KERNEL"
  mkdir -p "$KERNEL_DIR"
  KPKG=$(in_root apt-cache depends linux-image-amd64 2>/dev/null \
         | sed -n 's/.*Depends: \(linux-image-[0-9][^ ]*\).*/\1/p' | head -1)
  [ -n "$KPKG" ] || die "cannot resolve the kernel package behind linux-image-amd64 in $SUITE"
  log "    kernel package: $KPKG"
  KD="$QEMU_ROOT/tmp/vfu-kdeb"
  rm -rf "$KD"; mkdir -p "$KD"; chmod 777 "$KD"
  retry "$RETRIES" in_root sh -c "cd /tmp/vfu-kdeb && apt-get -q download $KPKG" >>"$LOG_DIR/qemu-apt.log" 2>&1 \
    || { tail -20 "$LOG_DIR/qemu-apt.log" >&2; die "apt-get download $KPKG failed"; }
  DEB=$(ls "$KD"/*.deb | head -1)
  X="$KERNEL_DIR/kx"; rm -rf "$X"; mkdir -p "$X"
  dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$X" --wildcards \
      './boot/vmlinuz-*' './boot/config-*' '*/kernel/drivers/uio/uio.ko*' '*/kernel/drivers/uio/uio_pci_generic.ko*' \
    || die "extracting vmlinuz/uio modules from $DEB failed"
  mkdir -p "$KERNEL_DIR/modules"
  for m in uio uio_pci_generic; do
    f=$(find "$X" -name "$m.ko*" | head -1)
    [ -n "$f" ] || die "$m.ko not found in $DEB"
    case "$f" in
      *.ko.xz)  xz -dc "$f" > "$KERNEL_DIR/modules/$m.ko" ;;
      *.ko.zst) zstd -dc "$f" > "$KERNEL_DIR/modules/$m.ko" ;;
      *.ko.gz)  gzip -dc "$f" > "$KERNEL_DIR/modules/$m.ko" ;;
      *.ko)     cp "$f" "$KERNEL_DIR/modules/$m.ko" ;;
    esac
  done
  cp "$X"/boot/config-* "$KERNEL_DIR/kernel.config"
  basename "$(ls "$X"/boot/vmlinuz-*)" | sed 's/^vmlinuz-//' > "$KERNEL_DIR/kernel.version"
  mv "$X"/boot/vmlinuz-* "$KERNEL_DIR/vmlinuz.tmp" && mv "$KERNEL_DIR/vmlinuz.tmp" "$KERNEL_DIR/vmlinuz"
  rm -rf "$X" "$KD"
  touch "$M_KERNEL"
  step_end
else
  log "guest kernel: already done ($(cat "$KERNEL_DIR/kernel.version" 2>/dev/null))"
fi
flock -u 9
fi  # INITRAMFS_ONLY

[ -e "$M_QEMU" ] && [ -e "$M_KERNEL" ] || die "QEMU root / guest kernel missing: run scripts/qemu-setup.sh (without --initramfs-only) first"

# ------------------------------------------------------- 4. initramfs (per checkout)
"$SCRIPT_DIR/qemu-initramfs.sh" || die "building the initramfs failed"

# ------------------------------------------------------- 5. smoke boot (no device)
if [ "${SKIP_SMOKE:-0}" != 1 ] && [ ! -e "$GUEST_DIR/.vfu-smoke-ok" ]; then
  step_begin "smoke test: booting the guest under TCG without a vfio-user device"
  set +e
  timeout -k 5 "${SMOKE_TIMEOUT:-120}" "${QEMU_CMD[@]}" \
    -nographic -no-reboot -accel tcg -m 512M -machine q35,memory-backend=mem \
    -object memory-backend-memfd,id=mem,size=512M,share=on -vga none -net none \
    -kernel "$KERNEL_DIR/vmlinuz" -initrd "$GUEST_DIR/initramfs.cpio.gz" \
    -append 'console=ttyS0 panic=-1 quiet no_timer_check memmap=64K$0x1f000000 vfu_smoke=1' >"$LOG_DIR/qemu-smoke.log" 2>&1
  rc=$?
  set -e
  if [ $rc -ne 0 ] || ! grep -q '^E2E done' <(tr -d '\r' <"$LOG_DIR/qemu-smoke.log"); then
    tail -30 "$LOG_DIR/qemu-smoke.log" >&2
    die "guest smoke boot failed (qemu status $rc; log $LOG_DIR/qemu-smoke.log)"
  fi
  touch "$GUEST_DIR/.vfu-smoke-ok"
  step_end
fi

log "ready in $((SECONDS - T0))s: QEMU_ROOT=$QEMU_ROOT ($(du -shx "$QEMU_ROOT" 2>/dev/null | cut -f1)), GUEST_DIR=$GUEST_DIR (kernel $(cat "$KERNEL_DIR/kernel.version"), initramfs $(du -h "$GUEST_DIR/initramfs.cpio.gz" | cut -f1))"
