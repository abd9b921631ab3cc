"""What a variant adds to the device that the guest can see. Each entry of VARIANTS
runs when the spec has that variant's section; the variants' other behaviour
(NVLink2's regions, nvgrace's BARs, zPCI and PASID capabilities) is checked by the
BAR and capability families against `vfu check-spec --effective`."""
import struct

from .checker import hx
from .spec import num


def check_igd(ctx, igd):
    """IGD: the OpRegion's address (ASLS) at config 0xFC."""
    c, cfg = ctx.c, ctx.cfg
    if isinstance(igd, dict) and igd.get("asls") is not None:
        want = num(igd["asls"])
        got = struct.unpack_from("<I", cfg, 0xFC)[0] if len(cfg) >= 0x100 else None
        c.eq("igd-asls-0xfc", want, got, hx(8))


VARIANTS = {  # spec section -> its check
    "igd": check_igd,
}


def check(ctx):
    for section, run in VARIANTS.items():
        if ctx.spec.get(section) is not None:
            run(ctx, ctx.spec[section])
