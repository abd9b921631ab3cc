#!/usr/bin/env python3
"""qemu-e2e-hotplug.py - hot-plug a vfio-user device into a running guest and out
again, CYCLES times, through QMP device_add / device_del, and check each time that
the guest sees the device appear and go, and that the server's fd count comes back
to where it was (no fd leaked per connection).

One `vfu serve SPEC` for all cycles; the guest is scripts/vfu-qemu --guest (the
busybox shell, driven on its console) with a pcie-root-port to plug into (q35's
root bus takes no hot-plug). Prints PASS/FAIL lines and "N passed, M failed".

Usage: scripts/qemu-e2e-hotplug.py [--spec specs/minimal.json] [--cycles 10]

The spec must not have MSI-X: QEMU 11.1 aborts at device_del of a vfio-user device
with MSI-X (docs/qemu.md, "Hot-plug"); --expect-abort reproduces that and passes if
QEMU aborts as documented.
"""
import argparse
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
results = {"pass": 0, "fail": 0}


def check(name, ok, detail=""):
    if ok:
        print(f"PASS hotplug check={name}")
        results["pass"] += 1
    else:
        print(f"FAIL hotplug check={name}: {detail}")
        results["fail"] += 1
    sys.stdout.flush()
    return ok


class Console:
    """The guest's serial console through scripts/vfu-qemu's stdin and stdout."""

    def __init__(self, proc, log):
        self.proc, self.log, self.lines = proc, log, queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").replace("\r", "")
            self.log.write(line)
            self.log.flush()
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern, timeout):
        """The first line matching pattern within timeout seconds, or None."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            m = re.search(pattern, line)
            if m:
                return m

    def run(self, command):
        self.proc.stdin.write((command + "\n").encode())
        self.proc.stdin.flush()


class QMP:
    def __init__(self, path, timeout=30):
        end = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        self.f = self.s.makefile("rwb")
        self.events = []
        self._recv()  # greeting
        self.command("qmp_capabilities")

    def _recv(self):
        line = self.f.readline()
        if not line:
            raise EOFError("QMP connection closed (QEMU exited?)")
        return json.loads(line)

    def command(self, name, **args):
        try:
            self.f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
            self.f.flush()
        except OSError as e:
            return {"error": {"desc": f"QMP: {e} (QEMU exited?)"}}
        while True:
            try:
                m = self._recv()
            except (EOFError, OSError) as e:
                return {"error": {"desc": str(e)}}
            if "event" in m:
                self.events.append(m)
                continue
            return m

    def wait_event(self, name, timeout):
        end = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name:
                    return self.events.pop(i)
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                self.events.append(self._recv())
            except (socket.timeout, TimeoutError, EOFError, OSError):
                return None
            finally:
                self.s.settimeout(None)


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fd_count(pid, target, timeout=5.0):
    """Polls the fd count until it equals target (the server closes a connection's
    fds on its own thread), returning the last count seen."""
    end = time.monotonic() + timeout
    n = fd_count(pid)
    while n != target and time.monotonic() < end:
        time.sleep(0.02)
        n = fd_count(pid)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=os.path.join(REPO, "specs/minimal.json"))
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--expect-abort", action="store_true",
                    help="the spec has MSI-X: expect QEMU to abort at the first device_del")
    ap.add_argument("--timeout", type=int, default=30, help="seconds per step")
    opts = ap.parse_args()
    vfu = os.environ.get("VFU", os.path.join(REPO, ".build/debug/vfu"))
    log_dir = os.environ.get("LOG_DIR", os.path.join(REPO, ".build/vfu-logs"))
    os.makedirs(log_dir, exist_ok=True)
    spec = json.load(open(opts.spec))
    ids = (int(str(spec["ids"]["vendor"]), 0), int(str(spec["ids"]["device"]), 0))
    want = f"{ids[0]:04x}:{ids[1]:04x}"

    work = tempfile.mkdtemp(prefix="vfu-hotplug.")
    sock, qmp_path = os.path.join(work, "dev.sock"), os.path.join(work, "qmp.sock")
    slog = open(os.path.join(log_dir, "hotplug.server.log"), "w")
    server = subprocess.Popen([vfu, "serve", opts.spec, "--socket", sock], stdout=slog, stderr=subprocess.STDOUT)
    qemu = None
    t0 = time.monotonic()
    try:
        for _ in range(150):
            if os.path.exists(sock) or server.poll() is not None:
                break
            time.sleep(0.1)
        if not check("server-start", os.path.exists(sock), f"no socket (server status {server.poll()})"):
            return
        glog = open(os.path.join(log_dir, "hotplug.guest.log"), "w")
        qemu = subprocess.Popen(
            [os.path.join(HERE, "vfu-qemu"), "--guest", "--qmp", qmp_path, "--timeout", str(60 + opts.cycles * 20),
             "--", "-device", "pcie-root-port,id=rp1,chassis=1,slot=1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        con = Console(qemu, glog)
        if not check("guest-shell", con.wait_for(r"vfu-guest: ready", 90) is not None, "no shell prompt"):
            return
        qmp = QMP(qmp_path)
        # The device is not there yet; what the server holds now is the baseline.
        con.run(f"echo present-0: $(lspci -n | grep -c {want})")
        m = con.wait_for(r"^present-0: (\d+)", opts.timeout)
        check("absent-before", m is not None and m.group(1) == "0", f"got {m and m.group(0)}")
        base = fd_count(server.pid)
        ok_seen = ok_gone = ok_fds = 0
        counts = []
        for i in range(1, opts.cycles + 1):
            r = qmp.command("device_add", driver="vfio-user-pci", id="hp0", bus="rp1",
                            socket={"type": "unix", "path": sock})
            if "error" in r:
                check(f"device_add-{i}", False, r["error"].get("desc"))
                break
            # The guest scans the slot (ACPI hot-plug): poll lspci until the device is there.
            con.run(f"for t in $(seq 100); do lspci -n | grep -q {want} && break; sleep 0.1; done; "
                    f"echo seen-{i}: $(lspci -n | grep -c {want}) $(ls /sys/bus/pci/devices | wc -l)")
            m = con.wait_for(rf"^seen-{i}: (\d+)", opts.timeout)
            if m and m.group(1) == "1":
                ok_seen += 1
            else:
                check(f"guest-sees-{i}", False, f"got {m and m.group(0)}")
            r = qmp.command("device_del", id="hp0")
            if "error" in r:
                check(f"device_del-{i}", False, r["error"].get("desc"))
                break
            ev = qmp.wait_event("DEVICE_DELETED", opts.timeout)
            if ev is None and opts.expect_abort:
                break
            if ev is None:
                check(f"device-deleted-{i}", False, "no DEVICE_DELETED event"
                      + (f"; QEMU exited with status {qemu.poll()}" if qemu.poll() is not None else ""))
                break
            con.run(f"echo gone-{i}: $(lspci -n | grep -c {want})")
            m = con.wait_for(rf"^gone-{i}: (\d+)", opts.timeout)
            if m and m.group(1) == "0":
                ok_gone += 1
            else:
                check(f"guest-loses-{i}", False, f"got {m and m.group(0)}")
            n = settled_fd_count(server.pid, base)
            counts.append(n)
            if n == base:
                ok_fds += 1
        if opts.expect_abort:
            return
        check("guest-sees-every-add", ok_seen == opts.cycles, f"{ok_seen} of {opts.cycles}")
        check("guest-loses-every-del", ok_gone == opts.cycles, f"{ok_gone} of {opts.cycles}")
        check("server-fds-flat", ok_fds == opts.cycles and len(counts) == opts.cycles,
              f"baseline {base}, after each cycle {counts}")
        check("server-alive", server.poll() is None, f"server exited with {server.poll()}")
        con.run("poweroff")
        try:
            st = qemu.wait(timeout=opts.timeout)
        except subprocess.TimeoutExpired:
            st = None
        check("qemu-exit", st == 0, f"status {st}")
        print(f"hotplug: {opts.cycles} cycles, server fds {base} before and {counts[-1] if counts else '?'} after, "
              f"{time.monotonic() - t0:.1f}s", file=sys.stderr)
    finally:
        if opts.expect_abort and qemu is not None:
            try:
                st = qemu.wait(timeout=opts.timeout)
            except subprocess.TimeoutExpired:
                st = None
            tail = open(os.path.join(log_dir, "hotplug.guest.log")).read()
            m = re.search(r"Assertion .* failed", tail)
            check("qemu-aborts-at-msix-unplug", st == 134 and m is not None,
                  f"status {st}, {m.group(0) if m else 'no assertion message'}")
            if m:
                print(f"NOTE hotplug evidence: QEMU status {st}: {m.group(0)}")
        for p in (qemu, server):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for f in (sock, qmp_path):
            if os.path.exists(f):
                os.unlink(f)
        os.rmdir(work)
        print(f"{results['pass']} passed, {results['fail']} failed")


if __name__ == "__main__":
    main()
    sys.exit(0 if results["fail"] == 0 and results["pass"] > 0 else 1)
