import FoundationEssentials
import Synchronization
import VFIOUserTransport

/// A client of the control socket (what `vfu ctl` and the tests use).
public final class ControlClient: Sendable {
    public let socket: LineSocket
    private let nextID = Atomic<Int>(1)

    public init(path: String) throws(TransportError) {
        socket = LineSocket(fd: try MessageSocket.connect(path: path).fd)
    }

    public enum ClientError: Error, CustomStringConvertible {
        case closed
        case badReply(String)
        public var description: String {
            switch self {
            case .closed: "the control socket closed"
            case .badReply(let s): "unreadable reply: \(s)"
            }
        }
    }

    /// Sends `request` (an id is added when it has none) and returns the reply.
    public func call(_ request: ControlRequest, timeoutMs: Int32 = 10_000) throws(ClientError) -> ControlReply {
        var q = request
        if q.id == nil { q.id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue }
        guard socket.write(LineJSON.encode(q)) else { throw .closed }
        return try readReply(timeoutMs: timeoutMs)
    }

    /// Sends a raw line (tests send broken JSON this way).
    public func send(line: String) -> Bool { socket.write(Array((line + "\n").utf8)) }

    public func readLine(timeoutMs: Int32 = 10_000) throws(ClientError) -> [UInt8] {
        do { return try socket.readLine(timeoutMs: timeoutMs) } catch { throw .closed }
    }

    public func readReply(timeoutMs: Int32 = 10_000) throws(ClientError) -> ControlReply {
        let line = try readLine(timeoutMs: timeoutMs)
        do { return try JSONDecoder().decode(ControlReply.self, from: Data(line)) } catch {
            throw .badReply(String(decoding: line, as: UTF8.self))
        }
    }

    public func readEvent(timeoutMs: Int32 = 10_000) throws(ClientError) -> ControlEvent {
        let line = try readLine(timeoutMs: timeoutMs)
        do { return try JSONDecoder().decode(ControlEvent.self, from: Data(line)) } catch {
            throw .badReply(String(decoding: line, as: UTF8.self))
        }
    }

    public func close() { socket.close() }
}
