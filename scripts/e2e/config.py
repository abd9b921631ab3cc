"""Config space: the device's identity in sysfs and in the raw dump, its header type
and the config space size (4 KiB for PCI Express)."""
import struct

from .checker import hx
from .guestlog import hexint
from .spec import num


def check(ctx):
    c, ids, express, cfg, sy = ctx.c, ctx.ids, ctx.express, ctx.cfg, ctx.sysfs
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
