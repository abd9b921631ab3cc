import DeviceSpecs
import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport
import VariantDevices

// Shared helpers for the server integration tests: temp dirs, in-process servers,
// `vfu serve` subprocesses, and a raw peer for byte-level input.

func specPath(_ name: String) -> String { repositoryRoot + "/specs/" + name }

/// A fresh private directory; short so socket paths fit in sun_path.
func makeTempDir(_ tag: String) -> String {
    var template = Array("/tmp/vfu-\(tag.prefix(8))-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
}

/// Removes a temp dir made by `makeTempDir` and the plain files/sockets in it.
func removeTempDir(_ dir: String) {
    guard let d = opendir(dir) else { return }
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        if name == "." || name == ".." { continue }
        unlink(dir + "/" + name)
    }
    closedir(d)
    rmdir(dir)
}

func fileExists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
}

func fileMode(_ path: String) -> mode_t? {
    var st = stat()
    return lstat(path, &st) == 0 ? st.st_mode : nil
}

func readWholeFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 4096) }
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

func writeWholeFile(_ path: String, _ text: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    precondition(fd >= 0, "cannot create \(path)")
    _ = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
    close(fd)
}

func sleepMs(_ ms: Int) { usleep(UInt32(ms * 1000)) }

/// Connects, retrying briefly while the listener is coming up.
func connectRetrying(_ path: String, timeoutMs: Int = 5000) throws -> MessageSocket {
    var waited = 0
    while true {
        do { return try MessageSocket.connect(path: path) } catch {
            if waited >= timeoutMs { throw error }
            sleepMs(10)
            waited += 10
        }
    }
}

func makeClient(_ path: String, capabilities: VersionCapabilities = VFIOUserClient.defaultCapabilities) throws -> VFIOUserClient {
    let c = VFIOUserClient(socket: try connectRetrying(path), capabilities: capabilities)
    c.timeoutMs = 5000
    try c.negotiate()
    return c
}

// MARK: - In-process server

/// A server for a spec file, running in this process on its own socket.
final class InProcessServer: @unchecked Sendable {
    let dir: String
    let path: String
    let device: PCIDevice
    let server: VFIOUserServer

    /// `prepare` may change the device (add regions, ...) before anything listens.
    init(spec: String = "default.json", tag: String = "inproc", options: ServerOptions = ServerOptions(),
         prepare: (PCIDevice) throws -> Void = { _ in }) throws {
        let registry = VariantRegistry.standard
        let s = try registry.loadSpec(path: specPath(spec))
        device = try registry.bind(s).driver.build(s)
        try prepare(device)
        dir = makeTempDir(tag)
        path = dir + "/s.sock"
        let listener = try UnixListener(path: path)
        server = VFIOUserServer(device: device, options: options)
        server.start(on: listener)
    }

    /// Serves a device built straight from a core configuration.
    init(configuration: PCIDeviceConfiguration, tag: String, options: ServerOptions = ServerOptions()) throws {
        device = try PCIDevice(configuration: configuration)
        dir = makeTempDir(tag)
        path = dir + "/s.sock"
        let listener = try UnixListener(path: path)
        server = VFIOUserServer(device: device, options: options)
        server.start(on: listener)
    }

    func client(capabilities: VersionCapabilities = VFIOUserClient.defaultCapabilities) throws -> VFIOUserClient {
        try makeClient(path, capabilities: capabilities)
    }

    func stop() {
        server.stop()
        removeTempDir(dir)
    }
}

// MARK: - `vfu serve` subprocess

/// The `vfu` binary built next to this test executable.
let vfuPath: String = {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    if n > 0 {
        let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // The test binary may be inside a bundle directory; look upward a little.
        var dir = String(exe[..<(exe.lastIndex(of: "/") ?? exe.endIndex)])
        for _ in 0..<3 {
            if access(dir + "/vfu", X_OK) == 0 { return dir + "/vfu" }
            guard let slash = dir.lastIndex(of: "/") else { break }
            dir = String(dir[..<slash])
        }
    }
    return repositoryRoot + "/.build/debug/vfu"
}()

/// Exit status of a finished child.
enum ChildStatus: Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)
    var description: String {
        switch self {
        case .exited(let c): "exited with \(c)"
        case .signaled(let s): "killed by signal \(s)"
        }
    }
}

