import DeviceSpecs
import Glibc
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// `vfu serve` as a process: spec validation before listening, the socket file's
/// lifecycle, and SIGTERM.
@Suite struct ServeCommandTests {
    struct BadSpec: Sendable, CustomStringConvertible {
        var name: String
        var json: String
        /// Substrings the error must contain: the field, then the reason.
        var field: String
        var reason: String
        var description: String { name }
    }

    static let ids = #""ids": {"vendor": "0x1b36", "device": "0x0011"}"#

    static let badSpecs: [BadSpec] = [
        BadSpec(name: "non-power-of-two BAR",
                json: #"{"name": "x", \#(ids), "bars": [{"index": 0, "size": 3000}]}"#,
                field: "bars[0].size", reason: "not a power of two"),
        BadSpec(name: "unknown key",
                json: #"{"name": "x", \#(ids), "colour": "blue"}"#,
                field: "colour", reason: "unknown key"),
        BadSpec(name: "unknown nested key",
                json: #"{"name": "x", \#(ids), "bars": [{"index": 0, "size": 4096, "sise": 1}]}"#,
                field: "bars[0].sise", reason: "unknown key"),
        BadSpec(name: "overlapping BARs",
                json: #"{"name": "x", \#(ids), "bars": [{"index": 0, "size": 4096, "bits": 64}, {"index": 1, "size": 4096}]}"#,
                field: "bars[1]", reason: "overlaps BAR0"),
        BadSpec(name: "value out of range",
                json: #"{"name": "x", "ids": {"vendor": "0x1b36", "device": "0x10000"}}"#,
                field: "ids.device", reason: "out of range"),
        BadSpec(name: "MSI vectors out of range",
                json: #"{"name": "x", \#(ids), "interrupts": {"msi": {"vectors": 3}}}"#,
                field: "interrupts.msi", reason: "3"),
        BadSpec(name: "not JSON",
                json: #"{"name": "x", "#,
                field: "", reason: "not valid JSON"),
    ]

    @Test(arguments: badSpecs)
    func aBadSpecExitsWithStatus2BeforeListening(_ bad: BadSpec) throws {
        let dir = makeTempDir("badspec")
        defer { removeTempDir(dir) }
        let spec = dir + "/bad.json"
        let sock = dir + "/s.sock"
        writeWholeFile(spec, bad.json)
        let p = try VFUProcess.serve(spec: spec, socket: sock, waitForSocket: false)
        let status = p.wait(timeoutMs: 20_000)
        #expect(status == .exited(2), "\(bad.name): \(String(describing: status))")
        #expect(!fileExists(sock), "\(bad.name): the socket was never created")
        let err = p.stderr
        #expect(err.contains(spec), "\(bad.name): stderr names the file: \(err)")
        if !bad.field.isEmpty { #expect(err.contains(bad.field), "\(bad.name): stderr names the field: \(err)") }
        #expect(err.contains(bad.reason), "\(bad.name): stderr gives the reason: \(err)")
        p.kill()
    }

    @Test func aMissingSpecFileExitsWithStatus2() throws {
        let dir = makeTempDir("nospec")
        defer { removeTempDir(dir) }
        let p = try VFUProcess.serve(spec: dir + "/missing.json", socket: dir + "/s.sock", waitForSocket: false)
        #expect(p.wait(timeoutMs: 20_000) == .exited(2))
        #expect(!fileExists(dir + "/s.sock"))
        #expect(p.stderr.contains(dir + "/missing.json"))
    }

    @Test func anExistingRegularFileIsNeverReplaced() throws {
        let dir = makeTempDir("regfile")
        defer { removeTempDir(dir) }
        let path = dir + "/s.sock"
        writeWholeFile(path, "precious data\n")
        let p = try VFUProcess.serve(socket: path, waitForSocket: false)
        let status = p.wait(timeoutMs: 20_000)
        #expect(status != nil && status != .exited(0), "refuses: \(String(describing: status))")
        #expect(readWholeFile(path) == "precious data\n", "the file is untouched")
        #expect(fileMode(path).map { $0 & S_IFMT == S_IFREG } == true)
        #expect(p.stderr.contains(path), "stderr names the path: \(p.stderr)")
        p.kill()
    }

    @Test func aStaleSocketFileIsReplacedAndALiveOneIsNot() throws {
        let dir = makeTempDir("stale")
        defer { removeTempDir(dir) }
        let path = dir + "/s.sock"
        // A socket file nobody listens on (a server that crashed).
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let b = Array(path.utf8)
            raw.copyBytes(from: b)
            raw[b.count] = 0
        }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(r == 0)
        close(s)
        #expect(fileMode(path).map { $0 & S_IFMT == S_IFSOCK } == true)

        let p = try VFUProcess.serve(socket: path)
        defer { p.kill() }
        let c = try makeClient(path)
        #expect(try c.deviceInfo().numRegions == 9)
        #expect(fileMode(path).map { $0 & 0o777 } == 0o600, "socket created 0600")

        // A second server on the same, live socket refuses and leaves it alone.
        let q = try VFUProcess(arguments: ["serve", specPath("default.json"), "--socket", path], stderrPath: dir + "/q.err")
        let status = q.wait(timeoutMs: 20_000)
        #expect(status != nil && status != .exited(0), "\(String(describing: status))")
        #expect(try c.deviceInfo().numIRQs == 5, "the first server still serves its client")
        #expect(try makeClient(path).deviceInfo().numIRQs == 5, "and new ones")
        q.kill()
    }

