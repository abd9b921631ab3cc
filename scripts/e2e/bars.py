"""BARs: each spec BAR's size and type in sysfs and in lspci; no BAR the spec lacks."""
import re

from .spec import num, spec_bars
from .guestlog import hexint


def check(ctx):
    spec, log, c, lspci_text = ctx.spec, ctx.log, ctx.c, ctx.lspci_text
    res = {int(kv["index"]): kv for kv in log.all("resource") if "index" in kv}
    bars = spec_bars(spec)
    for i in range(6):
        r = res.get(i)
        start, end, flags = (hexint(r["start"]), hexint(r["end"]), hexint(r["flags"])) if r else (0, 0, 0)
        got_size = (end - start + 1) if (r and (start or end) and flags) else 0
        if i in bars:
            b = bars[i]
            c.eq(f"bar{i}-size", b["size"], got_size, lambda v: f"{v:#x}")
            if got_size == 0:
                continue
            kind = "io" if flags & 0x100 else ("memory" if flags & 0x200 else f"?flags={flags:#x}")
            bits = 64 if flags & 0x100000 else 32
            pref = bool(flags & 0x2000)
            want = (b["kind"], b["bits"], b["prefetchable"]) if b["kind"] == "memory" else ("io",)
            got = (kind, bits, pref) if kind == "memory" else (kind,)
            c.eq(f"bar{i}-type", want, got,
                 lambda t: t[0] if len(t) == 1 else f"{t[0]},{t[1]}-bit,{'prefetchable' if t[2] else 'non-prefetchable'}")
            m = re.search(rf"Region {i}: (Memory at \S+ \(([^)]*)\)|I/O ports at \S+)(?: \[[^\]]*\])? \[size=(\w+)\]", lspci_text)
            if not m:
                m = re.search(rf"Region {i}: .*", lspci_text)
                c.fail(f"bar{i}-lspci", "an lspci 'Region' line", m.group(0) if m else "none")
            else:
                desc = m.group(2) or "io"
                lwant = "io" if b["kind"] == "io" else f"{b['bits']}-bit, {'prefetchable' if b['prefetchable'] else 'non-prefetchable'}"
                lsz = m.group(3)
                lsz_n = num(lsz.replace("K", "KiB").replace("M", "MiB").replace("G", "GiB")) if re.fullmatch(r"\d+[KMG]?", lsz) else None
                c.eq(f"bar{i}-lspci", (lwant, b["size"]), (desc, lsz_n), lambda t: f"{t[0]} size={t[1]}")
        else:
            covered = any(j == i - 1 and bars[j]["kind"] == "memory" and bars[j]["bits"] == 64 for j in bars)
            if got_size and not covered:
                c.fail(f"bar{i}-absent", "no BAR (not in the spec)", f"a BAR of size {got_size:#x} flags {flags:#x}")
