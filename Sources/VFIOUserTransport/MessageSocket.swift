import CVFIOUserShim
import Glibc
import Synchronization
import VFIOUserProtocol

/// One message as it came off the socket: the decoded header, the whole message's
/// bytes (header included, so payload offsets are `MessageHeader.size + n`), and the
/// fds that rode with it, each owned exactly once.
public struct ReceivedMessage: Sendable {
    /// The decoded header (the wire's, as received).
    public var header: MessageHeader
    /// The whole message, header included.
    public var bytes: [UInt8]
    /// File descriptors that came with the message (SCM_RIGHTS); close or keep each.
    public var fds: [OwnedFD]

    /// A message from its parts.
    public init(header: MessageHeader, bytes: [UInt8], fds: [OwnedFD]) {
        self.header = header
        self.bytes = bytes
        self.fds = fds
    }

    /// The bytes after the header.
    public var payload: ArraySlice<UInt8> { bytes[MessageHeader.size...] }
    /// A reader over the payload.
    public var payloadReader: WireReader { WireReader(bytes, from: MessageHeader.size) }

    /// Closes every fd nobody took.
    public func closeFDs() { for fd in fds { fd.close() } }
}

/// Why a receive failed. `framing` and `controlTruncated` mean the byte stream can
/// no longer be trusted; the connection must be closed (after an optional error reply).
public enum ReceiveError: Error, Equatable, CustomStringConvertible {
    /// The socket failed or the peer went away.
    case transport(TransportError)
    /// The header arrived but cannot be framed (size below 16 or above the limit).
    case framing(MessageHeader, String)
    /// More fds arrived than the negotiated limit (they have been closed). The body was consumed.
    case tooManyFDs(MessageHeader, received: Int, limit: Int)

    /// One line for logs, naming the command where there is one.
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
///
/// Receiving is buffered: one recvmsg takes as much as has arrived (up to
/// `receiveBufferSize`), so a small request costs one system call, header and body
/// together, and requests that arrive together cost one between them. The hot path
/// (`peekMessage`, `buffered`, `consumeMessage`, `receiveBody(into:)`) works on the
/// buffer in place; `receive` copies a message out of it.
public final class MessageSocket: @unchecked Sendable {
    // @unchecked: `rx` (not Sendable) is touched only by the one reader thread; sends serialize on `sendLock`.
    /// The connected socket.
    public let fd: OwnedFD
    private let sendLock = Locked(())
    // The receive side: the reader thread only.
    private let rx: ReceiveBuffer

    /// Large enough for every small request and the start of a large one (whose
    /// body a caller may receive straight into place); larger messages are read
    /// past the buffer.
    public static let receiveBufferSize = 16 << 10

    /// Wraps a connected stream socket.
    public init(fd: OwnedFD) {
        self.fd = fd
        rx = ReceiveBuffer(capacity: Self.receiveBufferSize)
    }

    /// Connects to the Unix socket at `path`; throws `.system` naming the failing call, `.refused` for a path too long for sockaddr_un.
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

    // MARK: Receiving

    /// Receives one whole message. Returns nil when the peer closed cleanly between
    /// messages. fds beyond `maxFDs` are closed and reported as `tooManyFDs` after
    /// the body has been consumed, so the stream stays in sync.
    public func receive(maxMessageSize: Int, maxFDs: Int) throws(ReceiveError) -> ReceivedMessage? {
        guard let peeked = try peekMessage(maxMessageSize: maxMessageSize, maxFDs: maxFDs, prefix: Int.max) else { return nil }
        let header = peeked.header
        let total = Int(header.messageSize)
        let (fds, extra) = rx.takeFDs()
        var bytes: [UInt8]
        if rx.available >= total {
            bytes = Array(rx.current(total))
            rx.consume(total)
        } else {
            // Longer than the buffer: the buffered part, then the rest straight into the array.
            let have = rx.available
            var readError: Int32 = 0, got = 0
            bytes = [UInt8](unsafeUninitializedCapacity: total) { buf, count in
                let raw = UnsafeMutableRawBufferPointer(buf)
                rx.copyCurrent(have, to: raw.baseAddress!)
                let r = vfu_read_exact(fd.rawValue, raw.baseAddress! + have, total - have)
                if r < 0 { readError = errno } else { got = r }
                count = total
            }
            rx.consume(have)
            rx.skipStream(max(got, 0))
            if readError != 0 { for f in fds { f.close() }; throw .transport(.system("recv", readError)) }
            if got < total - have {
                for f in fds { f.close() }
                throw .transport(.truncated(expected: total, received: have + got))
            }
        }
        if extra > 0 {
            for f in fds { f.close() }
            throw .tooManyFDs(header, received: fds.count + extra, limit: maxFDs)
        }
        return ReceivedMessage(header: header, bytes: bytes, fds: fds)
    }

