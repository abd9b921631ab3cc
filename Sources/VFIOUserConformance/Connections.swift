import VFIOUserProtocol
import VFIOUserTransport

/// How a server takes connections.
///
/// Ours serves many clients at once; a libvfio-user server attaches one client at a
/// time (and some samples exit when that client leaves), which is all QEMU needs. The
/// suite works with both: with one at a time, checks share one connection, and a check
/// that needs a connection of its own gets one by relaunching the server when the suite
/// runs it (`--server-cmd`); without that, such checks are skipped.
public enum ConnectionModel: String, Sendable {
    /// Any number of clients at once.
    case concurrent
    /// One client at a time (libvfio-user).
    case oneAtATime = "one-at-a-time"
}

/// The connections the checks use, and the server process when the suite runs it.
final class Connections {
    private let fixedPath: String
    let timeoutMs: Int32
    private(set) var model: ConnectionModel
    let server: ServerProcess?
    /// The shared connection (one at a time), and what the first one got for QEMU's VERSION.
    private(set) var first: RawPeer?
    let firstVersion: RawPeer.Received?
    /// The bytes of QEMU's VERSION request.
    static let qemuVersionRequest: [UInt8] = {
        var w = WireWriter()
        w.u16(0); w.u16(0); w.append(Array(RawPeer.qemuVersionJSON.utf8)); w.u8(0)
        return w.bytes
    }()

    var socketPath: String { server?.socketPath ?? fixedPath }

    /// Connects and negotiates as QEMU does; with `model` nil, finds out whether a
    /// second client is served while the first stays connected.
    init(socketPath: String, timeoutMs: Int32, model: ConnectionModel?, server: ServerProcess?) {
        fixedPath = socketPath
        self.timeoutMs = timeoutMs
        self.server = server
        server?.launch(during: "start")
        let path = server?.socketPath ?? socketPath
        first = RawPeer.connect(path: path, timeoutMs: timeoutMs, retryMs: server == nil ? 0 : 2000)
        firstVersion = first?.call(.version, Self.qemuVersionRequest)
        if let model {
            self.model = model
        } else if case .message(let m) = firstVersion, !m.header.isError,
                  let second = try? RawPeer(path: path, timeoutMs: min(timeoutMs, 1000)) {
            self.model = second.negotiate() != nil ? .concurrent : .oneAtATime
        } else {
            self.model = .concurrent   // nothing to compare; the checks report the failures
        }
        // The probe's second client may still be waiting in the listen queue of a
        // one-at-a-time server; start over with a clean server so that it does not
        // count against a later check.
        if self.model == .oneAtATime, let server, model == nil {
            first = nil
            server.stop(during: "connection.model")
            server.launch(during: "connection.model")
            first = RawPeer.connect(path: server.socketPath, timeoutMs: timeoutMs, retryMs: 2000)
            _ = first?.negotiate()
        }
    }

    /// Whether a check needing a connection of its own can run.
    var canFresh: Bool { model == .concurrent || server != nil }

    /// A new connection that has not negotiated, for check `id`; nil when the server
    /// takes one connection at a time and the suite cannot relaunch it.
    func fresh(_ id: String) -> RawPeer? {
        server?.reap(during: "the checks before \(id)")
        switch model {
        case .concurrent:
            if let p = try? RawPeer(path: socketPath, timeoutMs: timeoutMs) { return p }
            guard let server else { return nil }
            server.launch(during: id)
            return RawPeer.connect(path: server.socketPath, timeoutMs: timeoutMs, retryMs: 2000)
        case .oneAtATime:
            guard let server else { return nil }
            first = nil
            server.stop(during: id)
            server.launch(during: id)
            return RawPeer.connect(path: server.socketPath, timeoutMs: timeoutMs, retryMs: 2000)
        }
    }

    /// A negotiated connection for check `id`: a new one, or the shared one. nil (with
    /// the reason recorded against `id`) if there is none.
    func negotiated(_ r: inout ConformanceSuite.Recorder, _ id: String) -> RawPeer? {
        server?.reap(during: "the checks before \(id)")
        switch model {
        case .concurrent:
            var p = try? RawPeer(path: socketPath, timeoutMs: timeoutMs)
            if p == nil, let server, !server.isRunning {
                server.launch(during: id)
                p = RawPeer.connect(path: server.socketPath, timeoutMs: timeoutMs, retryMs: 2000)
            }
            guard let p else { r.fail(id, "cannot connect to \(socketPath)", "transport"); return nil }
            guard p.negotiate() != nil else { r.fail(id, "VERSION negotiation failed", "§2"); return nil }
            return p
        case .oneAtATime:
            if let p = first, p.isOpen { return p }
            guard let server else {
                r.skip(id, "the one connection the server serves was closed by an earlier check", "transport")
                return nil
            }
            first = nil
            server.stop(during: id)
            server.launch(during: id)
            guard let p = RawPeer.connect(path: server.socketPath, timeoutMs: timeoutMs, retryMs: 2000) else {
                r.fail(id, "the relaunched server takes no connection (\(server.reap(during: id).map { "\($0)" } ?? "running"))", "transport")
                return nil
            }
            guard p.negotiate() != nil else { r.fail(id, "VERSION negotiation failed after a relaunch", "§2"); return nil }
            first = p
            return p
        }
    }

    /// Gives up the shared connection (one at a time), so that the next client can be
    /// the server's next one.
    func dropShared() { first = nil }

    /// Records a check that needs a connection of its own as skipped, when there is none.
    func skipUnlessFresh(_ r: inout ConformanceSuite.Recorder, _ id: String) -> Bool {
        guard !canFresh else { return false }
        r.skip(id, "needs a connection of its own; the server serves one at a time (run it with --server-cmd to check this)", "transport")
        return true
    }
}
