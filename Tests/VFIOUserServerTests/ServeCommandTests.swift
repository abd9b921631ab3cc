import Glibc
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
}
