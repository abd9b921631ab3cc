#!/usr/bin/env python3
"""e2e_check.py - compare what the QEMU test guest saw against a device spec.

Usage:
  e2e_check.py SPEC.json GUEST_LOG [--qemu-status N] [--server-log FILE]
               [--timeout-seconds S] [--no-summary]
      Parse the guest console log written by scripts/qemu-run-guest.sh (lines
      "E2E ..." printed by scripts/guest/vfu-guest-test) and check it against
      SPEC.  Prints one line per check:
        PASS spec=NAME check=CHECK ...
        FAIL spec=NAME check=CHECK: expected X got Y
      (plus informational NOTE/SKIP lines that are not counted) and finally
      exactly one line "N passed, M failed" (unless --no-summary).
      Exit status 0 only if nothing failed.
  e2e_check.py --cmdline SPEC.json
      Print the guest kernel parameters (vfu_rd=..., vfu_db=..., ...) that make
      the guest exercise SPEC's registers, doorbell, DMA and interrupts.
  e2e_check.py --control GUEST_LOG WATCH_LOG HOST_LOG POLLS_JSON
      Check a control-plane run (scripts/e2e-control.sh): the guest read the value
      `vfu ctl poke` wrote, saw the injected DMA fault in the doorbell's ERROR register,
      counted the INTx raised with `vfu ctl irq`, and `vfu ctl watch` recorded its
      accesses in order; prints PASS/FAIL lines and "N passed, M failed".
  e2e_check.py --can-test SPEC.json
      Exit 0 if SPEC looks like a device spec this harness can test, else print
      the reason and exit 1.

The checks live in scripts/e2e/, one module per family (the list is
e2e.FAMILIES). Only the Python standard library is used.
"""
import json
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the checkout for scripts/e2e/
from e2e import run_checks
from e2e.checker import Checker
from e2e.control import check_control
from e2e.guestlog import GuestLog
from e2e.spec import can_test, cmdline, spec_name


def main(argv):
    if len(argv) == 5 and argv[0] == "--control":
        return check_control(*argv[1:])
    if len(argv) >= 2 and argv[0] in ("--cmdline", "--can-test"):
        try:
            with open(argv[1]) as f:
                spec = json.load(f)
        except (OSError, ValueError) as e:
            print(f"cannot read spec {argv[1]}: {e}", file=sys.stderr)
            return 2
        if argv[0] == "--cmdline":
            print(cmdline(spec))
            return 0
        why = can_test(spec)
        if why:
            print(why)
            return 1
        return 0
    args = {"qemu_status": None, "server_log": None, "timeout": None, "summary": True, "drop_pattern": None,
            "effective": None}
    pos = []
    it = iter(argv)
    for a in it:
        if a == "--qemu-status":
            args["qemu_status"] = int(next(it))
        elif a == "--server-log":
            args["server_log"] = next(it)
        elif a == "--timeout-seconds":
            args["timeout"] = next(it)
        elif a == "--drop-pattern":
            args["drop_pattern"] = next(it)
        elif a == "--effective":
            args["effective"] = next(it)
        elif a == "--no-summary":
            args["summary"] = False
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            pos.append(a)
    if len(pos) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec_path, log_path = pos
    name = re.sub(r"\.json$", "", spec_path.rsplit("/", 1)[-1])
    c = Checker(name)
    try:
        with open(spec_path) as f:
            spec = json.load(f)
        if args["effective"]:
            # What the device really is once its variant shaped it (`vfu check-spec
            # --effective`): variants such as nvgrace derive BARs from their own section.
            with open(args["effective"]) as f:
                eff = json.load(f)
            for key in ("ids", "bars", "interrupts", "express"):
                if key in eff:
                    spec[key] = eff[key]
        c.name = spec_name(spec, spec_path)
        why = can_test(spec)
        if why:
            raise ValueError(why)
        with open(log_path, errors="replace") as f:
            log = GuestLog(f.read())
        run_checks(spec, log, c, args)
    except (OSError, ValueError, KeyError, TypeError) as e:
        c.fail("harness", "a readable spec and guest log", f"{type(e).__name__}: {e}")
    if args["summary"]:
        print(f"{c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 and c.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
