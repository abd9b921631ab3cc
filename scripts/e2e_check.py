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

Only the Python standard library is used.
"""
import json
import re
import struct
import sys

# DMA window reserved in the guest by memmap=64K$0x1f000000 (see qemu-run-guest.sh)
DMA_ADDR = 0x1F000000
DMA_LEN = 4096
DMA_PATTERN = 0x5EED0000
SCRATCH_VALUE = 0x600DCAFE
DOORBELL_MAGIC = 0x44554656
DOORBELL_VERSION = 0x00010000
DOORBELL_SPAN = 0x38
MAX_CMDLINE_ITEMS = 40

CAP_IDS = {  # spec capability id -> PCI capability ID
    "pm": 0x01, "power-management": 0x01, "agp": 0x02, "vpd": 0x03, "slotid": 0x04,
    "msi": 0x05, "hotswap": 0x06, "pcix": 0x07, "ht": 0x08, "vendor": 0x09,
    "vendor-specific": 0x09, "debug": 0x0A, "ssvid": 0x0D, "express": 0x10, "pcie": 0x10,
    "msix": 0x11, "msi-x": 0x11, "sata": 0x12, "af": 0x13, "ea": 0x14,
}
CAP_LSPCI = {  # PCI capability ID -> text lspci prints after "Capabilities: [xx] "
    0x01: "Power Management", 0x03: "Vital Product Data", 0x05: "MSI:", 0x09: "Vendor Specific",
    0x10: "Express", 0x11: "MSI-X:", 0x13: "PCI Advanced Features", 0x0D: "Subsystem",
}
EXT_CAP_IDS = {
    "free-space-dvsec": 0x0023,
    "aer": 0x0001, "vc": 0x0002, "dsn": 0x0003, "serial": 0x0003, "power-budget": 0x0004,
    "vendor": 0x000B, "vsec": 0x000B, "acs": 0x000D, "ari": 0x000E, "ats": 0x000F,
    "sriov": 0x0010, "sr-iov": 0x0010, "mrsriov": 0x0011, "mcast": 0x0012, "pri": 0x0013,
    "rebar": 0x0015, "dpa": 0x0016, "tph": 0x0017, "ltr": 0x0018, "secpci": 0x0019,
    "pasid": 0x001B, "l1ss": 0x001E, "ptm": 0x001F, "dvsec": 0x0023, "dlf": 0x0025,
    "pl16": 0x0026, "lmr": 0x0027, "doe": 0x002E,
}
EXT_CAP_LSPCI = {
    0x0001: "Advanced Error Reporting", 0x0003: "Device Serial Number", 0x000B: "Vendor Specific",
    0x000D: "Access Control Services", 0x000E: "Alternative Routing-ID", 0x000F: "Address Translation Service",
    0x0010: "Single Root I/O Virtualization", 0x0013: "Page Request Interface", 0x0015: "Physical Resizable BAR",
    0x0018: "Latency Tolerance Reporting", 0x001B: "Process Address Space ID", 0x001E: "L1 PM Substates",
    0x0023: "Designated Vendor-Specific",
}
# QEMU's vfio-pci (and so vfio-user-pci) never shows these to the guest (hw/vfio/pci.c vfio_add_ext_cap)
EXT_CAP_HIDDEN_BY_QEMU = {0x0010: "SR-IOV", 0x000E: "ARI"}


# ----------------------------------------------------------------- spec helpers
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


# ----------------------------------------------------------------- log parsing
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc")


class GuestLog:
    def __init__(self, text):
        self.lines = [ANSI.sub("", l).rstrip("\r") for l in text.replace("\r\n", "\n").split("\n")]
        self.records = []      # (kind, dict, raw)
        self.sections = {}     # name -> [lines]
        self.qemu_lines = [l for l in self.lines if re.match(r"^\S*qemu-system-x86_64: ", l)]
        cur = None
        for l in self.lines:
            i = l.find("E2E ")
            if i >= 0:
                rec = l[i + 4:].strip()
                m = re.fullmatch(r"([\w-]+)-(begin|end)", rec)
                if m:
                    cur = m.group(1) if m.group(2) == "begin" else None
                    if cur:
                        self.sections[cur] = []
                    continue
                kind = re.match(r"[\w-]*", rec).group(0)
                if kind == "start":
                    kv = dict(re.findall(r"(\w+)=(\S*)", rec.split(" cmdline=")[0]))
                else:
                    kv = dict(re.findall(r"([\w-]+)=(\S*)", rec))
                self.records.append((kind, kv, rec))
                continue
            if cur is not None:
                self.sections[cur].append(l)

    def first(self, kind, **match):
        for k, kv, _ in self.records:
            if k == kind and all(kv.get(a) == str(b) for a, b in match.items()):
                return kv
        return None

    def all(self, kind):
        return [kv for k, kv, _ in self.records if k == kind]

    def has(self, kind, raw_prefix=None):
        return any(k == kind and (raw_prefix is None or r.startswith(raw_prefix)) for k, _, r in self.records)

    def config(self):
        data = bytearray()
        for l in self.sections.get("config", []):
            m = re.match(r"^\s*([0-9a-fA-F]+):((?:\s[0-9a-fA-F]{2})+)\s*$", l)
            if not m:
                continue
            off = int(m.group(1), 16)
            bs = bytes(int(x, 16) for x in m.group(2).split())
            if off != len(data):
                break
            data += bs
        return bytes(data)


def walk_caps(cfg):
    caps = []
    if len(cfg) < 64 or not (cfg[6] & 0x10):
        return caps
    p, seen = cfg[0x34] & 0xFC, set()
    while p and p < len(cfg) - 1 and p not in seen and len(caps) < 48:
        seen.add(p)
        caps.append((cfg[p], p))
        p = cfg[p + 1] & 0xFC
    return caps


def walk_ext_caps(cfg):
    caps = []
    if len(cfg) <= 0x100:
        return caps
    p, seen = 0x100, set()
    while p and p + 4 <= len(cfg) and p not in seen and len(caps) < 64:
        seen.add(p)
        hdr = struct.unpack_from("<I", cfg, p)[0]
        if hdr == 0 or hdr == 0xFFFFFFFF:
            break
        caps.append((hdr & 0xFFFF, p, (hdr >> 16) & 0xF))
        p = (hdr >> 20) & 0xFFC
    return caps


def fnv1a32(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def hexint(s):
    try:
        return int(s, 16) if str(s).lower().startswith("0x") else int(s, 0)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------- checker
class Checker:
    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0

    def ok(self, check, detail=""):
        self.passed += 1
        print(f"PASS spec={self.name} check={check}" + (f" {detail}" if detail else ""))

    def fail(self, check, expected, got):
        self.failed += 1
        print(f"FAIL spec={self.name} check={check}: expected {expected} got {got}")

    def eq(self, check, expected, got, fmt=None):
        f = fmt or (lambda v: v)
        if got is not None and expected == got:
            self.ok(check, f"value={f(got)}")
        else:
            self.fail(check, f(expected), "nothing" if got is None else f(got))
        return expected == got

    def note(self, msg):
        print(f"NOTE spec={self.name} {msg}")

    def skip(self, check, why):
        print(f"SKIP spec={self.name} check={check}: {why}")


def hx(width):
    return lambda v: f"{v:#0{width + 2}x}" if isinstance(v, int) else str(v)


def run_checks(spec, log, c, args):
    ids = spec.get("ids") or {}
    # ---------------------------------------------------------- harness level
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
        return
    if (log.first("present") or {}).get("present") != "1":
        c.fail("device-present", "device 00:05.0 in the guest", "absent (see lspci-all in the log)")
        return
    c.ok("device-present", "00:05.0")

    # ---------------------------------------------------------- identity
    sy = log.first("sysfs") or {}
    exp = {
        "vendor": (num(ids.get("vendor")), "vendor", 4),
        "device": (num(ids.get("device")), "device", 4),
        "subsystem-vendor": (num(ids.get("subsystemVendor", 0)), "subsystem_vendor", 4),
        "subsystem": (num(ids.get("subsystem", 0)), "subsystem_device", 4),
        "class": (num(ids.get("classCode", 0)), "class", 6),
        "revision": (num(ids.get("revision", 0)), "revision", 2),
    }
    for check, (want, key, w) in exp.items():
        c.eq(check, want, hexint(sy.get(key)), hx(w))
    cfg = log.config()
    express = bool(spec.get("express", False))
    if len(cfg) >= 64:
        raw = (struct.unpack_from("<H", cfg, 0)[0], struct.unpack_from("<H", cfg, 2)[0],
               struct.unpack_from("<H", cfg, 0x2C)[0], struct.unpack_from("<H", cfg, 0x2E)[0],
               cfg[9] | cfg[10] << 8 | cfg[11] << 16, cfg[8])
        want = tuple(v[0] for v in exp.values())
        c.eq("config-raw-ids", want, raw, lambda t: "/".join(f"{x:#x}" for x in t))
        hdr = cfg[0x0E] & 0x7F
        c.eq("header-type", 0, hdr, hx(2))
    else:
        c.fail("config-dump", "a config space dump", f"{len(cfg)} bytes")
    want_size = 4096 if express else 256
    c.eq("config-size", want_size, hexint(sy.get("config_size")))

    # ---------------------------------------------------------- BARs
    res = {int(kv["index"]): kv for kv in log.all("resource") if "index" in kv}
    lspci = log.sections.get("lspci", [])
    lspci_text = "\n".join(lspci)
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

    # ---------------------------------------------------------- capabilities
    caps = walk_caps(cfg)
    cap_ids = [cid for cid, _ in caps]
    c.note("capabilities in config space: " + (", ".join(f"{cid:#04x}@{p:#x}" for cid, p in caps) or "none"))
    intr = spec.get("interrupts") or {}
    expected_caps = set()
    # MSI
    msi = intr.get("msi")
    m = re.search(r"Capabilities: \[\w+\] MSI: Enable[+-] Count=\d+/(\d+) Maskable([+-]) 64bit([+-])", lspci_text)
    if msi:
        expected_caps.add(0x05)
        want = (int(num(msi.get("vectors", 1))), bool(msi.get("perVectorMask", True)), bool(msi.get("address64", True)))
        got = (int(m.group(1)), m.group(2) == "+", m.group(3) == "+") if m else None
        c.eq("cap-msi", want, got, lambda t: f"vectors={t[0]} maskable={t[1]} 64bit={t[2]}")
    elif m or 0x05 in cap_ids:
        c.fail("cap-msi-absent", "no MSI capability", m.group(0) if m else "MSI in config space")
    # MSI-X
    msix = intr.get("msix")
    m = re.search(r"Capabilities: \[\w+\] MSI-X: Enable[+-] Count=(\d+) Masked[+-]\s*\n\s*Vector table: BAR=(\d+) offset=([0-9a-f]+)\s*\n\s*PBA: BAR=(\d+) offset=([0-9a-f]+)", lspci_text)
    if msix:
        expected_caps.add(0x11)
        bar = int(num(msix.get("bar", 0)))
        want = (int(num(msix.get("vectors", 1))), int(num(msix.get("tableBar", bar))), num(msix.get("tableOffset", 0)),
                int(num(msix.get("pbaBar", bar))), num(msix.get("pbaOffset", 0)))
        got = (int(m.group(1)), int(m.group(2)), int(m.group(3), 16), int(m.group(4)), int(m.group(5), 16)) if m else None
        c.eq("cap-msix", want, got, lambda t: f"table_size={t[0]} table=BAR{t[1]}+{t[2]:#x} pba=BAR{t[3]}+{t[4]:#x}")
    elif m or 0x11 in cap_ids:
        c.fail("cap-msix-absent", "no MSI-X capability", m.group(0).splitlines()[0] if m else "MSI-X in config space")
    # Express
    m = re.search(r"Capabilities: \[\w+\] Express \((v\d)\) ([^,\n]+)", lspci_text)
    if express:
        expected_caps.add(0x10)
        # On q35's root bus QEMU's vfio-pci turns an Endpoint into a Root Complex Integrated Endpoint.
        good = bool(m) and ("Endpoint" in m.group(2))
        if good:
            c.ok("cap-express", f"'{m.group(0).split('] ', 1)[1].strip()}'")
        else:
            c.fail("cap-express", "Express (v2) Endpoint / Root Complex Integrated Endpoint", m.group(0) if m else "no Express capability")
    elif m or 0x10 in cap_ids:
        c.fail("cap-express-absent", "no Express capability (express=false)", m.group(0) if m else "Express in config space")
    # listed capabilities
    for cap in spec.get("capabilities", []) or []:
        cid_name = str(cap.get("id", "")).lower()
        cid = CAP_IDS.get(cid_name)
        if cid is None:
            try:
                cid = num(cap.get("id"))
            except ValueError:
                c.skip(f"cap-{cid_name}", "unknown capability id in spec")
                continue
        expected_caps.add(cid)
        check = f"cap-{cid_name}"
        found = [p for i, p in caps if i == cid]
        label = CAP_LSPCI.get(cid)
        in_lspci = (label is None) or bool(re.search(r"Capabilities: \[\w+\] " + re.escape(label), lspci_text))
        if not found:
            c.fail(check, f"capability {cid:#04x} in config space", "absent")
            continue
        if not in_lspci:
            c.fail(check, f"lspci to show '{label}'", "not shown")
            continue
        detail = f"at={found[0]:#x}"
        if cid == 0x09 and cap.get("bytes"):
            want_b = bytes.fromhex(str(cap["bytes"]).replace(" ", "").replace("0x", ""))
            p = found[0]
            ln = cfg[p + 2] if p + 2 < len(cfg) else 0
            body = cfg[p + 2:p + max(ln, 3)]
            if want_b in body:
                c.ok(check, detail + f" len={ln} bytes={want_b.hex()}")
            else:
                c.fail(check, f"vendor capability containing {want_b.hex()}", f"len={ln} body={body.hex()}")
            continue
        if cid == 0x01:
            m = re.search(r"Power Management version (\d+)", lspci_text)
            detail += f" version={m.group(1) if m else '?'}"
            if cap.get("version") is not None and m and int(m.group(1)) != int(num(cap["version"])):
                c.fail(check, f"PM version {cap['version']}", m.group(1))
                continue
        c.ok(check, detail)
    for cid, p in caps:
        if cid not in expected_caps:
            c.note(f"capability {cid:#04x} at {p:#x} is not declared by the spec")

    # extended capabilities
    ext = walk_ext_caps(cfg)
    if ext:
        c.note("extended capabilities: " + ", ".join(f"{i:#06x}@{p:#x}" for i, p, _ in ext))
    for cap in spec.get("extendedCapabilities", []) or []:
        nm = str(cap.get("id", "")).lower()
        eid = EXT_CAP_IDS.get(nm)
        if eid is None:
            try:
                eid = num(cap.get("id"))
            except ValueError:
                c.skip(f"extcap-{nm}", "unknown extended capability id in spec")
                continue
        check = f"extcap-{nm}"
        if not express:
            c.skip(check, "spec is not PCI Express (express=false): no extended config space")
            continue
        if eid in EXT_CAP_HIDDEN_BY_QEMU:
            c.skip(check, f"QEMU's vfio-pci never exposes {EXT_CAP_HIDDEN_BY_QEMU[eid]} to the guest")
            continue
        found = [p for i, p, _ in ext if i == eid]
        if not found:
            c.fail(check, f"extended capability {eid:#06x}", "absent")
            continue
        if eid == 0x0003 and cap.get("serial") is not None:
            want = num(cap["serial"])
            got = struct.unpack_from("<Q", cfg, found[0] + 4)[0]
            pretty = "-".join(f"{(want >> (8 * k)) & 0xFF:02x}" for k in range(7, -1, -1))
            shown = f"Device Serial Number {pretty}" in lspci_text
            if got == want and shown:
                c.ok(check, f"serial={pretty}")
            else:
                c.fail(check, f"serial {pretty} (config and lspci)", f"{got:#018x} lspci_shows={shown}")
            continue
        label = EXT_CAP_LSPCI.get(eid)
        if label and not re.search(r"Capabilities: \[\w+ v\d+\] " + re.escape(label), lspci_text):
            c.fail(check, f"lspci to show '{label}'", "not shown")
            continue
        c.ok(check, f"at={found[0]:#x}")

    # ---------------------------------------------------------- IGD: ASLS at config 0xFC
    igd = spec.get("igd")
    if isinstance(igd, dict) and igd.get("asls") is not None:
        want = num(igd["asls"])
        got = struct.unpack_from("<I", cfg, 0xFC)[0] if len(cfg) >= 0x100 else None
        c.eq("igd-asls-0xfc", want, got, hx(8))

    # ---------------------------------------------------------- MMIO
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

    # ---------------------------------------------------------- doorbell, DMA, interrupts
    db = spec.get("doorbell")
    if not db:
        c.note("spec has no doorbell: DMA and interrupt checks skipped")
        return
    d = log.first("doorbell")
    if not d:
        c.fail("doorbell", "doorbell registers read", "no record")
        return
    c.eq("doorbell-magic", DOORBELL_MAGIC, hexint(d.get("magic")), hx(8))
    c.eq("doorbell-version", DOORBELL_VERSION, hexint(d.get("version")), hx(8))
    s = log.first("scratch")
    c.eq("scratch-readback", SCRATCH_VALUE, hexint(s.get("readback")) if s else None, hx(8))

    nb = log.first("dma-nobme")
    if nb:
        ok = hexint(nb.get("error")) == 1 and nb.get("word0") == nb.get("sentinel")
        if ok:
            c.ok("dma-needs-busmaster", "error=1, memory untouched")
        else:
            c.fail("dma-needs-busmaster", f"ERROR=1 and word0={nb.get('sentinel')} with Bus Master off",
                   f"error={nb.get('error')} word0={nb.get('word0')}")
    else:
        c.fail("dma-needs-busmaster", "a dma-nobme record", "none")

    fill = log.first("dma-fill")
    setup = log.first("dma-setup") or {}
    pat = hexint(setup.get("pattern")) if setup.get("pattern") else DMA_PATTERN
    dlen = int(setup.get("len", DMA_LEN)) if str(setup.get("len", "")).isdigit() else DMA_LEN
    if fill:
        ok = fill.get("timeout") == "0" and hexint(fill.get("error")) == 0 and \
            hexint(fill.get("completions_after")) == (hexint(fill.get("completions_before")) or 0) + 1
        if ok:
            c.ok("dma-fill-complete", f"completions={fill.get('completions_after')} error=0")
        else:
            c.fail("dma-fill-complete", "COMPLETIONS+1 and ERROR=0",
                   f"completions {fill.get('completions_before')}->{fill.get('completions_after')} error={fill.get('error')} timeout={fill.get('timeout')}")
    else:
        c.fail("dma-fill-complete", "a dma-fill record", "none")
    words = log.first("dma-words") or {}
    wbad = [(k, v, (pat + int(k[1:])) & 0xFFFFFFFF) for k, v in words.items()
            if re.fullmatch(r"w\d+", k) and hexint(v) != (pat + int(k[1:])) & 0xFFFFFFFF]
    if words and not wbad:
        c.ok("dma-pattern-words", " ".join(f"{k}={v}" for k, v in words.items()))
    else:
        c.fail("dma-pattern-words", "words PATTERN+i" if not wbad else f"{wbad[0][0]}={wbad[0][2]:#010x}",
               "no record" if not words else f"{wbad[0][0]}={wbad[0][1]}")
    expected_bytes = b"".join(struct.pack("<I", (pat + i) & 0xFFFFFFFF) for i in range(dlen // 4))
    md = log.first("dma-md5")
    if md:
        import hashlib
        want = hashlib.md5(expected_bytes).hexdigest()
        c.eq("dma-pattern-md5", f"{want} ({dlen} bytes)", f"{md.get('md5')} ({md.get('len')} bytes)")
    cs = log.first("dma-checksum")
    if cs:
        want = fnv1a32(expected_bytes)
        if cs.get("timeout") == "0" and hexint(cs.get("error")) == 0 and hexint(cs.get("result")) == want:
            c.ok("dma-checksum", f"result={want:#010x}")
        else:
            c.fail("dma-checksum", f"RESULT={want:#010x} ERROR=0",
                   f"result={cs.get('result')} error={cs.get('error')} timeout={cs.get('timeout')}")
    else:
        c.fail("dma-checksum", "a dma-checksum record", "none")

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
