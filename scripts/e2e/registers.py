"""Registers: the guest reads every testable spec register (e2e_check.py --cmdline
vfu_rd=) and writes the writable ones back (vfu_wr=)."""
from .checker import hx
from .guestlog import hexint
from .spec import MAX_CMDLINE_ITEMS, testable_registers


def check(ctx):
    spec, log, c = ctx.spec, ctx.log, ctx.c
    regs = testable_registers(spec)[:MAX_CMDLINE_ITEMS]
    reads = {(kv.get("bar"), hexint(kv.get("off")), kv.get("bits")): kv.get("value") for kv in log.all("mmio")}
    for bar, off, bits, value, _ in regs:
        got = reads.get((str(bar), off, str(bits)))
        want = value & ((1 << bits) - 1)
        c.eq(f"mmio-bar{bar}-{off:#x}", want, hexint(got) if got else None, hx(bits // 4))
    writes = {(kv.get("bar"), hexint(kv.get("off"))): kv for kv in log.all("write")}
    for bar, off, bits, value, writable in regs:
        if not writable:
            continue
        kv = writes.get((str(bar), off))
        if kv is None:
            if len([1 for r in regs if r[4]]) <= 8:
                c.fail(f"write-bar{bar}-{off:#x}", "a write/readback record", "none")
            continue
        c.eq(f"write-bar{bar}-{off:#x}", hexint(kv.get("wrote")), hexint(kv.get("readback")), hx(bits // 4))
