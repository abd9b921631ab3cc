"""Capabilities: MSI, MSI-X and Express as the interrupts and express settings imply
them, each listed capability in config space and lspci, and the extended
capabilities of a PCI Express device (QEMU hides some of them from the guest)."""
import re
import struct

from .spec import num

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


def spec_cap_id(cap, table):
    """A spec capability's id as written (lower case) and its PCI ID: by name from
    table, else the number itself; None when it is neither."""
    name = str(cap.get("id", "")).lower()
    cid = table.get(name)
    if cid is None:
        try:
            cid = num(cap.get("id"))
        except ValueError:
            return name, None
    return name, cid


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


def check(ctx):
    spec, c, cfg, express, lspci_text = ctx.spec, ctx.c, ctx.cfg, ctx.express, ctx.lspci_text
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
        cid_name, cid = spec_cap_id(cap, CAP_IDS)
        if cid is None:
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


def check_extended(ctx):
    spec, c, cfg, express, lspci_text = ctx.spec, ctx.c, ctx.cfg, ctx.express, ctx.lspci_text
    ext = walk_ext_caps(cfg)
    if ext:
        c.note("extended capabilities: " + ", ".join(f"{i:#06x}@{p:#x}" for i, p, _ in ext))
    for cap in spec.get("extendedCapabilities", []) or []:
        nm, eid = spec_cap_id(cap, EXT_CAP_IDS)
        if eid is None:
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
