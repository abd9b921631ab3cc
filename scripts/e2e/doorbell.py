"""The doorbell (specs with a "doorbell" section): its identity registers and the
SCRATCH write the guest reads back. Without a doorbell, DMA and interrupts cannot be
driven, so the families after this one stop."""
from .checker import hx
from .context import STOP
from .guestlog import hexint

SCRATCH_VALUE = 0x600DCAFE
DOORBELL_MAGIC = 0x44554656
DOORBELL_VERSION = 0x00010000


def check(ctx):
    spec, log, c = ctx.spec, ctx.log, ctx.c
    db = spec.get("doorbell")
    if not db:
        c.note("spec has no doorbell: DMA and interrupt checks skipped")
        return STOP
    d = log.first("doorbell")
    if not d:
        c.fail("doorbell", "doorbell registers read", "no record")
        return STOP
    c.eq("doorbell-magic", DOORBELL_MAGIC, hexint(d.get("magic")), hx(8))
    c.eq("doorbell-version", DOORBELL_VERSION, hexint(d.get("version")), hx(8))
    s = log.first("scratch")
    c.eq("scratch-readback", SCRATCH_VALUE, hexint(s.get("readback")) if s else None, hx(8))
