"""Interrupts: uio_pci_generic binds to the device, and every doorbell command 3
raises the guest's interrupt count and the device's IRQ_COUNT by one."""
from .guestlog import hexint


def check(ctx):
    log, c = ctx.log, ctx.c
    if log.has("irq", "irq skipped"):
        c.skip("irq", "interrupt test disabled (no INTx pin)")
        return
    b = log.first("irq")
    if not b or b.get("bound") != "1":
        c.fail("irq-uio-bind", "uio_pci_generic bound to 00:05.0",
               "no record" if not b else f"not bound (driver={b.get('driver')} dmesg={b.get('dmesg')})")
        return
    c.ok("irq-uio-bind", f"{b.get('uio')} irq={b.get('irq')}")
    rounds = [kv for kv in log.all("irq") if "round" in kv]
    if not rounds:
        c.fail("irq-count-rises", "interrupt rounds", "none")
    for kv in rounds:
        before, after = hexint(kv.get("before")), hexint(kv.get("after"))
        db_, da = hexint(kv.get("dev_before")), hexint(kv.get("dev_after"))
        r = kv.get("round")
        if before is not None and after is not None and after > before:
            c.ok(f"irq-count-rises-{r}", f"uio count {before}->{after}")
        else:
            c.fail(f"irq-count-rises-{r}", "guest interrupt count to rise after doorbell command 3",
                   f"{before}->{after} (device IRQ_COUNT {kv.get('dev_before')}->{kv.get('dev_after')})")
        if db_ is not None and da is not None and da == db_ + 1:
            c.ok(f"irq-device-count-{r}", f"IRQ_COUNT {db_}->{da}")
        else:
            c.fail(f"irq-device-count-{r}", "IRQ_COUNT+1", f"{kv.get('dev_before')}->{kv.get('dev_after')}")

