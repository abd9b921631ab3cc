import VFIOUserProtocol
import VFIOUserTransport

/// How a server takes connections.
///
/// Ours serves many clients at once; a libvfio-user server attaches one client at a
/// time (and its samples exit when that client leaves), which is all QEMU needs. The
/// suite works with both: with one at a time, every check shares the first connection,
/// the checks that may end it run last, and those that need a connection of their own
/// are skipped.
public enum ConnectionModel: String, Sendable {
    case concurrent
    case oneAtATime = "one-at-a-time"
}

/// The connections the checks use.
final class Connections {
    let socketPath: String
    let timeoutMs: Int32
    let model: ConnectionModel
    /// The first connection, and what it got for QEMU's VERSION.
    let first: RawPeer?
    let firstVersion: RawPeer.Received?
    /// The bytes of QEMU's VERSION request.
    static let qemuVersionRequest: [UInt8] = {
        var w = WireWriter()
        w.u16(0); w.u16(0); w.append(Array(RawPeer.qemuVersionJSON.utf8)); w.u8(0)
        return w.bytes
    }()

    /// Connects and negotiates as QEMU does; with `model` nil, finds out whether a
    /// second client is served while the first stays connected.
    init(socketPath: String, timeoutMs: Int32, model: ConnectionModel?) {
        self.socketPath = socketPath
        self.timeoutMs = timeoutMs
        first = try? RawPeer(path: socketPath, timeoutMs: timeoutMs)
        firstVersion = first?.call(.version, Self.qemuVersionRequest)
        if let model {
            self.model = model
        } else if case .message(let m) = firstVersion, !m.header.isError,
                  let second = try? RawPeer(path: socketPath, timeoutMs: min(timeoutMs, 1000)) {
            self.model = second.negotiate() != nil ? .concurrent : .oneAtATime
        } else {
            self.model = .concurrent   // nothing to compare; the checks report the failures
        }
    }

    /// A new connection that has not negotiated, or nil when the server takes one
    /// connection at a time (the caller skips its check).
    func fresh() -> RawPeer? {
        model == .concurrent ? try? RawPeer(path: socketPath, timeoutMs: timeoutMs) : nil
    }

    /// A negotiated connection for check `id`: a new one, or the shared one. nil (with
    /// the reason recorded against `id`) if there is none.
    func negotiated(_ r: inout ConformanceSuite.Recorder, _ id: String) -> RawPeer? {
        switch model {
        case .concurrent:
            guard let p = try? RawPeer(path: socketPath, timeoutMs: timeoutMs) else {
                r.fail(id, "cannot connect to \(socketPath)", "transport"); return nil
            }
            guard p.negotiate() != nil else { r.fail(id, "VERSION negotiation failed", "§2"); return nil }
            return p
        case .oneAtATime:
            guard let p = first, p.isOpen else {
                r.skip(id, "the one connection the server serves was closed by an earlier check", "transport")
                return nil
            }
            return p
        }
    }

    /// Records a check that needs a connection of its own as skipped.
    func skipUnlessConcurrent(_ r: inout ConformanceSuite.Recorder, _ id: String) -> Bool {
        guard model == .oneAtATime else { return false }
        r.skip(id, "needs a connection of its own; the server serves one at a time", "transport")
        return true
    }
}
