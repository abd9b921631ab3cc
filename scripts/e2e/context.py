"""What every check family reads: the spec, the guest log, the checker and the
command-line options, and what several families derive from them (computed once)."""

# A family returns STOP when the families after it cannot run (no device, no doorbell).
STOP = "stop"


class Context:
    def __init__(self, spec, log, c, args):
        self.spec = spec
        self.log = log
        self.c = c
        self.args = args
        self.ids = spec.get("ids") or {}
        self.express = bool(spec.get("express", False))
        self.sysfs = log.first("sysfs") or {}
        self.cfg = log.config()
        self.lspci_text = "\n".join(log.sections.get("lspci", []))
