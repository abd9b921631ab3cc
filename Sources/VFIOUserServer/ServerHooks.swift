import PCICore
import VFIOUserProtocol
import VFIOUserTransport

/// What becomes of a reply after a control plane looked at it.
public enum ReplyDisposition: Sendable, Equatable {
    /// Send it now.
    case send
    /// Hold it this long, then send it (a slow device, for VMM and driver timeouts).
    case hold(ms: Int)
    /// Send nothing and drop the connection (surprise removal as the VMM sees it).
    case drop
}

/// One region access served on the fast path (InPlaceAccess.swift) while a control
/// plane only keeps counts: what it touched and how it ended, no data.
public struct ServedRegionAccess: Sendable {
    /// REGION_READ, REGION_WRITE or REGION_WRITE_MULTI (one value per entry).
    public var command: Command
    /// The region index (`RegionIndex`).
    public var region: UInt32
    /// Offset of the access in the region.
    public var offset: UInt64
    /// Bytes accessed.
    public var size: Int
    /// nil when the access succeeded.
    public var error: VFIOErrno?
    /// Which entry of a REGION_WRITE_MULTI this is (0 for the other commands), so a
    /// message is counted once.
    public var entry: Int = 0

    /// Whether the access wrote.
    public var isWrite: Bool { command != .regionRead }
}

/// A control plane attached to a server (`ServerOptions.hooks`, docs/control.md): it
/// sees every client command as the connection thread handles it. Unattached, a
/// connection pays one nil check per command.
///
/// While `needsEveryCommand` is false (nobody watches, no fault is armed or waiting
/// for its trigger) region accesses keep the in-place fast path and are reported
/// before their reply with `regionAccessServed(_:session:token:)`, so a control plane
/// that only counts costs about as little as none (issue #12, item 7).
///
/// All calls run on the connection's thread, without the device lock.
public protocol ServerHooks: AnyObject, Sendable {
    /// Whether every command must go through `commandWillStart`/`commandDidFinish` with
    /// its bytes (a watcher or a fault needs them); read once per message, so it
    /// should be an atomic load.
    var needsEveryCommand: Bool { get }
    /// A region access was served on the fast path; `token` is what
    /// `commandWillStart` returned for its message.
    func regionAccessServed(_ access: ServedRegionAccess, session: SessionID, token: UInt64)
    /// A command is about to be handled; the value returned comes back in
    /// ``commandDidFinish(_:request:reply:error:session:token:)`` (e.g. a start time).
    func commandWillStart(_ header: MessageHeader, session: SessionID) -> UInt64
    /// The command was handled: `reply` is the reply payload (nil when it failed with
    /// `error`) and may be changed in place (registers that read all-ones, corrupted
    /// config bytes). `request` is the whole message, header included.
    func commandDidFinish(_ header: MessageHeader, request: [UInt8], reply: inout [UInt8]?, error: VFIOErrno?,
                          session: SessionID, token: UInt64) -> ReplyDisposition
}

extension Connection {
    /// `dispatch` with a control plane attached: the hooks see the command and its
    /// outcome, and may rewrite, hold or drop the reply.
    func dispatchHooked(_ msg: ReceivedMessage, _ hooks: any ServerHooks) {
        let token = hooks.commandWillStart(msg.header, session: session)
        var outcome = Dispatcher.handle(msg, on: self)
        var reply: [UInt8]? = nil
        var error: VFIOErrno? = nil
        switch outcome {
        case .reply(let p, _, _): reply = p
        case .error(let e, _), .errorThenClose(let e): error = e
        }
        switch hooks.commandDidFinish(msg.header, request: msg.bytes, reply: &reply, error: error, session: session, token: token) {
        case .send: break
        case .hold(let ms): sleepMs(ms)
        case .drop:
            switch outcome {
            case .reply(_, _, let consumed), .error(_, let consumed): if !consumed { msg.closeFDs() }
            case .errorThenClose: msg.closeFDs()
            }
            logger.notice("\(msg.header.command) #\(msg.header.messageID): dropping the connection (control plane)")
            streamBroken = true
            socket.shutdown()
            return
        }
        if case .reply(_, let fds, let consumed) = outcome, let reply { outcome = .reply(reply, fds: fds, consumedFDs: consumed) }
        deliver(outcome, for: msg)
    }
}