    @Test func theSocketIs0600AndSIGTERMRemovesItAndExits0() throws {
        let dir = makeTempDir("sigterm")
        defer { removeTempDir(dir) }
        let path = dir + "/s.sock"
        let p = try VFUProcess.serve(socket: path)
        defer { p.kill() }
        let mode = try #require(fileMode(path))
        #expect(mode & S_IFMT == S_IFSOCK)
        #expect(mode & 0o7777 == 0o600, "mode \(String(mode & 0o7777, radix: 8))")
        // With a client connected and idle.
        let c = try makeClient(path)
        #expect(try c.deviceInfo().numRegions == 9)
        p.signal(SIGTERM)
        let status = p.wait(timeoutMs: 10_000)
        #expect(status == .exited(0), "\(String(describing: status)); stderr: \(p.stderr)")
        #expect(!fileExists(path), "the socket file is removed")
    }

    @Test func theServeCommandRefusesBadOptions() throws {
        let dir = makeTempDir("opts")
        defer { removeTempDir(dir) }
        // Neither --socket nor --fd; and a max transfer QEMU would refuse.
        for args in [["serve", specPath("default.json")],
                     ["serve", specPath("default.json"), "--socket", dir + "/s.sock", "--max-data-xfer-size", "134217728"]] {
            let p = try VFUProcess(arguments: args, stderrPath: dir + "/err")
            let status = p.wait(timeoutMs: 20_000)
            #expect(status != nil && status != .exited(0), "\(args): \(String(describing: status))")
            #expect(!fileExists(dir + "/s.sock"))
            p.kill()
        }
    }

    static let allSpecs = ["default.json", "express-endpoint.json", "minimal.json", "igd.json", "igd-extvbt.json",
                           "nvlink2.json", "nvlink2-npu.json", "nvgrace.json", "nvgrace-gb200.json", "pasid.json",
                           "zpci.json", "migratable-vf.json"]

    /// Every spec, with a client connected that owns the device and one that only
    /// looks: SIGTERM and SIGINT end the server with status 0 and remove the socket,
    /// whatever threads its device model started.
    @Test(arguments: allSpecs)
    func stopSignalsEndEverySpecWithStatus0(spec: String) throws {
        for sig in [SIGTERM, SIGINT] {
            let dir = makeTempDir("stop")
            defer { removeTempDir(dir) }
            let path = dir + "/s.sock"
            let p = try VFUProcess.serve(spec: specPath(spec), socket: path, extra: ["--log-level", "notice"])
            defer { p.kill() }
            let owner = try makeClient(path)
            try owner.writeConfig16(0x04, 0x6)
            let observer = try makeClient(path)
            #expect(try observer.deviceInfo().numRegions >= 9)
            p.signal(sig)
            let status = p.wait(timeoutMs: 10_000)
            #expect(status == .exited(0), "\(spec), signal \(sig): \(String(describing: status)); stderr: \(p.stderr)")
            #expect(!fileExists(path), "\(spec): the socket file is removed")
            #expect(p.stderr.contains("closing 2 live connection(s)"), "\(spec): \(p.stderr)")
            #expect(throws: ClientError.self) { _ = try owner.deviceInfo() }
        }
    }

    /// `--fd` must name a listening Unix stream socket; anything else is refused before
    /// serving (it used to spin on accept at 100% CPU).
    @Test func serveFDRefusesWhatIsNotAListeningUnixSocket() throws {
        let dir = makeTempDir("fdcheck")
        defer { removeTempDir(dir) }
        // fd 99 is not open in the child (posix_spawn closes nothing, but our fds are CLOEXEC).
        let closed = try VFUProcess(arguments: ["serve", specPath("default.json"), "--fd", "99"], stderrPath: dir + "/closed.err")
        #expect(closed.wait(timeoutMs: 20_000) == .exited(2))
        #expect(closed.stderr.contains("--fd 99: fd 99 is not open"), "\(closed.stderr)")
        // fd 0 is /dev/null in the child: not a socket.
        let file = try VFUProcess(arguments: ["serve", specPath("default.json"), "--fd", "0"], stderrPath: dir + "/file.err")
        #expect(file.wait(timeoutMs: 20_000) == .exited(2))
        #expect(file.stderr.contains("is not a socket"), "\(file.stderr)")
        // fd 1 is a regular file.
        let out = try VFUProcess(arguments: ["serve", specPath("default.json"), "--fd", "1"], stderrPath: dir + "/out.err")
        #expect(out.wait(timeoutMs: 20_000) == .exited(2))
        #expect(out.stderr.contains("is not a socket"), "\(out.stderr)")
    }

