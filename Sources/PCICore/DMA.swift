import Glibc
import VFIOUserProtocol
import VFIOUserTransport

/// How the device reaches client memory that was mapped without an fd: the server
/// sends DMA_READ / DMA_WRITE messages on the client's connection.
@_spi(Server) public protocol DMAMessageTransport: AnyObject, Sendable {
    /// Largest `count` the client accepts in one DMA message.
    var maxTransferSize: Int { get }
    /// Reads `count` bytes of client memory at `address` with a DMA_READ message;
    /// called with the device lock released.
    func dmaRead(address: UInt64, count: Int) throws(VFIOErrno) -> [UInt8]
    /// Writes `data` to client memory at `address` with a DMA_WRITE message; called
    /// with the device lock released.
    func dmaWrite(address: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno)
}

/// One DMA_MAP: a range of client IOVA space the device may access.
@_spi(Server) public struct DMAMapping: Sendable {
    /// Unique for the life of the device: a DMA that waited on a client checks that
    /// the very mapping it used is still there, not merely one at the same address.
    public var id: UInt64
    /// First IOVA of the range.
    public var address: UInt64
    /// Length of the range in bytes.
    public var size: UInt64
    /// Whether the device may read and/or write it.
    public var flags: DMAMapFlags
    /// Offset of the range in the client's fd.
    public var fileOffset: UInt64
    /// Our mmap of the client's fd, or nil for message-based DMA.
    public var memory: MemoryMapping?
    /// Where inside `memory` the range starts (mmap needs page-aligned offsets).
    public var memoryBias: Int
    /// The session that mapped it: only that client can unmap it.
    public var owner: SessionID
    /// The connection that serves DMA_READ/DMA_WRITE for a mapping without an fd.
    public var transport: (any DMAMessageTransport)?

    /// One past the last IOVA of the range.
    public var end: UInt64 { address + size }
}

