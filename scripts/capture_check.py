#!/usr/bin/env python3
"""capture_check.py CAPTURE [--expect FILTER]... [--none FILTER]... [--count FILTER=N]...

Decodes a vfio-user pcapng capture (vfu proxy/serve --pcap) with tshark and
contrib/wireshark/vfio-user.lua, and checks it:
  - every frame is decoded as vfio-user;
  - no frame carries a malformed mark, a Lua error or an expert error
    (--allow-malformed: only Lua errors and dissector exceptions count);
  - every reply is paired with its request (vfio-user.request_in), unless --allow-unpaired;
  - each --expect display filter matches at least one frame, each --none none,
    each --count FILTER=N exactly N frames.
All filters are counted in one tshark pass (io,stat). Prints PASS/FAIL lines;
exit status 0 when everything passed.
"""
import argparse
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = os.path.join(REPO, "contrib", "wireshark", "vfio-user.lua")
BAD = "_ws.malformed || _ws.lua.error || vfio-user.malformed || _ws.expert.severity >= 0x00800000"
BUGS = "_ws.lua.error || _ws.malformed.dissector_bug || _ws.malformed.expert"
UNPAIRED = "vfio-user.flags.type == 1 && !vfio-user.request_in"


def tshark(capture, extra):
    cmd = ["tshark", "-X", "lua_script:" + LUA, "-2", "-n", "-r", capture] + extra
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    err = "\n".join(l for l in out.stderr.splitlines() if "Running as user" not in l).strip()
    if out.returncode != 0 or err:
        raise SystemExit("FAIL tshark %s: %s" % (" ".join(extra), err or out.returncode))
    return out.stdout


def counts(capture, filters):
    """Frames matching each filter, in one pass."""
    for f in filters:
        if "," in f:
            raise SystemExit("FAIL filter %r: io,stat filters cannot contain commas" % f)
    out = tshark(capture, ["-q", "-z", "io,stat,0," + ",".join(filters)])
    rows = [l for l in out.splitlines() if re.match(r"^\|\s*[\d.]+\s*<>", l)]
    if len(rows) != 1:
        raise SystemExit("FAIL cannot read tshark io,stat output:\n" + out)
    cells = [c.strip() for c in rows[0].strip("|").split("|")[1:]]
    return [int(c) for c in cells[0::2]]  # Frames | Bytes per filter


def frame_numbers(capture, display_filter, limit=10):
    out = tshark(capture, ["-Y", display_filter, "-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message"])
    return [l.replace("\t", ": ") for l in out.splitlines()[:limit]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("capture")
    ap.add_argument("--expect", action="append", default=[])
    ap.add_argument("--none", action="append", default=[])
    ap.add_argument("--count", action="append", default=[])
    ap.add_argument("--min-frames", type=int, default=1)
    ap.add_argument("--allow-malformed", action="store_true",
                    help="the capture holds malformed input on purpose: only Lua errors and exceptions fail")
    ap.add_argument("--allow-unpaired", action="store_true", help="replies without a request are expected")
    a = ap.parse_args()
    counted = [spec.rpartition("=") for spec in a.count]
    bad = BUGS if a.allow_malformed else BAD
    filters = ["vfio-user", bad, UNPAIRED] + a.expect + a.none + [c[0] for c in counted]
    n = counts(a.capture, ["frame"] + filters)
    total, decoded, nbad, nunpaired = n[0], n[1], n[2], n[3]
    rest = n[4:]
    failed = 0

    def check(ok, what, detail_filter=None):
        nonlocal failed
        line = ("PASS " if ok else "FAIL ") + what
        if not ok and detail_filter:
            line += ": " + "; ".join(frame_numbers(a.capture, detail_filter))
        print(line)
        failed += 0 if ok else 1

    check(total >= a.min_frames, "capture has %d frames (at least %d)" % (total, a.min_frames))
    check(decoded == total, "every frame decodes as vfio-user (%d/%d)" % (decoded, total), "!vfio-user")
    check(nbad == 0, ("no Lua errors or exceptions" if a.allow_malformed else
                      "no malformed marks, Lua errors or expert errors") + " (%d)" % nbad, bad)
    if not a.allow_unpaired:
        check(nunpaired == 0, "every reply is paired with its request (%d unpaired)" % nunpaired, UNPAIRED)
    for f, c in zip(a.expect, rest):
        check(c > 0, "expect %s (%d frames)" % (f, c))
    rest = rest[len(a.expect):]
    for f, c in zip(a.none, rest):
        check(c == 0, "none %s (%d frames)" % (f, c), f)
    rest = rest[len(a.none):]
    for (f, _, want), c in zip(counted, rest):
        check(c == int(want), "count %s == %s (%d)" % (f, want, c))
    print("%s: %d frames, %d failed" % (a.capture, total, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
