import Glibc
import VFIOUserCapture
import VFIOUserProtocol
import VFIOUserTransport

/// What a replay found.
public struct ReplayReport: Sendable {
    /// Client messages sent.
    public var sent = 0
    /// Replies compared with the captured ones.
    public var compared = 0
    /// Replies identical to the captured ones, byte for byte.
    public var identical = 0
    /// One line per reply that differs.
    public var differences: [String] = []
    /// Messages not replayed, and why.
    public var skipped: [String] = []
}

/// Replays the client side of one captured connection against a server and compares
/// every reply with the captured one (`vfu replay`).
///
/// Commands go out in captured order, each waiting for its reply when the captured
/// client got one. fds are substituted with fresh ones of the recorded kind: a memfd
/// of the recorded size for memfds and files, an eventfd for eventfds. Requests the
/// server makes (DMA_READ/DMA_WRITE) are answered with the captured client's replies
/// to the same command, in order.
public struct Replayer {
    /// The records of the one connection replayed.
    public let records: [CaptureRecord]
    /// The connection replayed.
    public let connection: UInt32
    /// Milliseconds to wait for each reply.
    public var timeoutMs = 5000

    /// A replay of `connection` (default: the first record's) from `records`.
    public init(records: [CaptureRecord], connection: UInt32? = nil) {
        let n = connection ?? records.first?.connection ?? 1
        self.connection = n
        self.records = records.filter { $0.connection == n }
    }

    /// Connects to `socketPath`, sends the captured client side and compares each reply; throws when the connection fails.
    public func run(socketPath: String) throws(TransportError) -> ReplayReport {
        let sock = try MessageSocket.connect(path: socketPath)
        defer { sock.fd.close() }
        var report = ReplayReport()
        // The captured client's answers to server requests, consumed in order.
        var answers = records.filter { $0.direction == .clientToServer && isReply($0) }
        var keepAlive: [OwnedFD] = []
        for (i, r) in records.enumerated() where r.direction == .clientToServer {
            guard let h = try? MessageHeader.decode(r.message) else {
                report.skipped.append("record \(i + 1): no whole header")
                continue
            }
            if h.isReply { continue }
            if !r.flags.isDisjoint(with: [.truncated, .incomplete, .raw]) {
                report.skipped.append("record \(i + 1) \(h.command) #\(h.messageID): only part of it was captured")
                continue
            }
            let fds = r.fds.map(freshFD)
            do {
                try sock.send(r.message, fds: fds.map(\.rawValue))
            } catch {
                report.skipped.append("record \(i + 1) \(h.command) #\(h.messageID): send failed (\(error)); the server closed")
                return report
            }
            // Eventfds stay open while the server may still signal them.
            keepAlive += fds
            report.sent += 1
            if h.noReply || h.kind == nil { continue }
            let captured = records[(i + 1)...].first { $0.direction == .serverToClient && isReply($0) && id($0) == h.messageID }
            guard let got = awaitReply(sock, id: h.messageID, answers: &answers, report: &report) else {
                report.differences.append("#\(h.messageID) \(h.command): no reply within \(timeoutMs) ms (captured: "
                                          + (captured.map { traceDescription(message: $0.message) } ?? "none") + ")")
                return report
            }
            defer { got.closeFDs() }
            guard let captured else {
                report.differences.append("#\(h.messageID) \(h.command): got \(traceDescription(message: got.bytes)), the capture has no reply")
                continue
            }
            report.compared += 1
            if let why = difference(captured: captured, got: got) {
                report.differences.append("#\(h.messageID) \(h.command): \(why)")
            } else {
                report.identical += 1
            }
        }
        return report
    }

    /// Reads until the reply to `id`, answering server requests on the way.
    private func awaitReply(_ sock: MessageSocket, id: UInt16, answers: inout [CaptureRecord],
                            report: inout ReplayReport) -> ReceivedMessage? {
        while true {
            guard sock.waitReadable(timeoutMs: Int32(timeoutMs)),
                  let m = try? sock.receive(maxMessageSize: 64 << 20, maxFDs: 253) else { return nil }
            if m.header.isReply && m.header.messageID == id { return m }
            m.closeFDs()
            if m.header.isReply || m.header.noReply { continue }
            // A server request (DMA_READ / DMA_WRITE): answer as the captured client did.
            if let k = answers.firstIndex(where: { (try? MessageHeader.decode($0.message))?.command == m.header.command }) {
                var bytes = answers.remove(at: k).message
                bytes[0] = UInt8(truncatingIfNeeded: m.header.messageID)
                bytes[1] = UInt8(truncatingIfNeeded: m.header.messageID >> 8)
                try? sock.send(bytes)
            } else {
                report.differences.append("server request \(traceDescription(message: m.bytes)): the capture has no answer to it")
                try? sock.send(MessageHeader.errorReply(to: m.header, errno: .EINVAL).bytes)
            }
        }
    }

    private func difference(captured: CaptureRecord, got: ReceivedMessage) -> String? {
        let want = captured.message
        let have = captured.flags.contains(.truncated) ? Array(got.bytes.prefix(want.count)) : got.bytes
        if have == want && captured.fds.count == got.fds.count { return nil }
        if have == want { return "\(got.fds.count) fds, captured \(captured.fds.count)" }
        let at = zip(have, want).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(have.count, want.count)
        return "differs at byte \(at): got \(traceDescription(message: got.bytes)); captured \(traceDescription(message: want))"
    }

    private func isReply(_ r: CaptureRecord) -> Bool { (try? MessageHeader.decode(r.message))?.isReply ?? false }
    private func id(_ r: CaptureRecord) -> UInt16? { try? MessageHeader.decode(r.message).messageID }

    /// A new fd standing in for a captured one.
    private func freshFD(_ fd: CapturedFD) -> OwnedFD {
        switch fd.kind {
        case .memfd, .file:
            if let m = try? MemFD.create(name: "vfu-replay", size: Int(clamping: fd.size)) { return m }
        case .socket:
            if let (a, b) = try? MessageSocket.pair() { b.fd.close(); return a.fd }
        default:
            break
        }
        return (try? EventFD.create()) ?? OwnedFD(open("/dev/null", O_RDWR | O_CLOEXEC))
    }
}
