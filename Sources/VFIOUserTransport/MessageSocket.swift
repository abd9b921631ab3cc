import CVFIOUserShim
import Glibc
import Synchronization
import VFIOUserProtocol

/// One message as it came off the socket: the decoded header, the whole message's
/// bytes (header included, so payload offsets are `MessageHeader.size + n`), and the
/// fds that rode with it, each owned exactly once.
public struct ReceivedMessage: Sendable {
    public var header: MessageHeader
    public var bytes: [UInt8]
    public var fds: [OwnedFD]

    public init(header: MessageHeader, bytes: [UInt8], fds: [OwnedFD]) {
        self.header = header
        self.bytes = bytes
        self.fds = fds
    }

    public var payload: ArraySlice<UInt8> { bytes[MessageHeader.size...] }
    public var payloadReader: WireReader { WireReader(bytes, from: MessageHeader.size) }

    /// Closes every fd nobody took.
    public func closeFDs() { for fd in fds { fd.close() } }
}

/// Why a receive failed. `framing` and `controlTruncated` mean the byte stream can
/// no longer be trusted; the connection must be closed (after an optional error reply).
public enum ReceiveError: Error, Equatable, CustomStringConvertible {
    case transport(TransportError)
    /// The header arrived but cannot be framed (size below 16 or above the limit).
    case framing(MessageHeader, String)
    /// More fds arrived than the negotiated limit (they have been closed). The body was consumed.
    case tooManyFDs(MessageHeader, received: Int, limit: Int)

    public var description: String {
        switch self {
        case .transport(let t): t.description
        case .framing(let h, let why): "bad framing for \(h.command) #\(h.messageID): \(why)"
        case .tooManyFDs(let h, let n, let limit): "\(h.command) #\(h.messageID) carried \(n) fds, limit \(limit)"
        }
    }
}

/// A connected AF_UNIX stream socket that moves whole vfio-user messages with fds.
///
/// Receiving is single-threaded by contract (one reader per connection). Sending is
/// serialized internally, so replies and server-initiated requests may be sent from
/// different threads without interleaving bytes.
public final class MessageSocket: Sendable {
    public let fd: OwnedFD
    private let sendLock = Mutex(())

    public init(fd: OwnedFD) { self.fd = fd }

    public static func connect(path: String) throws(TransportError) -> MessageSocket {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw .system("socket", errno) }
        let owned = OwnedFD(s)
        var addr = try UnixAddress(path: path)
        let r = addr.withSockaddr { Glibc.connect(s, $0, $1) }
        guard r == 0 else { throw .system("connect \(path)", errno) }
        return MessageSocket(fd: owned)
    }

    /// A connected pair, for tests and in-process peers.
    public static func pair() throws(TransportError) -> (MessageSocket, MessageSocket) {
        var fds: [Int32] = [-1, -1]
        guard vfu_socketpair(&fds) == 0 else { throw .system("socketpair", errno) }
        return (MessageSocket(fd: OwnedFD(fds[0])), MessageSocket(fd: OwnedFD(fds[1])))
    }

    /// Receives one whole message. Returns nil when the peer closed cleanly between
    /// messages. fds beyond `maxFDs` are closed and reported as `tooManyFDs` after
    /// the body has been consumed, so the stream stays in sync.
    public func receive(maxMessageSize: Int, maxFDs: Int) throws(ReceiveError) -> ReceivedMessage? {
        let sock = fd.rawValue
        var headerBytes = [UInt8](repeating: 0, count: MessageHeader.size)
        let fdCapacity = max(maxFDs, 0)
        var rawFDs = [Int32](repeating: -1, count: max(fdCapacity, 1))
        var nfds: Int32 = 0, extra: Int32 = 0, ctrunc: Int32 = 0
        let n = headerBytes.withUnsafeMutableBytes { hb in
            rawFDs.withUnsafeMutableBufferPointer { fb in
                vfu_recv_exact(sock, hb.baseAddress, MessageHeader.size, fb.baseAddress, Int32(fdCapacity), &nfds, &extra, &ctrunc)
            }
        }
        let fds = (0..<Int(nfds)).map { OwnedFD(rawFDs[$0]) }
        if n < 0 { throw .transport(.system("recvmsg", errno)) }
        if ctrunc != 0 { for f in fds { f.close() }; throw .transport(.controlTruncated) }
        if n == 0 { return nil }
        if n < MessageHeader.size { throw .transport(.truncated(expected: MessageHeader.size, received: n)) }
        let header: MessageHeader
        do { header = try MessageHeader.decode(headerBytes) } catch { throw .transport(.truncated(expected: 16, received: n)) }
        do { try header.validateFraming(maxMessageSize: maxMessageSize) } catch {
            for f in fds { f.close() }
            if case .invalid(let why) = error { throw .framing(header, why) }
            throw .framing(header, "\(error)")
        }
        let total = Int(header.messageSize)
        var bytes = [UInt8](unsafeUninitializedCapacity: total) { buf, count in
            for i in 0..<MessageHeader.size { buf[i] = headerBytes[i] }
            count = total
        }
        if total > MessageHeader.size {
            let got = bytes.withUnsafeMutableBytes { vfu_read_exact(sock, $0.baseAddress! + MessageHeader.size, total - MessageHeader.size) }
            if got < 0 { for f in fds { f.close() }; throw .transport(.system("recv", errno)) }
            if got < total - MessageHeader.size {
                for f in fds { f.close() }
                throw .transport(.truncated(expected: total, received: MessageHeader.size + got))
            }
        }
        if extra > 0 {
            for f in fds { f.close() }
            throw .tooManyFDs(header, received: Int(nfds + extra), limit: maxFDs)
        }
        return ReceivedMessage(header: header, bytes: bytes, fds: fds)
    }

    /// Sends one whole message; the fds ride on its first byte.
    public func send(_ message: [UInt8], fds: [Int32] = []) throws(TransportError) {
        let r: Int32 = sendLock.withLock { _ in
            message.withUnsafeBytes { mb in
                fds.withUnsafeBufferPointer { fb in
                    vfu_send_all(fd.rawValue, mb.baseAddress, mb.count, fb.baseAddress, Int32(fds.count))
                }
            }
        }
        if r != 0 { throw .system("sendmsg", errno) }
    }

    /// Sends a header and a payload as one message without joining them first.
    public func send(header: MessageHeader, payload: [UInt8], fds: [Int32] = []) throws(TransportError) {
        var h = header
        h.messageSize = UInt32(MessageHeader.size + payload.count)
        let hb = h.bytes
        let r: Int32 = sendLock.withLock { _ in
            hb.withUnsafeBytes { hp in
                payload.withUnsafeBytes { pp in
                    fds.withUnsafeBufferPointer { fb in
                        vfu_send_all2(fd.rawValue, hp.baseAddress, hp.count, pp.baseAddress, pp.count, fb.baseAddress, Int32(fds.count))
                    }
                }
            }
        }
        if r != 0 { throw .system("sendmsg", errno) }
    }

    /// Waits until a message (or EOF) is readable; false on timeout.
    public func waitReadable(timeoutMs: Int32) -> Bool { vfu_poll_readable(fd.rawValue, timeoutMs) == 1 }

    /// Wakes a thread blocked in `receive` (it sees EOF) without releasing the fd.
    public func shutdown() { _ = Glibc.shutdown(fd.rawValue, Int32(SHUT_RDWR)) }
}
