"""The QEMU e2e's checks of what the test guest saw against a device spec, one module
per check family; scripts/e2e_check.py is the command line.

FAMILIES runs in order; a family that returns STOP (no device, no doorbell) ends the
run, because the ones after it have nothing to look at. Every check prints one
PASS/FAIL line through the Checker, which the e2e scripts count."""
from . import bars, capabilities, config, dma, doorbell, harness, interrupts, registers, variants
from .context import STOP, Context

FAMILIES = [  # (name, check): the order of the output
    ("harness", harness.check),                       # QEMU's exit, server connection, device present
    ("config", config.check),                         # ids, raw config space, header type, size
    ("bars", bars.check),                             # sizes and types, sysfs and lspci
    ("capabilities", capabilities.check),             # MSI, MSI-X, Express, listed capabilities
    ("extended-capabilities", capabilities.check_extended),
    ("variants", variants.check),                     # IGD's ASLS, ...
    ("registers", registers.check),                   # register reads, write/readback
    ("doorbell", doorbell.check),                     # magic, version, scratch
    ("dma", dma.check),                               # bus master, fill, pattern, checksum
    ("interrupts", interrupts.check),                 # uio bind, INTx rounds
]


def run_checks(spec, log, c, args):
    ctx = Context(spec, log, c, args)
    for _, check in FAMILIES:
        if check(ctx) is STOP:
            return
