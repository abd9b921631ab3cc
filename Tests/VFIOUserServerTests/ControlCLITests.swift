import Glibc
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// `vfu serve --control` and `vfu ctl` as processes: the CLI's replies, exit codes, and
/// a spec whose faults section is wrong.
@Suite struct ControlCLITests {
    /// Runs `vfu ARGS`, returning its exit status and stdout.
    func vfu(_ args: [String], dir: String) throws -> (ChildStatus?, String) {
        let p = try VFUProcess(arguments: args, stderrPath: dir + "/ctl.err")
        let st = p.wait(timeoutMs: 20_000)
        return (st, readWholeFile(dir + "/ctl.err.out") + readWholeFile(dir + "/ctl.err"))
    }

    @Test func ctlTalksToServeOverTheControlSocket() throws {
        let dir = makeTempDir("ctlcli")
        defer { removeTempDir(dir) }
        let sock = dir + "/s.sock", ctl = dir + "/c.sock"
        let server = try VFUProcess.serve(socket: sock, extra: ["--control", ctl])
        defer { server.kill() }
        var waited = 0
        while !fileExists(ctl) && waited < 10_000 { sleepMs(10); waited += 10 }
        #expect((fileMode(ctl) ?? 0) & 0o777 == 0o600)

        var (st, out) = try vfu(["ctl", "--control", ctl, "peek", "config", "0"], dir: dir)
        #expect(st == .exited(0) && out.hasPrefix("0x51b36"), "\(out)")
        (st, out) = try vfu(["ctl", "--control", ctl, "--json", "peek", "bar0", "0x100", "--raw"], dir: dir)
        #expect(st == .exited(0) && out.contains("\"value\":\"0xcafef00d\""), "\(out)")
        (st, out) = try vfu(["ctl", "--control", ctl, "irq", "msix", "--vector", "1"], dir: dir)
        #expect(st == .exited(1) && out.contains("not-enabled"), "\(out)")
        (st, out) = try vfu(["ctl", "--control", ctl, "--json", "peek", "bar0", "0x1000", "--raw"], dir: dir)
        #expect(st == .exited(1) && out.contains("\"error\":\"out-of-range\""), "\(out)")
        (st, out) = try vfu(["ctl", "--control", ctl, "fault", "add", "hang", "--region", "bar0", "--offset", "0x100",
                             "--on-write", "bar0:0x8=0x1"], dir: dir)
        #expect(st == .exited(0) && out.contains("fault 1 pending hang"), "\(out)")
        (st, out) = try vfu(["ctl", "--control", ctl, "fault", "list"], dir: dir)
        #expect(st == .exited(0) && out.contains("fault 1 pending"), "\(out)")

        // A VMM-like client writes the trigger value: the hang is armed and its reads are all-ones.
        let c = try makeClient(sock)
        defer { c.close() }
        try c.writeConfig16(0x04, 0x2)
        try c.write32(region: 0, offset: 0x8, 1)
        #expect(try c.read32(region: 0, offset: 0x100) == 0xffff_ffff)
        (st, out) = try vfu(["ctl", "--control", ctl, "fault", "remove", "1"], dir: dir)
        #expect(st == .exited(0))
        #expect(try c.read32(region: 0, offset: 0x100) == 0xcafe_f00d)
        (st, out) = try vfu(["ctl", "--control", ctl, "stats"], dir: dir)
        #expect(st == .exited(0) && out.contains("REGION_READ: count=2"), "\(out)")
        (st, out) = try vfu(["ctl", "--control", "/nonexistent/c.sock", "devices"], dir: dir)
        #expect(st == .exited(2) && out.contains("cannot connect"), "\(out)")
    }

    @Test func oneControlSocketAddressesEveryDeviceOfTheProcessByName() throws {
        let dir = makeTempDir("ctlmulti")
        defer { removeTempDir(dir) }
        let ctl = dir + "/c.sock"
        let p = try VFUProcess(arguments: ["serve", specPath("default.json"), specPath("minimal.json"), "--socket-dir", dir,
                                           "--control", ctl, "--log-level", "warning"], stderrPath: dir + "/serve.err")
        defer { p.kill() }
        var waited = 0
        while !fileExists(ctl) && waited < 10_000 { sleepMs(10); waited += 10 }
        var (st, out) = try vfu(["ctl", "--control", ctl, "--json", "devices"], dir: dir)
        #expect(st == .exited(0) && out.contains("\"name\":\"default\"") && out.contains("\"name\":\"minimal\""), "\(out)")
        (st, out) = try vfu(["ctl", "--control", ctl, "peek", "config", "2", "--length", "2"], dir: dir)
        #expect(st == .exited(1) && out.contains("device-required"), "\(out)")
        (st, out) = try vfu(["ctl", "--control", ctl, "--device", "minimal", "peek", "config", "2", "--length", "2"], dir: dir)
        #expect(st == .exited(0) && out.hasPrefix("0x11"), "\(out)")
        (st, out) = try vfu(["ctl", "--control", ctl, "--device", "default", "peek", "config", "2", "--length", "2"], dir: dir)
        #expect(st == .exited(0) && out.hasPrefix("0x5"), "\(out)")
        (st, out) = try vfu(["ctl", "--control", ctl, "--device", "nvme", "peek", "config", "2"], dir: dir)
        #expect(st == .exited(1) && out.contains("unknown-device"), "\(out)")
    }

    @Test func serveRefusesASpecWithABadFault() throws {
        let dir = makeTempDir("ctlspec")
        defer { removeTempDir(dir) }
        var text = readWholeFile(specPath("default.json"))
        text.removeLast(2)
        text += ",\n  \"faults\": [{\"kind\": \"delay\", \"ms\": 0}]\n}\n"
        writeWholeFile(dir + "/bad.json", text)
        let (st, out) = try vfu(["serve", dir + "/bad.json", "--socket", dir + "/s.sock", "--control", dir + "/c.sock"], dir: dir)
        #expect(st == .exited(2), "\(out)")
        #expect(out.contains("bad.json: faults[0].ms: a delay needs ms, 1...60000"), "\(out)")
        let (st2, out2) = try vfu(["check-spec", dir + "/bad.json"], dir: dir)
        #expect(st2 == .exited(2) && out2.contains("faults[0].ms"), "\(out2)")
    }
}
