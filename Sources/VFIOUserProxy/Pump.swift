import CVFIOUserShim
import Glibc
import Logging
import VFIOUserCapture
import VFIOUserProtocol

/// Forwards one direction of a proxied connection, message by message.
///
/// Reads never run past the end of the current message, so the fds a read returns
/// are exactly the ones the sender attached to that message (the kernel may otherwise
/// hand out a later message's fds together with an earlier message's tail), and they
/// are sent on with the first byte of the same message, as the sender sent them.
/// Memory is one buffer of `bufferSize` bytes plus, when recording, at most a snap
/// length of a message larger than that buffer; whatever msg_size claims.
struct Pump {
    static let bufferSize = 256 << 10
    /// SCM_MAX_FD: the most fds one sendmsg can carry.
    static let maxFDs = 253

    let from: Int32
    let to: Int32
    let direction: CaptureDirection
    let recorder: ConnectionRecorder?
    let logger: Logger

    private var buffer = [UInt8](repeating: 0, count: Pump.bufferSize)
    /// Where recvmsg puts the fds it brings (allocated once: this is the hot path).
    private var received = [Int32](repeating: -1, count: Pump.maxFDs)
    private var fill = 0
    /// fds received for the current message and not yet sent on.
    private var fds: [Int32] = []
    private var fdInfo: [CapturedFD] = []
    /// Bytes of a message larger than the buffer, already forwarded but kept for the record.
    private var spill: [UInt8] = []
    private var spilled = 0
    private var readFailed = false

    init(from: Int32, to: Int32, direction: CaptureDirection, recorder: ConnectionRecorder?, logger: Logger) {
        self.from = from
        self.to = to
        self.direction = direction
        self.recorder = recorder
        self.logger = logger
    }

    /// How a pump ended.
    enum End { case endOfStream, failed }

    /// Runs until the sender closes (or shuts down writing) or either side fails.
    mutating func run() -> End {
        defer { closeFDs() }
        while true {
            // The header, however it is split.
            guard read(upTo: MessageHeader.size) else { return finishIncomplete() }
            let size = Int(buffer.le32(at: 4))
            guard size >= MessageHeader.size else { return forwardRaw() }
            var remaining = size - MessageHeader.size
            while remaining > 0 {
                if fill == buffer.count {
                    guard flushSegment() else { return .failed }
                }
                let want = min(buffer.count - fill, remaining)
                // Usually the rest is already here (senders write a message at once). If it
                // is not, pass on what we have before waiting: the peer may judge the header
                // alone (a msg_size it refuses) or wait for it before sending more.
                var before = fill
                if !readNow(upTo: fill + want) {
                    if fill > 0 { guard flushSegment() else { return .failed } }
                    before = fill
                    guard read(upTo: fill + min(buffer.count - fill, remaining), partial: true) else { return finishIncomplete() }
                }
                remaining -= fill - before
            }
            record(originalLength: size, flags: [])
            guard send() else { return .failed }
        }
    }

    /// Reads until `fill == target` (or, with `partial`, until one read returned data).
    /// False at end of stream or on error (`readFailed` tells which).
    private mutating func read(upTo target: Int, partial: Bool = false) -> Bool {
        while fill < target {
            var nfds: Int32 = 0, ctrunc: Int32 = 0
            let n = buffer.withUnsafeMutableBytes { b in
                received.withUnsafeMutableBufferPointer { g in
                    vfu_recv_some(from, b.baseAddress! + fill, target - fill, g.baseAddress, Int32(Self.maxFDs), &nfds, &ctrunc, 0)
                }
            }
            takeFDs(Int(nfds), ctrunc: ctrunc)
            if n < 0 { readFailed = true }
            if n <= 0 { return false }
            fill += n
            if partial { return true }
        }
        return true
    }

    /// One read that does not wait; false when nothing was there (nothing changed then).
    private mutating func readNow(upTo target: Int) -> Bool {
        var nfds: Int32 = 0, ctrunc: Int32 = 0
        let n = buffer.withUnsafeMutableBytes { b in
            received.withUnsafeMutableBufferPointer { g in
                vfu_recv_some(from, b.baseAddress! + fill, target - fill, g.baseAddress, Int32(Self.maxFDs), &nfds, &ctrunc, 1)
            }
        }
        let e = errno
        takeFDs(Int(nfds), ctrunc: ctrunc)
        if n > 0 { fill += n; return true }
        if n < 0 && (e == EAGAIN || e == EWOULDBLOCK) { return false }
        // End of stream or an error: the blocking read that follows reports it.
        return false
    }

    private mutating func takeFDs(_ n: Int, ctrunc: Int32) {
        if n > 0 {
            let arrived = Array(received[0..<n])
            fds += arrived
            if recorder != nil { fdInfo += arrived.map(inspectFD) }
        }
        if ctrunc != 0 { logger.warning("\(direction): the kernel dropped fds (MSG_CTRUNC)") }
    }

    /// Sends the buffer on (with any pending fds) and empties it.
    private mutating func send() -> Bool {
        let r = buffer.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { f in vfu_send_all(to, b.baseAddress, fill, f.baseAddress, Int32(f.count)) }
        }
        closeFDs()
        fill = 0
        return r == 0
    }

    /// Part of a message larger than the buffer: keep what the snap length allows, send it on.
    private mutating func flushSegment() -> Bool {
        if recorder != nil {
            let snap = recorder!.parent.settings.snapLength
            spill += buffer[0 ..< min(fill, max(snap - spill.count, 0))]
        }
        spilled += fill
        return send()
    }

    private mutating func record(originalLength: Int, flags: CaptureRecord.Flags) {
        defer { spill.removeAll(keepingCapacity: false); spilled = 0; fdInfo.removeAll() }
        guard let recorder else { return }
        let room = max(recorder.parent.settings.snapLength - spill.count, 0)
        let message = spilled == 0 ? Array(buffer[0..<fill]) : spill + buffer[0 ..< min(fill, room)]
        recorder.record(direction, message: message, originalLength: originalLength, fds: fdInfo, flags: flags)
    }

    /// The stream ended (inside a message or between two): pass on what there is, then stop.
    private mutating func finishIncomplete() -> End {
        if fill > 0 || spilled > 0 {
            record(originalLength: spilled + fill, flags: .incomplete)
            guard send() else { return .failed }
        }
        return readFailed ? .failed : .endOfStream
    }

    /// msg_size < 16: nobody can frame this stream any more. Forward bytes as they come,
    /// exactly as before, so the peer fails the way it would without us.
    private mutating func forwardRaw() -> End {
        while true {
            record(originalLength: fill, flags: .raw)
            guard send() else { return .failed }
            guard read(upTo: buffer.count, partial: true) else { return readFailed ? .failed : .endOfStream }
        }
    }

    private mutating func closeFDs() {
        for f in fds { _ = Glibc.close(f) }
        fds.removeAll(keepingCapacity: true)
    }
}
