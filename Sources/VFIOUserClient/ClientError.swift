import VFIOUserProtocol
import VFIOUserTransport

/// Why a client call failed.
public enum ClientError: Error, CustomStringConvertible, Equatable {
    /// The server answered with an error reply.
    case server(Command, VFIOErrno)
    /// Sending or receiving failed at the socket.
    case transport(TransportError)
    /// The server's reply could not be decoded.
    case malformedReply(Command, String)
    /// No reply within the timeout.
    case timeout(Command)
    /// The connection is gone.
    case disconnected

    /// One line naming the command and the errno or cause.
    public var description: String {
        switch self {
        case .server(let c, let e): "\(c) failed: \(e)"
        case .transport(let t): "transport: \(t)"
        case .malformedReply(let c, let why): "malformed \(c) reply: \(why)"
        case .timeout(let c): "\(c): no reply in time"
        case .disconnected: "disconnected"
        }
    }

    /// The server's errno, if this is an error reply.
    public var errno: VFIOErrno? { if case .server(_, let e) = self { e } else { nil } }
}
