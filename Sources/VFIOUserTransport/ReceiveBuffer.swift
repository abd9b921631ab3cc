import VFIOUserProtocol

/// The receive side of a `MessageSocket`: bytes that have arrived but not yet been
/// taken, and the fds that came with them. Used by the socket's one reader only.
///
/// fds arrive with the bytes of whatever recvmsg returned them. The kernel ends a
/// recvmsg after the piece of stream that carried fds (one sendmsg's first bytes,
/// which a vfio-user peer makes the start of the message they ride on), so they
/// belong to the last message that starts in those bytes; each batch is kept under
/// that message's stream offset until the message is taken.
final class ReceiveBuffer {
    let capacity: Int
    // A Swift array so a write's data can be handed to a region handler as a slice
    // of it, without copying; storage[start..<end] is unread.
    // Touched by the socket's one reader only, several times per message: unchecked,
    // it skips the runtime's dynamic exclusivity bookkeeping (issue #14).
    @exclusivity(unchecked) private var storage: [UInt8]
    // The cursor lives behind a pointer: the hot path reads and moves it several
    // times per message, and a class's stored properties would pay a dynamic
    // exclusivity check on every access.
    private struct Cursor {
        var start = 0
        var end = 0
        /// The stream offset of storage[0].
        var base: UInt64 = 0
        /// fdBatches.count, and whether `failure` is set, where the hot path can look cheaply.
        var batches = 0
        var failed = false
    }
    private let cursor: UnsafeMutablePointer<Cursor>
    private var start: Int { get { cursor.pointee.start } set { cursor.pointee.start = newValue } }
    private var end: Int { get { cursor.pointee.end } set { cursor.pointee.end = newValue } }
    private var base: UInt64 { get { cursor.pointee.base } set { cursor.pointee.base = newValue } }
    @exclusivity(unchecked) private var fdBatches: [(at: UInt64, fds: [OwnedFD], extra: Int)] = [] {
        didSet { cursor.pointee.batches = fdBatches.count }
    }
    /// Set when the stream broke (a failed recvmsg, truncated fds): every later peek throws it.
    var failure: ReceiveError? {
        get { cursor.pointee.failed ? storedFailure : nil }
        set { storedFailure = newValue; cursor.pointee.failed = newValue != nil }
    }
    private var storedFailure: ReceiveError?

    init(capacity: Int) {
        self.capacity = capacity
        storage = [UInt8](repeating: 0, count: capacity)
        cursor = .allocate(capacity: 1)
        cursor.initialize(to: Cursor())
    }

    deinit {
        cursor.deinitialize(count: 1)
        cursor.deallocate()
    }

    var available: Int { end - start }

    /// The first `n` unread bytes (a slice of the storage: no copy).
    func current(_ n: Int) -> ArraySlice<UInt8> { storage[start..<(start + n)] }

    /// The little-endian word of `width` bytes (8 or 4) at `offset` from the read position.
    func word64(at offset: Int, width: Int = 8) -> UInt64 {
        precondition(offset >= 0 && start + offset + width <= end)
        return storage.withUnsafeBytes { raw in
            width == 8 ? raw.loadUnaligned(fromByteOffset: start + offset, as: UInt64.self).littleEndian
                : UInt64(raw.loadUnaligned(fromByteOffset: start + offset, as: UInt32.self).littleEndian)
        }
    }

    func copyCurrent(_ n: Int, to dst: UnsafeMutableRawPointer) { copyCurrent(from: 0, count: n, to: dst) }

    func copyCurrent(from skip: Int, count: Int, to dst: UnsafeMutableRawPointer) {
        guard count > 0 else { return }
        storage.withUnsafeBytes { dst.copyMemory(from: $0.baseAddress! + start + skip, byteCount: count) }
    }

    /// The 16-byte header at the read position (at least 16 bytes must be buffered).
    func header() -> MessageHeader {
        storage.withUnsafeBytes { raw in
            let at = start
            return MessageHeader(messageID: raw.loadUnaligned(fromByteOffset: at, as: UInt16.self).littleEndian,
                                 command: Command(raw.loadUnaligned(fromByteOffset: at + 2, as: UInt16.self).littleEndian),
                                 messageSize: raw.loadUnaligned(fromByteOffset: at + 4, as: UInt32.self).littleEndian,
                                 flags: raw.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self).littleEndian,
                                 errorNumber: raw.loadUnaligned(fromByteOffset: at + 12, as: UInt32.self).littleEndian)
        }
    }

    /// Takes `n` bytes; when nothing is left the buffer starts over at its front.
    func consume(_ n: Int) {
        start += n
        if start == end {
            base += UInt64(end)
            start = 0
            end = 0
        }
    }

    /// Accounts for `n` bytes of the stream that were received past the (empty) buffer.
    func skipStream(_ n: Int) {
        precondition(start == end)
        base += UInt64(n)
    }

    /// Lets `body` receive into the free space after the unread bytes (moving them to
    /// the front first when the end is reached); returns what `body` returned, and
    /// counts that many bytes as arrived.
    func withFreeSpace(_ body: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
        if end == capacity && start > 0 {
            let n = end - start
            storage.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: $0.baseAddress! + start, byteCount: n) }
            base += UInt64(start)
            start = 0
            end = n
        }
        let e = end
        let n = storage.withUnsafeMutableBytes { body(UnsafeMutableRawBufferPointer(rebasing: $0[e..<capacity])) }
        if n > 0 { end += n }
        return n
    }

    // MARK: fds

    /// Files fds that came with the last `n` bytes under the last message starting in them.
    func attach(_ fds: [OwnedFD], extra: Int, toChunkEndingAt n: Int) {
        var s = start, last = start
        storage.withUnsafeBytes { raw in
            while s + 8 <= end {
                let size = Int(raw.loadUnaligned(fromByteOffset: s + 4, as: UInt32.self).littleEndian)
                guard size >= MessageHeader.size, s + size < end else { break }
                s += size
                last = s
            }
        }
        fdBatches.append((base + UInt64(last), fds, extra))
    }

    var hasFDsForCurrent: Bool {
        if cursor.pointee.batches == 0 { return false }
        let at = base + UInt64(start)
        return fdBatches.contains { $0.at == at }
    }

    /// The fds of the message at the read position (and how many did not fit); fds
    /// filed under earlier offsets nobody took are closed.
    func takeFDs() -> (fds: [OwnedFD], extra: Int) {
        if cursor.pointee.batches == 0 { return ([], 0) }
        let at = base + UInt64(start)
        var fds: [OwnedFD] = [], extra = 0
        var keep: [(at: UInt64, fds: [OwnedFD], extra: Int)] = []
        for b in fdBatches {
            if b.at == at { fds += b.fds; extra += b.extra }
            else if b.at < at { for f in b.fds { f.close() } }
            else { keep.append(b) }
        }
        fdBatches = keep
        return (fds, extra)
    }

    func closeAllFDs() {
        if cursor.pointee.batches == 0 { return }
        for b in fdBatches { for f in b.fds { f.close() } }
        fdBatches.removeAll()
    }
}