/// A `vfu` subprocess with stdout/stderr captured in files.
final class VFUProcess: @unchecked Sendable {
    let pid: pid_t
    let stderrPath: String
    private(set) var status: ChildStatus?

    init(arguments: [String], stderrPath: String) throws {
        self.stderrPath = stderrPath
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, stderrPath + ".out", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&fa, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        // The child must not inherit our blocked signals (the test runner may block some).
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var dfl = sigset_t()
        sigemptyset(&dfl)
        sigaddset(&dfl, SIGTERM)
        sigaddset(&dfl, SIGPIPE)
        posix_spawnattr_setsigdefault(&attr, &dfl)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv: [UnsafeMutablePointer<CChar>?] = ([vfuPath] + arguments).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var p: pid_t = 0
        let rc = posix_spawn(&p, vfuPath, &fa, &attr, argv, environ)
        guard rc == 0 else { throw TestFailure("posix_spawn \(vfuPath): \(String(cString: strerror(rc)))") }
        pid = p
    }

    /// `vfu serve SPEC --socket PATH`, waiting until the socket exists.
    static func serve(spec: String = specPath("default.json"), socket: String, extra: [String] = [],
                      waitForSocket: Bool = true) throws -> VFUProcess {
        let p = try VFUProcess(arguments: ["serve", spec, "--socket", socket, "--log-level", "warning"] + extra,
                               stderrPath: socket + ".err")
        if waitForSocket {
            var waited = 0
            while fileMode(socket).map({ $0 & S_IFMT != S_IFSOCK }) ?? true {
                if !p.isAlive { throw TestFailure("vfu serve \(p.status!): \(p.stderr)") }
                guard waited < 20_000 else { p.kill(); throw TestFailure("vfu serve did not create \(socket)") }
                sleepMs(10)
                waited += 10
            }
        }
        return p
    }

    var stderr: String { readWholeFile(stderrPath) }

    /// Reaps the child if it ended; true while it runs.
    var isAlive: Bool {
        if status != nil { return false }
        var st: Int32 = 0
        let r = waitpid(pid, &st, WNOHANG)
        if r == pid {
            status = (st & 0x7F) == 0 ? .exited((st >> 8) & 0xFF) : .signaled(st & 0x7F)
            return false
        }
        return r == 0
    }

    /// Waits for the child to end; nil on timeout.
    @discardableResult
    func wait(timeoutMs: Int) -> ChildStatus? {
        var waited = 0
        while isAlive {
            if waited >= timeoutMs { return nil }
            sleepMs(5)
            waited += 5
        }
        return status
    }

    func signal(_ sig: Int32) { if status == nil { Glibc.kill(pid, sig) } }

    func kill() {
        guard isAlive else { return }
        Glibc.kill(pid, SIGKILL)
        wait(timeoutMs: 5000)
    }

    /// Number of open descriptors of the child (from /proc/PID/fd).
    var fdCount: Int {
        guard let d = opendir("/proc/\(pid)/fd") else { return -1 }
        defer { closedir(d) }
        var n = 0
        while readdir(d) != nil { n += 1 }
        return n - 2  // "." and ".."
    }

    /// What each open descriptor of the child is (readlink of /proc/PID/fd/N), for
    /// messages about leaks.
    var fdTable: [String] {
        guard let d = opendir("/proc/\(pid)/fd") else { return [] }
        defer { closedir(d) }
        var out: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name == "." || name == ".." { continue }
            var buf = [UInt8](repeating: 0, count: 256)
            let n = buf.withUnsafeMutableBufferPointer { b in
                b.withMemoryRebound(to: CChar.self) { readlink("/proc/\(pid)/fd/\(name)", $0.baseAddress!, 255) }
            }
            out.append("\(name) -> \(n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : "?")")
        }
        return out.sorted()
    }

    /// Threads of the child (from /proc/PID/task).
    var threadCount: Int {
        guard let d = opendir("/proc/\(pid)/task") else { return -1 }
        defer { closedir(d) }
        var n = 0
        while readdir(d) != nil { n += 1 }
        return n - 2
    }

    /// Memory mappings of the child (lines of /proc/PID/maps).
    var mappingCount: Int { readWholeFile("/proc/\(pid)/maps").split(separator: "\n").count }

    /// Waits until `probe` returns `target`; returns the last value seen.
    func value(_ probe: () -> Int, settlingTo target: Int, timeoutMs: Int = 5000) -> Int {
        var waited = 0
        var n = probe()
        while n != target && waited < timeoutMs {
            sleepMs(10)
            waited += 10
            n = probe()
        }
        return n
    }

    /// Waits until the child's fd count equals `target` (it may lag while
    /// connection threads finish); returns the last count seen.
    func fdCount(settlingTo target: Int, timeoutMs: Int = 5000) -> Int {
        var waited = 0
        var n = fdCount
        while n != target && waited < timeoutMs {
            sleepMs(10)
            waited += 10
            n = fdCount
        }
        return n
    }

    /// The fd count once it stopped changing for a while.
    func stableFDCount(quietMs: Int = 200, timeoutMs: Int = 5000) -> Int {
        var last = fdCount, stableFor = 0, waited = 0
        while stableFor < quietMs && waited < timeoutMs {
            sleepMs(20)
            waited += 20
            let n = fdCount
            if n == last { stableFor += 20 } else { stableFor = 0; last = n }
        }
        return last
    }

    deinit { kill() }
}

