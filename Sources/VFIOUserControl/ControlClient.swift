import FoundationEssentials
import Synchronization
import VFIOUserTransport

/// A client of the control socket (what `vfu ctl` and the tests use).
public final class ControlClient: Sendable {
    /// The connection to the control socket.
    public let socket: LineSocket
    private let nextID = Atomic<Int>(1)

    /// Connects to the control socket at `path`; throws when nothing listens there.
    public init(path: String) throws(TransportError) {
        socket = LineSocket(fd: try MessageSocket.connect(path: path).fd)
    }

    /// Why a call failed.
    public enum ClientError: Error, CustomStringConvertible {
        /// The socket closed, failed or timed out.
        case closed
        /// A line that is not the JSON expected (the line is attached).
        case badReply(String)
        /// One line for people.
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

    /// The next line, without its newline; throws `.closed` when the socket closes, fails or `timeoutMs` passes.
    public func readLine(timeoutMs: Int32 = 10_000) throws(ClientError) -> [UInt8] {
        do { return try socket.readLine(timeoutMs: timeoutMs) } catch { throw .closed }
    }

    /// The next line decoded as a reply; throws `.badReply` when it is not one.
    public func readReply(timeoutMs: Int32 = 10_000) throws(ClientError) -> ControlReply {
        let line = try readLine(timeoutMs: timeoutMs)
        do { return try JSONDecoder().decode(ControlReply.self, from: Data(line)) } catch {
            throw .badReply(String(decoding: line, as: UTF8.self))
        }
    }

    /// The next line of a `watch` stream decoded as an event; throws `.badReply` when it is not one.
    public func readEvent(timeoutMs: Int32 = 10_000) throws(ClientError) -> ControlEvent {
        let line = try readLine(timeoutMs: timeoutMs)
        do { return try JSONDecoder().decode(ControlEvent.self, from: Data(line)) } catch {
            throw .badReply(String(decoding: line, as: UTF8.self))
        }
    }

    /// Closes the connection.
    public func close() { socket.close() }
}
