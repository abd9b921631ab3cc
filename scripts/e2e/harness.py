"""Harness level: how QEMU exited, what it said, whether the server kept the
connection, whether the guest ran to the end and saw the device at all."""
import re

from .context import STOP


def check(ctx):
    args, log, c = ctx.args, ctx.log, ctx.c
    st = args.get("qemu_status")
    if st is not None:
        if st == 0:
            c.ok("qemu-exit", "status=0")
        elif st == 134:
            c.fail("qemu-exit", "status 0", "134 (QEMU aborted, SIGABRT)")
        elif st in (124, 137):
            c.fail("qemu-exit", f"guest powered off within {args.get('timeout') or '?'}s", "timeout (QEMU killed)")
        else:
            c.fail("qemu-exit", "status 0", f"status {st}")
    for l in log.qemu_lines:
        c.note(f"qemu said: {l.strip()}")
    errs = [l for l in log.qemu_lines if "warning" not in l.lower() and "terminating on signal" not in l]
    if errs:
        c.fail("qemu-errors", "no QEMU error messages", errs[0].strip())
    else:
        c.ok("qemu-errors", "none")
    if args.get("server_log") is not None:
        pat = re.compile(args.get("drop_pattern") or
                         r"(?i)(drop(ped|ping)?\b.*\bconnection|connection\b.*\bdropped|closing connection.*(error|fail)|fatal)")
        try:
            with open(args["server_log"], errors="replace") as f:
                bad = [l.rstrip() for l in f if pat.search(l)]
        except OSError as e:
            bad = [f"cannot read server log: {e}"]
        if bad:
            c.fail("server-connection", "server kept the connection", bad[0])
        else:
            c.ok("server-connection", "no dropped connection in the server log")

    if log.has("done"):
        c.ok("guest-done")
    else:
        c.fail("guest-done", "'E2E done' (guest ran to completion)", "no 'E2E done' line")
    if not log.has("present"):
        c.fail("device-present", "device 00:05.0 in the guest", "guest test did not start")
        return STOP
    if (log.first("present") or {}).get("present") != "1":
        c.fail("device-present", "device 00:05.0 in the guest", "absent (see lspci-all in the log)")
        return STOP
    c.ok("device-present", "00:05.0")
