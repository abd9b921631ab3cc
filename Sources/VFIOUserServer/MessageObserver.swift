import VFIOUserProtocol
import VFIOUserTransport

/// Sees every message a connection moves, for captures and protocol validation
/// (`vfu serve --pcap/--validate/--strict`). Called on connection threads, so an
/// implementation must be thread-safe; it must not keep or close the fds.
public protocol MessageObserver: Sendable {
    /// A message arrived from the client, before anything handles it.
    func received(_ message: ReceivedMessage, connection: Int)
    /// A message is about to go to the client (`header.messageSize` may still be 0: the
    /// size is the header plus `payload`).
    func sending(_ header: MessageHeader, payload: [UInt8], fds: [Int32], connection: Int)
    /// A client command is about to be dispatched: an errno refuses it instead (with an
    /// error reply unless it asked for none).
    func refusal(for command: ReceivedMessage, connection: Int) -> VFIOErrno?
    /// The connection has ended.
    func closed(connection: Int)
}
