#!/bin/bash
# build.sh - builds mydrv.ko against the guest's kernel, inside the QEMU root (which
# has Debian trixie's packages; the headers and gcc are installed there once).
# Needs root (chroot). Then:
#   mkdir -p files/opt && cp mydrv.ko files/opt/
#   scripts/vfu-qemu --run 'insmod /opt/mydrv.ko && dmesg | grep mydrv' \
#       --guest-files files --device specs/default.json
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/../../scripts/qemu-env.sh"
R=$QEMU_ROOT
KV=$(cat "$R/vfu-kernel/kernel.version")
[ "$(id -u)" = 0 ] || { echo "build.sh: needs root (chroot into $R)" >&2; exit 1; }
if [ ! -d "$R/usr/src/linux-headers-$KV" ]; then
  mount -t proc proc "$R/proc"
  trap 'umount "$R/proc"' EXIT
  # libdw from backports matches the libelf QEMU's packages brought in
  chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "linux-headers-$KV" gcc make libdw1t64/trixie-backports
  umount "$R/proc"; trap - EXIT
fi
mkdir -p "$R/mnt/mydrv"
mount --bind "$HERE" "$R/mnt/mydrv"
trap 'umount "$R/mnt/mydrv"' EXIT
chroot "$R" make -C "/usr/src/linux-headers-$KV" M=/mnt/mydrv modules
echo "built $HERE/mydrv.ko for $KV"