/// A `vfu serve` of specs/default.json in its own temp dir.
final class ServedDevice: @unchecked Sendable {
    let dir: String
    let path: String
    let process: VFUProcess

    init(tag: String, spec: String = specPath("default.json")) throws {
        dir = makeTempDir(tag)
        path = dir + "/s.sock"
        process = try VFUProcess.serve(spec: spec, socket: path)
    }

    /// A brand-new client answers GET_INFO correctly (the server lives on).
    func stillServes() -> Bool {
        guard process.isAlive else { return false }
        guard let c = try? makeClient(path), let info = try? c.deviceInfo() else { return false }
        c.close()
        // 9 PCI regions, or more with device-specific ones (IGD, NVLink2, ...).
        return info.numRegions >= 9 && info.numIRQs == 5 && info.flags.contains(.pci)
    }

    func stop() {
        process.signal(SIGTERM)
        if process.wait(timeoutMs: 5000) == nil { process.kill() }
        removeTempDir(dir)
    }
}

// MARK: - Raw peer

/// What came back on a raw connection.
enum Incoming: CustomStringConvertible {
    case message(ReceivedMessage)
    case closed
    case timeout
    case failed(String)

    var description: String {
        switch self {
        case .message(let m):
            "\(m.header.command) #\(m.header.messageID) flags 0x\(String(m.header.flags, radix: 16)) errno \(m.header.errorNumber) size \(m.header.messageSize)"
        case .closed: "closed"
        case .timeout: "timeout"
        case .failed(let why): "failed: \(why)"
        }
    }

    var message: ReceivedMessage? { if case .message(let m) = self { m } else { nil } }
    var isClosed: Bool { if case .closed = self { true } else { false } }
}

/// A byte-level vfio-user peer for malformed input.
final class RawPeer: @unchecked Sendable {
    let socket: MessageSocket
    var nextID: UInt16 = 0x100

    init(path: String) throws { socket = try connectRetrying(path) }

    func sendRaw(_ bytes: [UInt8], fds: [Int32] = []) throws { try socket.send(bytes, fds: fds) }

    @discardableResult
    func send(_ command: Command, _ payload: [UInt8], flags: UInt32 = 0, id: UInt16? = nil, fds: [Int32] = []) throws -> UInt16 {
        let mid = id ?? nextID
        if id == nil { nextID &+= 1 }
        try socket.send(header: MessageHeader(messageID: mid, command: command, messageSize: 0, flags: flags),
                        payload: payload, fds: fds)
        return mid
    }

    func receive(timeoutMs: Int32 = 5000) -> Incoming {
        guard socket.waitReadable(timeoutMs: timeoutMs) else { return .timeout }
        do {
            guard let m = try socket.receive(maxMessageSize: 1 << 21, maxFDs: 16) else { return .closed }
            return .message(m)
        } catch {
            if case .transport(let t) = error, case .system(_, let e) = t, e == ECONNRESET { return .closed }
            return .failed("\(error)")
        }
    }

    /// Sends and returns the next message.
    func call(_ command: Command, _ payload: [UInt8], flags: UInt32 = 0, fds: [Int32] = []) throws -> (UInt16, Incoming) {
        let id = try send(command, payload, flags: flags, fds: fds)
        return (id, receive())
    }