/// The device's view of client memory: the DMA_MAP table, bounds-checked access,
/// and dirty-page logging of every device write. The core's own: variants reach
/// client memory through ``DeviceJob`` (or ``PCIDevice/dmaRead(address:count:)``).
///
/// Accesses may span several adjacent mappings; any byte outside a mapping fails the
/// whole access with EFAULT before anything is written to memory the server maps.
/// Behind the device lock: every method expects it held (checked in debug builds);
/// a message-based piece releases it while the client answers and re-validates
/// everything afterwards.
@_spi(Server) public final class DMAController: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with `lock` held.

    /// The owning device's lock: held by every caller, released by `suspend` around message DMA.
    let lock: DeviceLock

    init(lock: DeviceLock) { self.lock = lock }

    /// The mappings, sorted by address and disjoint (a copy).
    public var mappings: [DMAMapping] {
        lock.assertHeld()
        return _mappings
    }
    private var _mappings: [DMAMapping] = []  // sorted by address, disjoint; the device lock guards it
    /// The host page size (mmap offsets are aligned to it).
    public let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// Whether device-initiated DMA is currently allowed (Bus Master Enable, migration state).
    var allowed: @Sendable () -> VFIOErrno? = { nil }
    /// The dirty-page log while logging runs; the server asks for it through
    /// ``PCIDevice/reportDirtyPages(iova:length:pageSize:)``.
    private(set) var dirtyLog: DirtyPageLog?
    /// The session that started dirty logging: logging ends when it leaves.
    private(set) var loggingOwner: SessionID?
    /// Bumped by every device reset: DMA started before a reset fails with ECANCELED.
    var resetGeneration: UInt64 = 0
    private var nextMappingID: UInt64 = 1
    /// A control plane's fault injection and DMA events; nil unless one is attached.
    var probe: (any DeviceProbe)?

    // MARK: DMA_MAP / DMA_UNMAP

    /// Adds a mapping for `owner`, who may hold at most `limit` of them (the
    /// `max_dma_maps` the server advertised). Takes ownership of `fd` (closed here on
    /// failure or after mmap).
    public func map(_ req: DMAMapRequest, fd: OwnedFD?, owner: SessionID,
                    transport: (any DMAMessageTransport)?, limit: Int = 65535) throws(VFIOErrno) {
        lock.assertHeld()
        do {
            defer { fd?.close() }
            guard req.size > 0, req.address <= UInt64.max - req.size else { throw .EINVAL }
            guard req.flags.isSubset(of: [.read, .write]), !req.flags.isEmpty else { throw .EINVAL }
            if let existing = _mappings.first(where: { $0.address < req.address + req.size && req.address < $0.end }) {
                // An identical re-map by the same client is accepted as a no-op (libvfio-user
                // does the same; QEMU re-sends maps while firmware remaps memory); any other
                // overlap is EEXIST as the specification says.
                if existing.owner == owner, existing.address == req.address, existing.size == req.size,
                   existing.flags == req.flags, existing.fileOffset == req.offset,
                   (existing.memory != nil) == (fd != nil) { return }
                throw .EEXIST
            }
            guard _mappings.lazy.filter({ $0.owner == owner }).count < limit else { throw .ENOSPC }
            var memory: MemoryMapping? = nil
            var bias = 0
            if let fd {
                guard req.size <= UInt64(Int.max / 2), req.offset <= UInt64(Int64.max) else { throw .EINVAL }
                // Touching a mapping beyond the end of its file raises SIGBUS: refuse
                // ranges the file does not cover (memfds and files are S_IFREG).
                var st = stat()
                guard fstat(fd.rawValue, &st) == 0 else { throw .EBADF }
                if st.st_mode & S_IFMT == S_IFREG {
                    guard req.offset <= UInt64(st.st_size), req.size <= UInt64(st.st_size) - req.offset else { throw .EINVAL }
                }
                let aligned = req.offset & ~UInt64(pageSize - 1)
                bias = Int(req.offset - aligned)
                do {
                    memory = try MemoryMapping(fd: fd.rawValue, offset: aligned, length: Int(req.size) + bias,
                                               writable: req.flags.contains(.write))
                } catch {
                    throw .EINVAL
                }
            } else if transport == nil {
                throw .EINVAL
            }
            let m = DMAMapping(id: nextMappingID, address: req.address, size: req.size, flags: req.flags,
                               fileOffset: req.offset, memory: memory, memoryBias: bias, owner: owner,
                               transport: fd == nil ? transport : nil)
            nextMappingID += 1
            let at = _mappings.firstIndex { $0.address > req.address } ?? _mappings.count
            _mappings.insert(m, at: at)
        }
    }

    /// Removes the mapping with exactly this address and size that `owner` made
    /// (ENOENT otherwise: one client cannot unmap another's memory).
    public func unmap(address: UInt64, size: UInt64, owner: SessionID? = nil) throws(VFIOErrno) {
        lock.assertHeld()
        guard let i = _mappings.firstIndex(where: { $0.address == address && $0.size == size && (owner == nil || $0.owner == owner) }) else {
            throw .ENOENT
        }
        _mappings.remove(at: i)
    }

    /// Removes every mapping, or every mapping `owner` made.
    public func unmapAll(owner: SessionID? = nil) {
        lock.assertHeld()
        _mappings.removeAll { owner == nil || $0.owner == owner }
    }

    /// Removes every mapping `owner` made (its client disconnected).
    public func removeAll(owner: SessionID) {
        lock.assertHeld()
        _mappings.removeAll { $0.owner == owner }
    }

    // MARK: Device access

    /// The mapping covering `pos`, its offset and how many bytes of [pos, end) it covers.
    private func piece(at pos: UInt64, end: UInt64, write: Bool) throws(VFIOErrno) -> (DMAMapping, UInt64, Int) {
        guard let i = _mappings.lastIndex(where: { $0.address <= pos }), pos < _mappings[i].end else { throw .EFAULT }
        let m = _mappings[i]
        guard m.flags.contains(write ? .write : .read) else { throw .EPERM }
        return (m, pos - m.address, Int(min(end, m.end) - pos))
    }

    /// Checks, before an access, what device DMA needs: the device was not reset
    /// since the job began, bus mastering is on, migration state allows DMA, and the
    /// whole range is mapped with the right permission (so a failing access touches
    /// nothing).
    private func admit(_ address: UInt64, _ count: Int, write: Bool, generation: UInt64?) throws(VFIOErrno) {
        if let generation, generation != resetGeneration { throw .ECANCELED }
        if let e = allowed() { throw e }
        // An injected bus error (docs/control.md): one nil check when no probe is attached.
        if let p = probe, let e = p.dmaWillStart(address: address, count: count, write: write) { throw e }
        guard count >= 0, address <= UInt64.max - UInt64(count) else { throw .EFAULT }
        var pos = address
        let end = address + UInt64(count)
        while pos < end { pos += UInt64(try piece(at: pos, end: end, write: write).2) }
    }

    /// After waiting on a client with the lock released: anything may have changed.
    /// The same mapping must still be there, and the device must not have been reset,
    /// lost bus mastering or been stopped meanwhile.
    private func revalidate(_ mapping: DMAMapping, generation: UInt64?, startGeneration: UInt64) throws(VFIOErrno) {
        if resetGeneration != (generation ?? startGeneration) { throw .ECANCELED }
        if let e = allowed() { throw e }
        guard _mappings.contains(where: { $0.id == mapping.id }) else { throw .EFAULT }
    }

    /// Reads client memory on the device's behalf. `generation` (a job's) makes the
    /// access fail with ECANCELED if the device was reset since.
    func read(address: UInt64, count: Int, generation: UInt64? = nil) throws(VFIOErrno) -> [UInt8] {
        lock.assertHeld()
        do {
            try admit(address, count, write: false, generation: generation)
            let start = resetGeneration
            var out = [UInt8]()
            out.reserveCapacity(count)
            var pos = address
            let end = address + UInt64(count)
            while pos < end {
                // Resolved afresh each time: a previous piece may have waited on a client.
                let (m, off, n) = try piece(at: pos, end: end, write: false)
                if let mem = m.memory {
                    guard let b = mem.read(at: off + UInt64(m.memoryBias), count: n) else { throw .EFAULT }
                    out.append(contentsOf: b)
                } else if let t = m.transport {
                    var done = 0
                    while done < n {
                        let chunk = min(n - done, max(t.maxTransferSize, 1))
                        let at = m.address + off + UInt64(done)
                        let b = try lock.suspend { () throws(VFIOErrno) in try t.dmaRead(address: at, count: chunk) }
                        try revalidate(m, generation: generation, startGeneration: start)
                        guard b.count == chunk else { throw .EIO }
                        out.append(contentsOf: b)
                        done += chunk
                    }
                } else {
                    throw .EFAULT
                }
                pos += UInt64(n)
            }
            return out
        }
    }

    /// Writes client memory on the device's behalf; every page written is logged
    /// while dirty-page logging runs.
    func write<C: Collection>(address: UInt64, _ data: C, generation: UInt64? = nil) throws(VFIOErrno)
        where C.Element == UInt8
    {
        lock.assertHeld()
        do {
            let bytes = Array(data)
            try admit(address, bytes.count, write: true, generation: generation)
            let start = resetGeneration
            var at = 0
            var pos = address
            let end = address + UInt64(bytes.count)
            while pos < end {
                let (m, off, n) = try piece(at: pos, end: end, write: true)
                // Logged before the write: a message-based write that fails part-way may
                // still have reached client memory, and a page logged too many is harmless
                // where one missing corrupts a migration.
                dirtyLog?.mark(address: m.address + off, length: UInt64(n))
                if let mem = m.memory {
                    guard mem.write(at: off + UInt64(m.memoryBias), bytes[at..<(at + n)]) else { throw .EFAULT }
                } else if let t = m.transport {
                    var done = 0
                    while done < n {
                        let chunk = min(n - done, max(t.maxTransferSize, 1))
                        let target = m.address + off + UInt64(done)
                        let slice = bytes[(at + done)..<(at + done + chunk)]
                        try lock.suspend { () throws(VFIOErrno) in try t.dmaWrite(address: target, data: slice) }
                        try revalidate(m, generation: generation, startGeneration: start)
                        done += chunk
                    }
                } else {
                    throw .EFAULT
                }
                at += n
                pos += UInt64(n)
            }
        }
    }

    // MARK: Dirty page logging (DMA_LOGGING_START / STOP / REPORT)

    /// Starts logging for `session` (logging stops when that session leaves).
    func startLogging(pageSize: UInt64, ranges: [DMALoggingRange], by session: SessionID? = nil) throws(VFIOErrno) {
        lock.assertHeld()
        guard dirtyLog == nil else { throw .EBUSY }
        guard pageSize >= 4096, pageSize.nonzeroBitCount == 1 else { throw .EINVAL }
        dirtyLog = DirtyPageLog(pageSize: pageSize, ranges: ranges)
        loggingOwner = session
    }

    /// Ends logging (nothing is logged until it starts again).
    func stopLogging() {
        lock.assertHeld()
        dirtyLog = nil
        loggingOwner = nil
    }

    /// The log's bitmap for a range, cleared as reported; EINVAL while not logging.
    func reportDirty(iova: UInt64, length: UInt64, reportPageSize: UInt64) throws(VFIOErrno) -> [UInt64] {
        lock.assertHeld()
        guard dirtyLog != nil else { throw .EINVAL }
        return dirtyLog!.report(iova: iova, length: length, reportPageSize: reportPageSize)
    }
}

