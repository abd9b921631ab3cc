import Glibc
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// MSG_CTRUNC, produced for real: the server's fd limit is lowered so the kernel
/// cannot install every fd of a SET_IRQS and truncates the ancillary data. The
/// message cannot be trusted, so that connection is closed; the fds that did
/// arrive are closed too, and the server goes on serving.
@Suite struct ControlTruncationTests {
    func prlimit(_ pid: pid_t, soft: Int) throws {
        var p: pid_t = 0
        let args = ["prlimit", "--pid", "\(pid)", "--nofile=\(soft):"]
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        guard posix_spawnp(&p, "prlimit", nil, nil, argv, environ) == 0 else { throw TestFailure("cannot run prlimit") }
        var st: Int32 = 0
        waitpid(p, &st, 0)
        guard st == 0 else { throw TestFailure("prlimit failed: status \(st)") }
    }

    @Test func truncatedFDsCloseOnlyThatConnection() throws {
        let dir = makeTempDir("ctrunc")
        let server = try VFUProcess.serve(socket: dir + "/s.sock")
        defer { server.kill() }
        let bystander = try VFIOUserClient(path: dir + "/s.sock")
        let victim = try VFIOUserClient(path: dir + "/s.sock")
        let before = server.fdCount
        // Room for only 3 more descriptors; the SET_IRQS below carries 8.
        try prlimit(server.pid, soft: before + 3)
        let efds = try (0..<8).map { _ in try EventFD.create() }
        let req = SetIRQs(argsz: 20, flags: [.dataEventFD, .actionTrigger], index: IRQIndex.msix.rawValue, start: 0, count: 8)
        #expect(throws: ClientError.self) {
            try victim.call(.deviceSetIRQs, payload: req.encoded, fds: efds.map(\.rawValue))
        }
        try prlimit(server.pid, soft: 1024)
        #expect(server.isAlive)
        // The victim's connection is gone and no fd of that message stayed behind.
        #expect(server.fdCount(settlingTo: before - 1) == before - 1)
        // The other client never noticed; new clients are served.
        #expect(try bystander.deviceInfo().numRegions == 9)
        #expect(try VFIOUserClient(path: dir + "/s.sock").deviceInfo().flags.contains(.pci))
        #expect(server.stderr.contains("MSG_CTRUNC"), "\(server.stderr)")
    }

    /// Out of fds, accept fails with EMFILE for as long as the client waits: the server
    /// backs off instead of spinning (it used to log ~200,000 lines a second), and the
    /// waiting client is served once an fd is free again.
    @Test func acceptBacksOffWhenOutOfFDs() throws {
        let dir = makeTempDir("emfile")
        defer { removeTempDir(dir) }
        let path = dir + "/s.sock"
        let server = try VFUProcess.serve(socket: path)
        defer { server.kill() }
        // The limit is on fd numbers: below the lowest free one, accept has no room.
        let open = Set(server.fdTable.compactMap { Int($0.split(separator: " ")[0]) })
        let lowestFree = (0...).first { !open.contains($0) }!
        try prlimit(server.pid, soft: lowestFree)
        let waiting = try MessageSocket.connect(path: path)   // queued by the kernel, not accepted
        defer { waiting.fd.close() }
        usleep(1_500_000)
        let lines = server.stderr.split(separator: "\n").filter { $0.contains("accept failed") }
        #expect(!lines.isEmpty, "the EMFILE is logged: \(server.stderr)")
        #expect(lines.count <= 10, "\(lines.count) accept failures logged in 1.5 s: it spins")
        try prlimit(server.pid, soft: 1024)
        let c = try VFIOUserClient(path: path)
        #expect(try c.deviceInfo().numRegions == 9, "served once fds are free")
        #expect(server.isAlive)
    }
}
