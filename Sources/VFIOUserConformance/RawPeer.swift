import Glibc
import VFIOUserProtocol
import VFIOUserTransport

/// A client connection that sends exactly the bytes a check asks for and shows
/// exactly what comes back, so the suite can judge servers it did not write.
final class RawPeer {
    let socket: MessageSocket
    private var nextID: UInt16 = 1
    var timeoutMs: Int32

    /// QEMU 11.1's VERSION capabilities, as it sends them.
    static let qemuVersionJSON =
        #"{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}"#

    init(path: String, timeoutMs: Int32) throws(TransportError) {
        socket = try MessageSocket.connect(path: path)
        self.timeoutMs = timeoutMs
        // A server that stops reading (or stops mid-message) must not hold a send or
        // a body read beyond the check's timeout.
        var tv = timeval(tv_sec: Int(timeoutMs / 1000), tv_usec: Int(timeoutMs % 1000) * 1000)
        _ = setsockopt(socket.fd.rawValue, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        _ = setsockopt(socket.fd.rawValue, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Connects, retrying for up to `retryMs` while the socket refuses (a server that
    /// has bound its socket but not yet listens).
    static func connect(path: String, timeoutMs: Int32, retryMs: Int) -> RawPeer? {
        let deadline = monotonicMs() + retryMs
        while true {
            if let p = try? RawPeer(path: path, timeoutMs: timeoutMs) { return p }
            guard monotonicMs() < deadline else { return nil }
            _ = poll(nil, 0, 10)
        }
    }

    deinit { socket.fd.close() }

    @discardableResult
    func send(_ command: Command, _ payload: [UInt8], flags: UInt32 = 0, fds: [Int32] = [], id: UInt16? = nil) -> UInt16 {
        let mid = id ?? nextID
        if id == nil { nextID &+= 1 }
        try? socket.send(header: MessageHeader(messageID: mid, command: command, messageSize: 0, flags: flags), payload: payload, fds: fds)
        return mid
    }

    func sendRaw(_ bytes: [UInt8]) { try? socket.send(bytes) }

    enum Received {
        case message(ReceivedMessage)
        case closed
        case timeout
        case broken(String)
    }

    /// False once the server closed the connection or broke the stream.
    private(set) var isOpen = true

    func receive(timeoutMs t: Int32? = nil) -> Received {
        guard isOpen else { return .closed }
        guard socket.waitReadable(timeoutMs: t ?? timeoutMs) else { return .timeout }
        do {
            guard let m = try socket.receive(maxMessageSize: 64 << 20, maxFDs: 16) else { isOpen = false; return .closed }
            return .message(m)
        } catch {
            isOpen = false
            if case .transport(let e) = error, case .system(_, let code) = e, code == 104 { return .closed }
            return .broken("\(error)")
        }
    }

    /// Sends and waits for the reply with the same id (other messages are dropped),
    /// for at most the timeout in all: a server that keeps sending something else
    /// must not keep us here.
    func call(_ command: Command, _ payload: [UInt8], flags: UInt32 = 0, fds: [Int32] = []) -> Received {
        let id = send(command, payload, flags: flags, fds: fds)
        let deadline = monotonicMs() + Int(timeoutMs)
        while true {
            let left = deadline - monotonicMs()
            guard left > 0 else { return .timeout }
            let r = receive(timeoutMs: Int32(left))
            guard case .message(let m) = r else { return r }
            if m.header.isReply && m.header.messageID == id { return r }
            m.closeFDs()
            if !m.header.isReply { serve(m) }
        }
    }

    /// The VERSION exchange as QEMU does it; returns the reply or nil.
    func negotiate() -> ReceivedMessage? {
        var p = WireWriter()
        p.u16(0); p.u16(0); p.append(Array(Self.qemuVersionJSON.utf8)); p.u8(0)
        guard case .message(let m) = call(.version, p.bytes), !m.header.isError else { return nil }
        return m
    }

    /// Memory the suite lends the server for message-based DMA (a DMA_MAP without an
    /// fd): the server's DMA_READ and DMA_WRITE are served from it while a call waits.
    var guestMemory: GuestMemory?
    /// What the server asked of us, in order ("DMA_WRITE 0x80001000+4096", ...).
    private(set) var served: [String] = []

    /// Answers a command from the server: DMA_READ / DMA_WRITE against `guestMemory`
    /// (EFAULT outside it), anything else ENOSYS, as QEMU does.
    private func serve(_ m: ReceivedMessage) {
        let h = m.header
        guard h.command == .dmaRead || h.command == .dmaWrite, let a = try? DMAAccess(payload: Array(m.payload)) else {
            served.append("\(h.command) refused")
            if h.flags & MessageHeader.noReplyFlag == 0 { try? socket.send(header: .errorReply(to: h, errno: .ENOSYS), payload: []) }
            return
        }
        served.append("\(h.command) 0x\(String(a.address, radix: 16))+\(a.count)")
        var reply: [UInt8]?
        if let mem = guestMemory, a.count <= 64 << 20 {
            if h.command == .dmaRead, let bytes = mem.read(a.address, Int(a.count)) {
                reply = DMAAccess(address: a.address, count: a.count, data: bytes).encoded
            } else if h.command == .dmaWrite, a.data.count >= Int(a.count), mem.write(a.address, Array(a.data.prefix(Int(a.count)))) {
                reply = DMAAccess(address: a.address, count: a.count).encoded
            }
        }
        guard h.flags & MessageHeader.noReplyFlag == 0 else { return }
        if let reply {
            try? socket.send(header: .reply(to: h, payloadSize: reply.count), payload: reply)
        } else {
            try? socket.send(header: .errorReply(to: h, errno: .EFAULT), payload: [])
        }
    }
}

/// Guest memory of the suite's own, lent by a DMA_MAP without an fd.
final class GuestMemory {
    let base: UInt64
    var bytes: [UInt8]
    init(base: UInt64, size: Int) { self.base = base; bytes = [UInt8](repeating: 0, count: size) }

    func read(_ address: UInt64, _ count: Int) -> [UInt8]? {
        guard address >= base, address - base + UInt64(count) <= UInt64(bytes.count) else { return nil }
        let o = Int(address - base)
        return Array(bytes[o..<o + count])
    }

    func write(_ address: UInt64, _ data: [UInt8]) -> Bool {
        guard address >= base, address - base + UInt64(data.count) <= UInt64(bytes.count) else { return false }
        let o = Int(address - base)
        bytes.replaceSubrange(o..<o + data.count, with: data)
        return true
    }
}
