"""The guest console log (scripts/qemu-run-guest.sh): the "E2E ..." records and
sections printed by scripts/guest/vfu-guest-test, and the config space they dump."""
import re

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


def hexint(s):
    try:
        return int(s, 16) if str(s).lower().startswith("0x") else int(s, 0)
    except (TypeError, ValueError):
        return None

