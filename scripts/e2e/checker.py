"""The PASS/FAIL/NOTE/SKIP lines every check prints. The e2e scripts count the lines
that start with "PASS " and "FAIL " (scripts/qemu-e2e.sh count), so the format is fixed."""


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
