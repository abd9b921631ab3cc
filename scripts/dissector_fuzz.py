#!/usr/bin/env python3
"""dissector_fuzz.py OUT.pcapng [--seed N] [--count N]

Writes a capture (our LINKTYPE_USER0 pseudo-header, docs/debugging.md) of seeded random
vfio-user messages: every command, both directions and types, payloads that are valid,
short, long or garbage, capability chains that loop or point outside, raw and truncated
records. scripts/capture-test.sh decodes it with tshark and fails on any Lua error:
the dissector must mark bad input, never break on it.
"""
import argparse
import random
import struct


def block(btype, body):
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def pad4(b):
    return b + b"\0" * ((4 - len(b) % 4) % 4)


def header():
    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 0))
    idb = block(1, struct.pack("<HHI", 147, 0, 262144) + struct.pack("<HH", 9, 1) + b"\x06\0\0\0" + struct.pack("<I", 0))
    return shb + idb


def packet(ts, data, orig):
    return block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), orig) + pad4(data) + struct.pack("<I", 0))


def payload(rng, cmd, reply):
    """A payload that is plausible about half of the time."""
    choice = rng.random()
    if choice < 0.2:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
    if cmd == 1:
        js = rng.choice([b'{"capabilities":{"max_msg_fds":16,"pgsizes":4096,"write_multiple":true}}', b"{", b"", b'{"a":1}'])
        return struct.pack("<HH", 0, 0) + js + rng.choice([b"\0", b""])
    if cmd == 5 and reply:
        caps = rng.choice([0, 32, 8, 40, 1000])
        body = struct.pack("<IIIIQQ", rng.choice([32, 64, 200]), rng.choice([0x3, 0xF, 0x8]), 0, caps, 4096, 0)
        # a chain: sparse mmap, type, a loop, or garbage
        chain = rng.choice([
            struct.pack("<HHIII", 1, 1, 56, rng.choice([1, 2, 100]), 0) + struct.pack("<QQ", 0, 4096) + struct.pack("<HHIII", 2, 1, 0, 0x80008086, 1),
            struct.pack("<HHI", 3, 1, 32),  # points back at itself
            struct.pack("<HHI", 4, 1, 0) + b"\1" * 8,
            b"\xff" * rng.randint(0, 20),
        ])
        return body + chain
    if cmd == 4 and reply:
        return struct.pack("<IIIIII", 48, 0x83, 9, 5, rng.choice([24, 0, 4, 100]), 0) + struct.pack("<HHI", 5, 1, 0) + b"\1\0\0\0\0\0\0\0"
    if cmd in (9, 10):
        count = rng.choice([0, 1, 4, 8, 256, 1 << 20, 0xFFFFFFFF])
        return struct.pack("<QII", rng.getrandbits(64), rng.randint(0, 12), count) + b"\xab" * rng.choice([0, 1, 4, min(count, 300)])
    if cmd in (11, 12):
        count = rng.choice([0, 4, 4096, 1 << 40])
        return struct.pack("<QQ", rng.getrandbits(64), count) + b"\xcd" * rng.choice([0, 4, 12, 64])
    if cmd == 15:
        n = rng.choice([0, 1, 3, 1000])
        return struct.pack("<Q", n) + b"".join(struct.pack("<QIIQ", i * 4, 0, rng.randint(0, 9), i) for i in range(min(n, rng.randint(0, 5))))
    if cmd == 16:
        feature = rng.choice([1, 2, 6, 7, 8, 9, 99])
        flags = feature | rng.choice([0x10000, 0x20000, 0x40000, 0x30000, 0])
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 4, 8, 16, 24, 40, 100])))
        if feature == 6 and len(data) >= 16:
            data = data[:8] + struct.pack("<II", rng.choice([0, 1, 5000]), 0) + data[16:]
        return struct.pack("<II", 8 + len(data), flags) + data
    if cmd in (17, 18):
        return struct.pack("<II", rng.randint(0, 100), rng.choice([0, 4, 1 << 30])) + b"\x01" * rng.choice([0, 4, 50])
    if cmd == 6 and reply:
        n = rng.choice([0, 1, 2, 1000])
        return struct.pack("<IIII", 16 + 40 * n, 0, 0, n) + b"\x02" * rng.choice([0, 40, 80, 13])
    return bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 8, 16, 20, 24, 32, 40])))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--count", type=int, default=3000)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    out = [header()]
    ts = 1_700_000_000_000_000
    for i in range(a.count):
        cmd = rng.choice(list(range(0, 20)) + [99, 0xFFFF])
        reply = rng.random() < 0.5
        flags = (1 if reply else 0) | rng.choice([0, 0, 0, 0x10, 0x20, 0x2, 0xF0])
        p = payload(rng, cmd, reply)
        size = 16 + len(p) if rng.random() < 0.85 else rng.choice([0, 8, 16, 1 << 20, 0xFFFFFFFF])
        msg = struct.pack("<HHIII", rng.randint(0, 8), cmd, size, flags, rng.choice([0, 22, 5, 4097])) + p
        nfds = rng.choice([0, 0, 0, 1, 2])
        cflags = rng.choice([0, 0, 0, 0, 1, 2, 4])
        if rng.random() < 0.05:
            msg = msg[: rng.randint(0, 15)]
        pseudo = struct.pack("<BBHIHH", 1, rng.randint(0, 1), 12 + 16 * nfds, rng.randint(1, 3), nfds, cflags)
        pseudo += b"".join(struct.pack("<IIQ", rng.randint(0, 6), 0, rng.getrandbits(32)) for _ in range(nfds))
        data = pseudo + msg
        if rng.random() < 0.02:
            data = data[: rng.randint(0, len(data))]
        ts += rng.randint(1, 1000)
        out.append(packet(ts, data, len(data)))
    with open(a.out, "wb") as f:
        f.write(b"".join(out))


if __name__ == "__main__":
    main()