    func negotiate(_ caps: VersionCapabilities = VFIOUserClient.defaultCapabilities) throws {
        let (id, x) = try call(.version, VersionPayload(major: 0, minor: 0, capabilities: caps).encoded)
        guard let m = x.message, m.header.messageID == id, !m.header.isError else { throw TestFailure("VERSION: \(x)") }
    }

    /// A valid GET_INFO right now gets its own, correct reply (the stream is in sync).
    func inSync() -> Bool {
        guard let (id, x) = try? call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded), let m = x.message else { return false }
        guard m.header.messageID == id, m.header.command == .deviceGetInfo, m.header.isReply, !m.header.isError,
              let info = try? DeviceInfo(payload: Array(m.payload)) else { return false }
        return info.numRegions >= 9 && info.numIRQs == 5
    }

    func close() { socket.fd.close() }
}

/// The message's errno if it is an error reply.
func errorNumber(_ x: Incoming) -> UInt32? {
    guard let m = x.message, m.header.isReply, m.header.isError else { return nil }
    return m.header.errorNumber
}

extension VFIOUserClient {
    /// The client error's errno, for `#expect(throws:)`-style checks.
    func expectErrno(_ e: VFIOErrno, _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try body()
            Issue.record("expected \(e), got success", sourceLocation: sourceLocation)
        } catch let c as ClientError {
            #expect(c.errno == e, "\(c)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected \(e), got \(error)", sourceLocation: sourceLocation)
        }
    }
}

/// Register offsets of the built-in doorbell model in specs/default.json (BAR0 offset 0).
enum Doorbell {
    static let bar: UInt32 = 0
    static let magic: UInt64 = 0x00, version: UInt64 = 0x04, scratch: UInt64 = 0x08, completions: UInt64 = 0x0C
    static let addrLow: UInt64 = 0x10, addrHigh: UInt64 = 0x14, length: UInt64 = 0x18, pattern: UInt64 = 0x1C
    static let doorbell: UInt64 = 0x20, irqVector: UInt64 = 0x24, result: UInt64 = 0x28, error: UInt64 = 0x2C
    static let irqCount: UInt64 = 0x30, irqAck: UInt64 = 0x34
    static let fill: UInt32 = 1, checksum: UInt32 = 2, interrupt: UInt32 = 3

    static func program(_ c: VFIOUserClient, address: UInt64, length: UInt32, pattern: UInt32 = 0, vector: UInt32 = 0) throws {
        try c.write32(region: bar, offset: addrLow, UInt32(truncatingIfNeeded: address))
        try c.write32(region: bar, offset: addrHigh, UInt32(truncatingIfNeeded: address >> 32))
        try c.write32(region: bar, offset: self.length, length)
        try c.write32(region: bar, offset: self.pattern, pattern)
        try c.write32(region: bar, offset: irqVector, vector)
    }

    /// Rings the doorbell and, unless `wait` is false, waits until COMPLETIONS moves:
    /// the write is answered at once and the command runs afterwards as a device job,
    /// as on hardware (a driver polls or waits for the interrupt).
    static func ring(_ c: VFIOUserClient, _ command: UInt32, posted: Bool = false, wait: Bool = true) throws {
        let before = wait ? try read(c, completions) : 0
        try c.write32(region: bar, offset: doorbell, command, posted: posted)
        if wait { try waitForCompletions(c, above: before) }
    }

    /// Polls COMPLETIONS until it passes `above` (10 s at most, then throws).
    static func waitForCompletions(_ c: VFIOUserClient, above: UInt32) throws {
        let deadline = monotonicMs() + 10_000
        while try read(c, completions) == above {
            guard monotonicMs() < deadline else { throw TestFailure("the doorbell command never completed") }
            usleep(200)
        }
    }

    static func read(_ c: VFIOUserClient, _ reg: UInt64) throws -> UInt32 { try c.read32(region: bar, offset: reg) }
}

/// Command register bits.
enum Cmd {
    static let io: UInt16 = 0x1, memory: UInt16 = 0x2, busMaster: UInt16 = 0x4
}

/// FNV-1a 32-bit, computed independently of the device model.
func fnv1a(_ data: [UInt8]) -> UInt32 {
    var h: UInt32 = 2_166_136_261
    for b in data { h ^= UInt32(b); h = h &* 16_777_619 }
    return h
}
