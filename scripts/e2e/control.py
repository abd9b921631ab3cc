"""The control-plane e2e (scripts/e2e-control.sh, `e2e_check.py --control`): the
guest read the value `vfu ctl poke` wrote, saw the injected DMA fault in the
doorbell's ERROR register, counted the INTx raised with `vfu ctl irq`, and
`vfu ctl watch` recorded its accesses in order."""
import json
import re

from .checker import Checker, hx
from .guestlog import GuestLog, hexint


def check_control(guest_path, watch_path, host_path, polls_path):
    """The control-plane e2e (see --control in the usage)."""
    c = Checker("control")
    try:
        with open(guest_path, errors="replace") as f:
            log = GuestLog(f.read())
        with open(host_path, errors="replace") as f:
            host = f.read()
        events = []
        with open(watch_path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line:
                    events.append(json.loads(line))
    except (OSError, ValueError) as e:
        c.fail("harness", "readable logs", f"{type(e).__name__}: {e}")
        print(f"{c.passed} passed, {c.failed} failed")
        return 1

    m = re.search(r"HOST ctl-mode=(\d+)", host)
    c.eq("control-socket-mode", "600", m.group(1) if m else None)
    m = re.search(r"HOST irq-before rc=(\d+) reply=(.*)", host)
    if m and m.group(1) == "1" and '"not-enabled"' in m.group(2):
        c.ok("irq-refused-before-enable", "msix refused: not-enabled")
    else:
        c.fail("irq-refused-before-enable", "vfu ctl irq msix refused (exit 1, not-enabled)", m.group(0) if m else "no record")
    steps = {kv.get("step"): kv.get("ok") for kv in log.all("ctl-sync")}
    for step in ("1", "3", "5", "7", "9"):
        c.eq(f"handshake-{step}", "1", steps.get(step))
    p = log.first("ctl-poke")
    c.eq("guest-reads-poked-value", 0x7E57DA7A, hexint(p.get("value")) if p else None, hx(8))
    d = log.first("ctl-dma-fault")
    c.eq("guest-sees-dma-fault", 5, hexint(d.get("error")) if d else None)
    a = log.first("ctl-dma-after")
    c.eq("dma-after-fault-succeeds", 0, hexint(a.get("error")) if a else None)
    c.eq("dma-after-fault-data", 0x12340000, hexint(a.get("word0")) if a else None, hx(8))
    u = log.first("ctl-uio")
    c.eq("uio-bound", "1", u.get("bound") if u else None)
    for r in ("1", "2"):
        kv = log.first("ctl-irq", round=r)
        try:
            before, after = int(kv["before"]), int(kv["after"])
        except (TypeError, KeyError, ValueError):
            before = after = None
        if before is not None and after == before + 1:
            c.ok(f"guest-counts-ctl-intx-{r}", f"uio count {before}->{after}")
        else:
            c.fail(f"guest-counts-ctl-intx-{r}", "the uio count to rise by one after vfu ctl irq intx",
                   f"{kv}" if kv else "no record")
    intx_ok = len(re.findall(r'HOST irq-intx step=\d+ rc=0 reply=.*"delivered":true', host))
    c.eq("ctl-intx-delivered", 2, intx_ok)
    c.eq("guest-done", True, log.has("ctl-done"))

    # The watch log: the guest's SCRATCH writes and the read of 0x100, in this order.
    acc = [e for e in events if e.get("event") == "access"]
    seqs = [e.get("seq") for e in events if e.get("event") != "overflow"]
    c.eq("watch-seq-increasing", True, bool(seqs) and seqs == sorted(seqs) and len(set(seqs)) == len(seqs))
    want = [("write", "0x8", 0xA11CE001), ("write", "0x8", 0xA11CE002), ("read", "0x100", 0xCAFEF00D),
            ("write", "0x8", 0xA11CE003)]
    got = [(e.get("op"), e.get("offset"), hexint(e.get("value"))) for e in acc if e.get("region") == "bar0"]
    i = 0
    for g in got:
        if i < len(want) and g == want[i]:
            i += 1
    if i == len(want):
        c.ok("watch-records-guest-accesses-in-order", "SCRATCH a11ce001, a11ce002, read 0x100, a11ce003")
    else:
        c.fail("watch-records-guest-accesses-in-order", want, f"matched {i} of them in {len(got)} BAR0 accesses")
    faults = [e for e in events if e.get("event") == "fault" and e.get("kind") == "dma"]
    c.eq("watch-records-dma-fault", True, any(e.get("reason") == "hit" for e in faults))
    dmas = [e for e in events if e.get("event") == "dma"]
    c.eq("watch-records-faulted-dma", True, any(e.get("error") == "EIO" for e in dmas))
    irqs = [e for e in events if e.get("event") == "irq" and e.get("irq") == "intx"]
    c.eq("watch-records-intx", True, len(irqs) >= 2)
    try:
        with open(polls_path) as f:
            polls = json.load(f).get("polls") or []
        c.eq("polling-loop-detected", True,
             any(p.get("region") == "bar0" and p.get("offset") == "0xc" and p.get("longestRun", 0) >= 20 for p in polls))
    except (OSError, ValueError) as e:
        c.fail("polling-loop-detected", "a polls report", f"{type(e).__name__}: {e}")
    try:
        with open(polls_path.replace("polls", "unmodeled")) as f:
            un = json.load(f).get("unmodeled") or []
        c.eq("unmodeled-offset-reported", True,
             any(u.get("region") == "bar0" and u.get("offset") == "0x200" and u.get("reads", 0) >= 1 for u in un))
    except (OSError, ValueError) as e:
        c.fail("unmodeled-offset-reported", "an unmodeled report", f"{type(e).__name__}: {e}")
    m = re.search(r"HOST qemu-status=(\d+)", host)
    c.eq("qemu-status", "0", m.group(1) if m else None)
    m = re.search(r"HOST server-status=(\d+)", host)
    c.eq("server-stops-cleanly", True, m is not None and m.group(1) in ("0", "143"))
    print(f"{c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 and c.passed > 0 else 1

