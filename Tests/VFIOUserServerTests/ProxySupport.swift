import Glibc
import Logging
import TestSupport
import VFIOUserCapture
import VFIOUserProtocol
import VFIOUserProxy
import VFIOUserTransport

/// A `VFIOUserProxy` in this process, in front of `upstream`, capturing to a file.
final class InProcessProxy: @unchecked Sendable {
    let dir: String
    let path: String
    let capturePath: String
    let proxy: VFIOUserProxy
    let capture: CaptureFile

    init(upstream: String, tag: String = "proxy", validate: Bool = false) throws {
        dir = makeTempDir(tag)
        path = dir + "/p.sock"
        capturePath = dir + "/c.pcapng"
        capture = try CaptureFile(path: capturePath)
        var settings = MessageRecorder.Settings()
        settings.validate = validate
        var logger = Logger(label: "proxy-test")
        logger.logLevel = .error
        proxy = VFIOUserProxy(upstreamPath: upstream,
                              recorder: MessageRecorder(capture: capture, settings: settings, logger: logger), logger: logger)
        proxy.start(on: try UnixListener(path: path))
    }

    /// Every record so far, read back from the file.
    func records() throws -> [CaptureRecord] { try Pcapng.records(in: readFileBytes(capturePath)) }

    /// Waits until the proxy has no open session.
    func settle(timeoutMs: Int = 5000) -> Bool {
        var waited = 0
        while proxy.sessionCounts.active > 0 && waited < timeoutMs {
            sleepMs(5)
            waited += 5
        }
        return proxy.sessionCounts.active == 0
    }

    func stop() {
        proxy.stop()
        capture.close()
        removeTempDir(dir)
    }
}

/// A whole file's bytes.
func readFileBytes(_ path: String) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return [] }
    defer { close(fd) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return out
}

/// Sends `bytes` (with `fds`), shuts down writing and returns everything the peer
/// sends back until it closes: the whole observable behaviour for one malformed input.
func exchange(path: String, prefix: [UInt8], bytes: [UInt8], fds: [Int32] = [], timeoutMs: Int32 = 5000) throws -> [UInt8] {
    let s = try connectRetrying(path)
    defer { s.fd.close() }
    // Two sends: fds ride on the first byte of the send that carries them, so they
    // belong to `bytes`, not to the VERSION before it.
    if !prefix.isEmpty { try s.send(prefix) }
    try s.send(bytes, fds: fds)
    _ = shutdown(s.fd.rawValue, Int32(SHUT_WR))
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    while s.waitReadable(timeoutMs: timeoutMs) {
        let n = buf.withUnsafeMutableBytes { recv(s.fd.rawValue, $0.baseAddress, $0.count, 0) }
        if n <= 0 { return out }
        out += buf[0..<n]
    }
    throw TestFailure("no end of stream within \(timeoutMs) ms (got \(out.count) bytes)")
}