    /// The next message's header, with at least `min(prefix, its size)` of its bytes
    /// in the buffer (as many as fit), without consuming it; nil at a clean EOF.
    /// `hasFDs` says whether fds came with it (then take it with `receive`).
    /// Framing errors are thrown as by `receive`, with the message's fds closed.
    public func peekMessage(maxMessageSize: Int, maxFDs: Int, prefix: Int) throws(ReceiveError) -> (header: MessageHeader, hasFDs: Bool)? {
        let maxFDs = max(maxFDs, 0)
        // A stream that failed stays failed: whoever peeks next hears of it too.
        if let failure = rx.failure { throw failure }
        while rx.available < MessageHeader.size {
            let n = try fill(maxFDs: maxFDs)
            if n == 0 {
                if rx.available == 0 { rx.closeAllFDs(); return nil }
                let got = rx.available
                rx.closeAllFDs()
                throw .transport(.truncated(expected: MessageHeader.size, received: got))
            }
        }
        let header = rx.header()
        do { try header.validateFraming(maxMessageSize: maxMessageSize) } catch {
            let (fds, _) = rx.takeFDs()
            for f in fds { f.close() }
            if case .invalid(let why) = error { throw .framing(header, why) }
            throw .framing(header, "\(error)")
        }
        let want = min(Int(header.messageSize), prefix, rx.capacity)
        while rx.available < want {
            let n = try fill(maxFDs: maxFDs)
            if n == 0 {
                let got = rx.available
                rx.closeAllFDs()
                throw .transport(.truncated(expected: Int(header.messageSize), received: got))
            }
        }
        return (header, rx.hasFDsForCurrent)
    }

    /// The buffered bytes from the start of the message `peekMessage` returned
    /// (header included; the whole message when it fits the buffer, and possibly the
    /// start of the next ones after it). A slice of the buffer itself, nothing copied;
    /// its bytes stay as they are while the slice lives.
    public var buffered: ArraySlice<UInt8> { rx.current(rx.available) }

    /// Little-endian words of the buffered message at byte `offset` (which must be
    /// buffered), read without making a slice of the buffer.
    public func bufferedWord64(at offset: Int) -> UInt64 { rx.word64(at: offset) }
    /// The little-endian u32 at byte `offset` of the buffered message (which must be buffered).
    public func bufferedWord32(at offset: Int) -> UInt32 { UInt32(truncatingIfNeeded: rx.word64(at: offset, width: 4)) }

    /// Consumes the current message, which must be wholly buffered.
    public func consumeMessage(size: Int) { rx.consume(size) }

    /// Consumes the current message, moving its bytes from `skip` on into `dst`
    /// (`dst.count` = size - skip): those in the buffer are copied, the rest are
    /// received straight into `dst`, so a large write lands in place.
    public func receiveBody(size: Int, skip: Int, into dst: UnsafeMutableRawBufferPointer) throws(ReceiveError) {
        let inBuffer = min(rx.available, size)
        var done = 0
        if inBuffer > skip {
            done = inBuffer - skip
            rx.copyCurrent(from: skip, count: done, to: dst.baseAddress!)
        }
        rx.consume(inBuffer)
        if done < dst.count {
            let r = vfu_read_exact(fd.rawValue, dst.baseAddress! + done, dst.count - done)
            if r < 0 { throw .transport(.system("recv", errno)) }
            rx.skipStream(r)
            if r < dst.count - done { throw .transport(.truncated(expected: size, received: skip + done + r)) }
        }
    }

    /// One recvmsg into the buffer's free space; 0 at EOF.
    private func fill(maxFDs: Int) throws(ReceiveError) -> Int {
        var nfds: Int32 = 0, extra: Int32 = 0, ctrunc: Int32 = 0
        let sock = fd.rawValue
        let fdCapacity = maxFDs
        var received: [OwnedFD] = []
        let n: Int = rx.withFreeSpace { space in
            withUnsafeTemporaryAllocation(of: Int32.self, capacity: max(fdCapacity, 1)) { fb in
                let r = vfu_recv_buffered(sock, space.baseAddress, space.count, fb.baseAddress, Int32(fdCapacity), &nfds, &extra, &ctrunc)
                if nfds > 0 { received = (0..<Int(nfds)).map { OwnedFD(fb[$0]) } }
                return r
            }
        }
        if n < 0 {
            let e = errno
            for f in received { f.close() }
            rx.failure = .transport(.system("recvmsg", e))
            throw .transport(.system("recvmsg", e))
        }
        if ctrunc != 0 {
            for f in received { f.close() }
            rx.closeAllFDs()
            rx.failure = .transport(.controlTruncated)
            throw .transport(.controlTruncated)
        }
        if !received.isEmpty || extra > 0 { rx.attach(received, extra: Int(extra), toChunkEndingAt: n) }
        return n
    }

    /// Whether a message (or EOF) can be read without waiting: some of it is already
    /// buffered, or the socket is readable.
    public func waitReadable(timeoutMs: Int32) -> Bool {
        if rx.available > 0 { return true }
        return vfu_poll_readable(fd.rawValue, timeoutMs) == 1
    }

    // MARK: Sending

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

    /// Sends a reply or request made of a 32-byte head (message header and the
    /// access's fixed fields) and data taken from where it lies (region storage),
    /// in one sendmsg with two iovecs: the bytes are copied once, into the socket.
    public func send(head: UnsafeRawBufferPointer, data: UnsafeRawBufferPointer) throws(TransportError) {
        let r: Int32 = sendLock.withLock { _ in
            vfu_send_all2(fd.rawValue, head.baseAddress, head.count, data.baseAddress, data.count, nil, 0)
        }
        if r != 0 { throw .system("sendmsg", errno) }
    }

    /// Sends bytes that make whole messages, without fds (one send call).
    public func send(raw: UnsafeRawBufferPointer) throws(TransportError) {
        let r: Int32 = sendLock.withLock { _ in vfu_send_all(fd.rawValue, raw.baseAddress, raw.count, nil, 0) }
        if r != 0 { throw .system("sendmsg", errno) }
    }

    /// Wakes a thread blocked in `receive` (it sees EOF) without releasing the fd.
    public func shutdown() { _ = Glibc.shutdown(fd.rawValue, Int32(SHUT_RDWR)) }
}
