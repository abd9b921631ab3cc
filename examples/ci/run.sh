#!/bin/bash
# examples/ci/run.sh - a CI job that tests a guest-side program against an emulated
# PCI device under QEMU: `vfu serve SPEC` emulates the device, QEMU's vfio-user-pci
# puts it into a small Linux guest, the program (guest-test.c, built static on the
# host) runs there and its exit status is the job's.
#
# Needs: swift-vfio-user built (swift build) with its QEMU root set up (as root,
# once: scripts/qemu-setup.sh), and a C compiler (cc, or clang from the Swift toolchain).
#
# Environment: VFIO_USER (the swift-vfio-user checkout; default: two folders up),
# SPEC (default $VFIO_USER/specs/default.json), CC, TIMEOUT (seconds, default 120).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VFIO_USER=${VFIO_USER:-$(cd "$HERE/../.." && pwd)}
SPEC=${SPEC:-$VFIO_USER/specs/default.json}
CC=${CC:-$(command -v cc || command -v clang || echo cc)}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/vfu-ci-example.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# The guest has no compiler and its own libc: a static binary runs there as is.
mkdir -p "$WORK/files/opt"
"$CC" -static -O2 -Wall -Werror -o "$WORK/files/opt/guest-test" "$HERE/guest-test.c"

# Serve the device, boot the guest with the program in it, run it, power off:
# vfu-qemu exits with the program's status.
"$VFIO_USER/scripts/vfu-qemu" --device "$SPEC" --guest-files "$WORK/files" \
  --timeout "${TIMEOUT:-120}" --run '/opt/guest-test 0000:00:05.0'
