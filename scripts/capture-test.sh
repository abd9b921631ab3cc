#!/bin/bash
# capture-test.sh - the proxy, captures and the Wireshark dissector, end to end without
# QEMU: `vfu serve --pcap` behind `vfu proxy --pcap --validate`, driven by
# `vfu conform --disruptive` (every command, error replies, malformed input) and a
# migration to a file and back (DEVICE_FEATURE, MIG_DATA_READ/WRITE); then tshark
# decodes both captures with contrib/wireshark/vfio-user.lua (scripts/capture_check.py).
# Prints PASS/FAIL lines; exit status 0 if everything passed. Needs tshark.
set -euo pipefail
cd "$(dirname "$0")/.."
VFU=${VFU:-.build/debug/vfu}
command -v tshark >/dev/null || { echo "FAIL capture-test: tshark not installed"; exit 1; }
W=$(mktemp -d /tmp/vfu-capture.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$W"; }
trap cleanup EXIT
wait_socket() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "FAIL no socket $1"; exit 1; }

"$VFU" serve specs/migratable-vf.json --socket "$W/s.sock" --log-level warning --pcap "$W/server.pcapng" \
  --snap-length 4096 2>"$W/server.log" & PIDS+=($!)
wait_socket "$W/s.sock"
"$VFU" proxy --listen "$W/p.sock" --connect "$W/s.sock" --pcap "$W/proxy.pcapng" --snap-length 4096 --validate \
  2>"$W/proxy.log" & PIDS+=($!)
wait_socket "$W/p.sock"

FAILED=0
if "$VFU" conform --socket "$W/p.sock" --disruptive >"$W/conform.txt"; then
  echo "PASS conform through the proxy: $(tail -1 "$W/conform.txt")"
else
  echo "FAIL conform through the proxy:"; grep -E '^FAIL' "$W/conform.txt" || tail -3 "$W/conform.txt"; FAILED=1
fi
if "$VFU" migrate --from "$W/p.sock" --to-file "$W/state.bin" --relay --keep-running >/dev/null \
   && "$VFU" migrate --from-file "$W/state.bin" --to "$W/p.sock" >/dev/null; then
  echo "PASS migration to a file and back through the proxy"
else
  echo "FAIL migration through the proxy"; FAILED=1
fi
# Region capability chains (SPARSE_MMAP, TYPE, NVLINK2_SSATGT) come from the NVLink2 variant.
"$VFU" serve specs/nvlink2.json --socket "$W/nv.sock" --log-level error & PIDS+=($!)
wait_socket "$W/nv.sock"
"$VFU" proxy --listen "$W/pn.sock" --connect "$W/nv.sock" --pcap "$W/nvlink2.pcapng" --log-level error & PIDS+=($!)
wait_socket "$W/pn.sock"
"$VFU" inspect --socket "$W/pn.sock" >/dev/null || { echo "FAIL inspect through the proxy"; FAILED=1; }
for p in "${PIDS[@]}"; do kill -TERM "$p"; done
wait; PIDS=()
python3 scripts/capture_check.py "$W/nvlink2.pcapng" \
  --expect 'vfio-user.cap.region_id == 1 && vfio-user.cap.sparse.nr_areas >= 1 && vfio-user.cap.sparse.size > 0' \
  --expect 'vfio-user.cap.region_id == 2 && vfio-user.cap.type.type == 0x800010de' \
  --expect 'vfio-user.cap.nvlink2.tgt' --expect 'vfio-user.region_info.flags.caps' || FAILED=1

# conform sends malformed messages on purpose: those frames must be marked, and
# nothing else (a Lua error is a dissector bug either way).
COMMON=(--expect 'vfio-user.command == 1 && vfio-user.version.max_msg_fds == 16'
        --expect 'vfio-user.command == 4 && vfio-user.flags.type == 1 && vfio-user.device_info.num_regions >= 9'
        --expect 'vfio-user.command == 5 && vfio-user.region.index == 7 && vfio-user.region_info.size == 0x1000'
        --expect 'vfio-user.command == 7 && vfio-user.irq.index == 2 && vfio-user.irq.count > 0'
        --expect 'vfio-user.command == 8 && vfio-user.set_irqs.data_eventfd && vfio-user.capture.fds == 1 && vfio-user.capture.fd.kind == 3'
        --expect 'vfio-user.command == 2 && vfio-user.capture.fd.kind == 1 && vfio-user.dma.size > 0'
        --expect 'vfio-user.command == 3 && vfio-user.flags.type == 1'
        --expect 'vfio-user.command == 9 && vfio-user.flags.type == 1 && vfio-user.access.count == 4 && vfio-user.data'
        --expect 'vfio-user.command == 10 && vfio-user.flags.no_reply'
        --expect 'vfio-user.command == 16 && vfio-user.feature.index == 1 && vfio-user.migration.flags & 0x1'
        --expect 'vfio-user.command == 16 && vfio-user.migration.device_state == 3'
        --expect 'vfio-user.command == 17 && vfio-user.flags.type == 1 && vfio-user.mig_data.size > 0'
        --expect 'vfio-user.command == 18 && vfio-user.mig_data.size > 0'
        --expect 'vfio-user.error_no == 22 && vfio-user.flags.error'
        --expect 'vfio-user.response_in'
        --expect 'vfio-user.malformed'
        --allow-malformed --allow-unpaired)
python3 scripts/capture_check.py "$W/proxy.pcapng" "${COMMON[@]}" || FAILED=1
# The server saw the same messages, less what it never read (conform's truncated ones).
python3 scripts/capture_check.py "$W/server.pcapng" "${COMMON[@]}" || FAILED=1
if grep -q 'deviation' "$W/proxy.log"; then
  echo "PASS --validate reported the malformed input: $(grep -c deviation "$W/proxy.log") deviations"
else
  echo "FAIL --validate reported no deviation for conform's malformed input"; FAILED=1
fi
# Seeded random and broken messages: the dissector marks them and never breaks.
python3 scripts/dissector_fuzz.py "$W/fuzz.pcapng" --seed 13 --count 3000
python3 scripts/capture_check.py "$W/fuzz.pcapng" --allow-malformed --allow-unpaired \
  --expect 'vfio-user.malformed' --expect 'vfio-user.raw' --expect 'vfio-user.write_multi.count' || FAILED=1
[ "$FAILED" = 0 ] && echo "capture-test: all passed" || echo "capture-test: FAILED"
exit "$FAILED"
