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
    private let sendLock = Locked(())

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
        let fdCapacity = max(maxFDs, 0)
        // Header and fd array live on the stack: the message's own buffer is the only
        // allocation on this path.
        var nfds: Int32 = 0, extra: Int32 = 0, ctrunc: Int32 = 0
        var h = (UInt64(0), UInt64(0))
        var fds: [OwnedFD] = []
        let n: Int = withUnsafeMutableBytes(of: &h) { hb in
            withUnsafeTemporaryAllocation(of: Int32.self, capacity: max(fdCapacity, 1)) { fb in
                let r = vfu_recv_exact(sock, hb.baseAddress, MessageHeader.size, fb.baseAddress, Int32(fdCapacity), &nfds, &extra, &ctrunc)
                if nfds > 0 { fds = (0..<Int(nfds)).map { OwnedFD(fb[$0]) } }
                return r
            }
        }
        if n < 0 { throw .transport(.system("recvmsg", errno)) }
        if ctrunc != 0 { for f in fds { f.close() }; throw .transport(.controlTruncated) }
        if n == 0 { return nil }
        if n < MessageHeader.size { throw .transport(.truncated(expected: MessageHeader.size, received: n)) }
        let header = withUnsafeBytes(of: &h) { raw in
            MessageHeader(messageID: raw.loadUnaligned(fromByteOffset: 0, as: UInt16.self).littleEndian,
                          command: Command(raw.loadUnaligned(fromByteOffset: 2, as: UInt16.self).littleEndian),
                          messageSize: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian,
                          flags: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self).littleEndian,
                          errorNumber: raw.loadUnaligned(fromByteOffset: 12, as: UInt32.self).littleEndian)
        }
        do { try header.validateFraming(maxMessageSize: maxMessageSize) } catch {
            for f in fds { f.close() }
            if case .invalid(let why) = error { throw .framing(header, why) }
            throw .framing(header, "\(error)")
        }
        let total = Int(header.messageSize)
        var readError: Int32 = 0
        var got = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: total) { buf, count in
            withUnsafeBytes(of: &h) { hb in
                UnsafeMutableRawBufferPointer(buf).copyMemory(from: UnsafeRawBufferPointer(rebasing: hb[0..<MessageHeader.size]))
            }
            if total > MessageHeader.size {
                let r = vfu_read_exact(sock, buf.baseAddress! + MessageHeader.size, total - MessageHeader.size)
                if r < 0 { readError = errno } else { got = r }
            }
            count = total
        }
        if total > MessageHeader.size {
            if readError != 0 { for f in fds { f.close() }; throw .transport(.system("recv", readError)) }
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
        // Two little-endian words (a homogeneous tuple has a guaranteed layout).
        let size = UInt64(UInt32(MessageHeader.size + payload.count))
        var raw = ((UInt64(header.messageID) | UInt64(header.command.rawValue) << 16 | size << 32).littleEndian,
                   (UInt64(header.flags) | UInt64(header.errorNumber) << 32).littleEndian)
        let r: Int32 = sendLock.withLock { _ in
            withUnsafeBytes(of: &raw) { hp in
                payload.withUnsafeBytes { pp in
                    fds.withUnsafeBufferPointer { fb in
                        vfu_send_all2(fd.rawValue, hp.baseAddress, MessageHeader.size, pp.baseAddress, pp.count, fb.baseAddress, Int32(fds.count))
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