    /// Several devices in one process, each on its own socket and isolated: one client
    /// owning one device does not make the other busy; both stop with status 0.
    @Test func severalSpecsAreServedByOneProcessEachOnItsOwnSocket() throws {
        let dir = makeTempDir("multi")
        defer { removeTempDir(dir) }
        let p = try VFUProcess(arguments: ["serve", specPath("default.json"), specPath("minimal.json"),
                                           "--socket-dir", dir, "--log-level", "warning"], stderrPath: dir + "/err")
        defer { p.kill() }
        #expect(waitUntil(timeoutMs: 20_000) { fileExists(dir + "/default.sock") && fileExists(dir + "/minimal.sock") }, "\(p.stderr)")
        let a = try makeClient(dir + "/default.sock")
        let b = try makeClient(dir + "/minimal.sock")
        #expect(try a.readConfig32(0) != b.readConfig32(0), "two different devices")
        try a.writeConfig16(0x04, 0x2)
        try b.writeConfig16(0x04, 0x2)   // each device has its own owner
        #expect(try a.readConfig16(0x04) == 0x2 && b.readConfig16(0x04) == 0x2)
        let a2 = try makeClient(dir + "/default.sock")
        a2.expectErrno(.EBUSY) { try a2.writeConfig16(0x04, 0) }
        p.signal(SIGTERM)
        #expect(p.wait(timeoutMs: 10_000) == .exited(0), "\(p.stderr)")
        #expect(!fileExists(dir + "/default.sock") && !fileExists(dir + "/minimal.sock"))
        // Pairing rules: one --socket per spec.
        let bad = try VFUProcess(arguments: ["serve", specPath("default.json"), specPath("minimal.json"), "--socket", dir + "/x.sock"],
                                 stderrPath: dir + "/bad.err")
        #expect(bad.wait(timeoutMs: 20_000) != .exited(0))
        #expect(bad.stderr.contains("2 spec(s) but 1 --socket"), "\(bad.stderr)")
    }

    /// systemd socket activation: LISTEN_FDS sockets from fd 3, LISTEN_PID this process,
    /// LISTEN_FDNAMES matching the specs' names (here in the opposite order).
    @Test func socketActivationServesThePassedSocketsByName() throws {
        let dir = makeTempDir("activation")
        defer { removeTempDir(dir) }
        let la = try UnixListener(path: dir + "/a.sock"), lb = try UnixListener(path: dir + "/b.sock")
        defer { la.close(); lb.close() }
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 2, dir + "/err", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&fa, la.fd.rawValue, 3)   // dup2 clears CLOEXEC
        posix_spawn_file_actions_adddup2(&fa, lb.fd.rawValue, 4)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        // fd 3 (a.sock) is named "minimal", fd 4 (b.sock) "default"; the specs come the other way round.
        let script = "LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=minimal:default exec \"$0\" serve \"$1\" \"$2\""
        let args = ["/bin/sh", "-c", script, vfuPath, specPath("default.json"), specPath("minimal.json")]
        let argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        #expect(posix_spawn(&pid, "/bin/sh", &fa, &attr, argv, environ) == 0)
        defer { if pid > 0 { kill(pid, SIGKILL); var st: Int32 = 0; waitpid(pid, &st, 0) } }
        let onA = try makeClient(dir + "/a.sock"), onB = try makeClient(dir + "/b.sock")
        let minimal = try DeviceSpecSummary(specPath("minimal.json")), standard = try DeviceSpecSummary(specPath("default.json"))
        #expect(try onA.readConfig32(0) == minimal.ids, "fd 3 serves the spec named minimal")
        #expect(try onB.readConfig32(0) == standard.ids, "fd 4 serves the spec named default")
        kill(pid, SIGTERM)
        var st: Int32 = 0
        #expect(waitpid(pid, &st, 0) == pid && st == 0, "status \(st): \(readWholeFile(dir + "/err"))")
        pid = 0
    }
}

/// The vendor and device ids of a spec file, as a client sees them in config dword 0.
struct DeviceSpecSummary {
    let ids: UInt32
    init(_ path: String) throws {
        let id = try DeviceSpec.load(path: path).configuration.identity
        ids = UInt32(id.vendor) | UInt32(id.device) << 16
    }
}
