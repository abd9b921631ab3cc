"""DMA through the doorbell: refused without Bus Master, then a fill of the guest's
DMA window with PATTERN+i (words, md5) and a checksum the device computes over it."""
import hashlib
import re
import struct

from .guestlog import hexint
from .spec import DMA_LEN, DMA_PATTERN


def fnv1a32(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def check(ctx):
    log, c = ctx.log, ctx.c
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
