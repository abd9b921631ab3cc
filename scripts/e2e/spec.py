"""The device spec as the e2e sees it: numbers, BARs, the registers the guest can
read, and the guest kernel parameters (`e2e_check.py --cmdline`) that make the guest
exercise them."""
import re

# DMA window reserved in the guest by memmap=64K$0x1f000000 (see qemu-run-guest.sh)
DMA_ADDR = 0x1F000000
DMA_LEN = 4096
DMA_PATTERN = 0x5EED0000
# The doorbell's registers (magic .. IRQ_COUNT) are the doorbell family's, not plain registers.
DOORBELL_SPAN = 0x38
MAX_CMDLINE_ITEMS = 40


def num(v, default=0):
    """JSON integer, or string: hex '0x..', decimal, or size with KiB/MiB/GiB suffix."""
    if v is None:
        return default
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    s = str(v).strip().replace("_", "")
    m = re.fullmatch(r"(?i)(0x[0-9a-f]+|\d+)\s*(k|m|g|kib|mib|gib|kb|mb|gb)?", s)
    if not m:
        raise ValueError(f"not a number: {v!r}")
    n = int(m.group(1), 0)
    unit = (m.group(2) or "").lower()
    return n << {"": 0, "k": 10, "kib": 10, "kb": 10, "m": 20, "mib": 20, "mb": 20, "g": 30, "gib": 30, "gb": 30}[unit]


def spec_name(spec, path):
    n = spec.get("name")
    if not n:
        n = re.sub(r"\.json$", "", path.rsplit("/", 1)[-1])
    return str(n).replace(" ", "_")


def spec_bars(spec):
    out = {}
    for b in spec.get("bars", []) or []:
        idx = int(num(b.get("index")))
        kind = str(b.get("kind", "memory")).lower()
        kind = "io" if kind in ("io", "ioport", "port") else "memory"
        out[idx] = {
            "size": num(b.get("size")),
            "kind": kind,
            "bits": 32 if kind == "io" else int(num(b.get("bits", 32))),
            "prefetchable": bool(b.get("prefetchable", False)) if kind == "memory" else False,
        }
    return out


def msix_ranges(spec):
    """(bar, start, end) ranges QEMU intercepts for the MSI-X table and PBA."""
    m = (spec.get("interrupts") or {}).get("msix")
    if not m:
        return []
    bar = int(num(m.get("bar", 0)))
    n = int(num(m.get("vectors", 1)))
    out = []
    if "tableOffset" in m:
        t = num(m["tableOffset"])
        out.append((int(num(m.get("tableBar", bar))), t, t + 16 * n))
    if "pbaOffset" in m:
        p = num(m["pbaOffset"])
        out.append((int(num(m.get("pbaBar", bar))), p, p + 8 * ((n + 63) // 64)))
    return out


def testable_registers(spec):
    """Spec registers the guest can read: (bar, offset, bits, value, writable)."""
    bars = spec_bars(spec)
    skip = msix_ranges(spec)
    db = spec.get("doorbell")
    out = []
    for r in spec.get("registers", []) or []:
        bar = int(num(r.get("bar", 0)))
        off = num(r.get("offset", 0))
        size = int(num(r.get("size", 4)))
        if bar not in bars or size not in (1, 2, 4, 8) or off + size > bars[bar]["size"]:
            continue
        if any(b == bar and s <= off < e for b, s, e in skip):
            continue
        if db and int(num(db.get("bar", 0))) == bar and num(db.get("offset", 0)) <= off < num(db.get("offset", 0)) + DOORBELL_SPAN:
            continue
        if bars[bar]["kind"] == "io" and size == 8:
            continue
        out.append((bar, off, size * 8, num(r.get("value", 0)), bool(r.get("writable", False))))
    return out


def write_value(value, bits):
    mask = (1 << bits) - 1
    v = (~value) & mask & 0xA5A5A5A5A5A5A5A5
    return v if v else (0x5A5A5A5A5A5A5A5A & mask)


def cmdline(spec):
    regs = testable_registers(spec)[:MAX_CMDLINE_ITEMS]
    parts = []
    if regs:
        parts.append("vfu_rd=" + ",".join(f"{b}:{o:#x}:{w}" for b, o, w, _, _ in regs))
        wr = [(b, o, w, v) for b, o, w, v, writable in regs if writable][:8]
        if wr:
            parts.append("vfu_wr=" + ",".join(f"{b}:{o:#x}:{write_value(v, w):#x}:{w}" for b, o, w, v in wr))
    db = spec.get("doorbell")
    if db:
        parts.append(f"vfu_db={int(num(db.get('bar', 0)))}:{num(db.get('offset', 0)):#x}")
        parts.append(f"vfu_dma={DMA_ADDR:#x}:{DMA_LEN}")
        parts.append(f"vfu_pat={DMA_PATTERN:#x}")
        if not (spec.get("interrupts") or {}).get("intx", "A"):
            parts.append("vfu_irq=0")
    return " ".join(parts)


def can_test(spec):
    if not isinstance(spec, dict):
        return "not a JSON object"
    ids = spec.get("ids")
    if not isinstance(ids, dict) or "vendor" not in ids or "device" not in ids:
        return "no ids.vendor/ids.device"
    try:
        spec_bars(spec)
        for k in ("vendor", "device", "subsystemVendor", "subsystem", "revision", "classCode"):
            num(ids.get(k, 0))
    except (ValueError, TypeError) as e:
        return f"cannot parse: {e}"
    return None