/// Pages the device wrote, at the logging page size, as a sparse bitmap.
@_spi(Server) public struct DirtyPageLog: Sendable {
    /// The logging granularity (a power of two, at least 4 KiB).
    public let pageSize: UInt64
    /// The IOVA ranges logged; empty means everything.
    public let ranges: [DMALoggingRange]
    /// page number / 64 → bits
    public private(set) var words: [UInt64: UInt64] = [:]

    /// An empty log at `pageSize` over `ranges`.
    public init(pageSize: UInt64, ranges: [DMALoggingRange]) {
        self.pageSize = pageSize
        self.ranges = ranges
    }

    private func tracked(_ page: UInt64) -> Bool {
        if ranges.isEmpty { return true }
        // Inclusive ends: the top page of the address space has no exclusive end.
        let first = page * pageSize, last = first + (pageSize - 1)
        return ranges.contains { $0.length > 0 && first <= $0.iova &+ ($0.length - 1) && $0.iova <= last }
    }

    /// Logs the pages [address, address + length) touches, where they are tracked.
    public mutating func mark(address: UInt64, length: UInt64) {
        guard length > 0 else { return }
        let first = address / pageSize, last = (address + (length - 1)) / pageSize
        for p in first...last where tracked(p) { words[p / 64, default: 0] |= 1 << (p % 64) }
    }

    /// Whether logged page `p` (address / pageSize) is dirty.
    public func isDirty(page p: UInt64) -> Bool { (words[p / 64] ?? 0) & (1 << (p % 64)) != 0 }

    /// The bitmap for [iova, iova+length) at `reportPageSize` (any power of two), and
    /// clears what it reported. A report page is dirty if any logged page inside it is.
    /// Walks the logged pages, not the range: a range may span the whole address space.
    /// `iova + length` must not pass 2^64 (the dispatcher checks).
    public mutating func report(iova: UInt64, length: UInt64, reportPageSize: UInt64) -> [UInt64] {
        let bits = Int(clamping: length / reportPageSize + (length % reportPageSize == 0 ? 0 : 1))
        var out = [UInt64](repeating: 0, count: bits / 64 + (bits % 64 == 0 ? 0 : 1))
        guard length > 0 else { return out }
        let last = iova + (length - 1)
        for (w, set) in words {
            var rest = set
            while rest != 0 {
                let b = UInt64(rest.trailingZeroBitCount)
                rest &= rest - 1
                let p = w * 64 + b
                let lo = max(p * pageSize, iova), hi = min(p * pageSize + (pageSize - 1), last)
                guard lo <= hi else { continue }
                words[w]! &= ~(1 << b)
                for k in ((lo - iova) / reportPageSize)...((hi - iova) / reportPageSize) {
                    out[Int(k / 64)] |= 1 << (k % 64)
                }
            }
        }
        words = words.filter { $0.value != 0 }
        return out
    }
}
