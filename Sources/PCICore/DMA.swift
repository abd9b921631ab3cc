import Glibc
import VFIOUserProtocol
import VFIOUserTransport

/// How the device reaches client memory that was mapped without an fd: the server
/// sends DMA_READ / DMA_WRITE messages on the client's connection.
public protocol DMAMessageTransport: AnyObject, Sendable {
    /// Largest `count` the client accepts in one DMA message.
    var maxTransferSize: Int { get }
    func dmaRead(address: UInt64, count: Int) throws(VFIOErrno) -> [UInt8]
    func dmaWrite(address: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno)
}

/// One DMA_MAP: a range of client IOVA space the device may access.
public struct DMAMapping: Sendable {
    public var address: UInt64
    public var size: UInt64
    public var flags: DMAMapFlags
    public var fileOffset: UInt64
    /// Our mmap of the client's fd, or nil for message-based DMA.
    public var memory: MemoryMapping?
    /// Where inside `memory` the range starts (mmap needs page-aligned offsets).
    public var memoryBias: Int
    public var owner: SessionID
    public var transport: (any DMAMessageTransport)?

    public var end: UInt64 { address + size }
}

/// The device's view of client memory: the DMA_MAP table, bounds-checked access,
/// and dirty-page logging of every device write.
///
/// Accesses may span several adjacent mappings; any byte outside a mapping fails the
/// whole access with EFAULT before anything is written. Guarded by the device lock.
public final class DMAController: @unchecked Sendable {
    /// The owning device's lock: every public method takes it (it is recursive).
    let lock: DeviceLock

    init(lock: DeviceLock) { self.lock = lock }

    public private(set) var mappings: [DMAMapping] = []  // sorted by address, disjoint
    public var maxMappings = 65535
    public let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// Whether device-initiated DMA is currently allowed (Bus Master Enable, migration state).
    var allowed: @Sendable () -> VFIOErrno? = { nil }
    public private(set) var dirtyLog: DirtyPageLog?

    // MARK: DMA_MAP / DMA_UNMAP

    /// Adds a mapping. Takes ownership of `fd` (closed here on failure or after mmap).
    public func map(_ req: DMAMapRequest, fd: OwnedFD?, owner: SessionID,
                    transport: (any DMAMessageTransport)?) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            defer { fd?.close() }
            guard req.size > 0, req.address <= UInt64.max - req.size else { throw .EINVAL }
            guard req.flags.isSubset(of: [.read, .write]), !req.flags.isEmpty else { throw .EINVAL }
            if let existing = mappings.first(where: { $0.address < req.address + req.size && req.address < $0.end }) {
                // An identical re-map is accepted as a no-op (libvfio-user does the same);
                // any other overlap is EEXIST as the specification says.
                if existing.address == req.address, existing.size == req.size, existing.flags == req.flags,
                   existing.fileOffset == req.offset, (existing.memory != nil) == (fd != nil) { return }
                throw .EEXIST
            }
            guard mappings.count < maxMappings else { throw .ENOSPC }
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
            let m = DMAMapping(address: req.address, size: req.size, flags: req.flags, fileOffset: req.offset,
                               memory: memory, memoryBias: bias, owner: owner, transport: fd == nil ? transport : nil)
            let at = mappings.firstIndex { $0.address > req.address } ?? mappings.count
            mappings.insert(m, at: at)
        }
    }

    /// Removes the mapping with exactly this address and size (ENOENT otherwise).
    /// Removes the mapping with exactly this address and size that `owner` made
    /// (ENOENT otherwise: one client cannot unmap another's memory).
    public func unmap(address: UInt64, size: UInt64, owner: SessionID? = nil) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            guard let i = mappings.firstIndex(where: { $0.address == address && $0.size == size && (owner == nil || $0.owner == owner) }) else {
                throw .ENOENT
            }
            mappings.remove(at: i)
        }
    }

    /// Removes every mapping, or every mapping `owner` made.
    public func unmapAll(owner: SessionID? = nil) {
        lock.withLock { mappings.removeAll { owner == nil || $0.owner == owner } }
    }

    public func removeAll(owner: SessionID) { lock.withLock { mappings.removeAll { $0.owner == owner } } }

    // MARK: Device access

    /// The mapping pieces covering [address, address+count), or EFAULT if any byte is unmapped.
    private func pieces(_ address: UInt64, _ count: Int, write: Bool) throws(VFIOErrno) -> [(DMAMapping, UInt64, Int)] {
        guard count >= 0, address <= UInt64.max - UInt64(count) else { throw .EFAULT }
        var out: [(DMAMapping, UInt64, Int)] = []
        var pos = address
        let end = address + UInt64(count)
        var i = mappings.lastIndex { $0.address <= address } ?? 0
        while pos < end {
            guard i < mappings.count, mappings[i].address <= pos, pos < mappings[i].end else { throw .EFAULT }
            let m = mappings[i]
            guard m.flags.contains(write ? .write : .read) else { throw .EPERM }
            let n = Int(min(end, m.end) - pos)
            out.append((m, pos - m.address, n))
            pos += UInt64(n)
            i += 1
        }
        return out
    }

    /// Reads client memory on the device's behalf.
    public func read(address: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        try lock.withLock { () throws(VFIOErrno) -> [UInt8] in
            if let e = allowed() { throw e }
            var out = [UInt8]()
            out.reserveCapacity(count)
            for (m, off, n) in try pieces(address, count, write: false) {
                if let mem = m.memory {
                    guard let b = mem.read(at: off + UInt64(m.memoryBias), count: n) else { throw .EFAULT }
                    out.append(contentsOf: b)
                } else if let t = m.transport {
                    var done = 0
                    while done < n {
                        let chunk = min(n - done, max(t.maxTransferSize, 1))
                        let b = try t.dmaRead(address: m.address + off + UInt64(done), count: chunk)
                        guard b.count == chunk else { throw .EIO }
                        out.append(contentsOf: b)
                        done += chunk
                    }
                } else {
                    throw .EFAULT
                }
            }
            return out
        }
    }

    /// Writes client memory on the device's behalf; every page written is logged
    /// while dirty-page logging runs.
    public func write<C: Collection>(address: UInt64, _ data: C) throws(VFIOErrno) where C.Element == UInt8 {
        try lock.withLock { () throws(VFIOErrno) in try writeLocked(address: address, data) }
    }

    private func writeLocked<C: Collection>(address: UInt64, _ data: C) throws(VFIOErrno) where C.Element == UInt8 {
        if let e = allowed() { throw e }
        let bytes = Array(data)
        var at = 0
        for (m, off, n) in try pieces(address, bytes.count, write: true) {
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
                    try t.dmaWrite(address: m.address + off + UInt64(done), data: bytes[(at + done)..<(at + done + chunk)])
                    done += chunk
                }
            } else {
                throw .EFAULT
            }
            at += n
        }
    }

    // MARK: Dirty page logging (DMA_LOGGING_START / STOP / REPORT)

    public func startLogging(pageSize: UInt64, ranges: [DMALoggingRange]) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            guard dirtyLog == nil else { throw .EBUSY }
            guard pageSize >= 4096, pageSize.nonzeroBitCount == 1 else { throw .EINVAL }
            dirtyLog = DirtyPageLog(pageSize: pageSize, ranges: ranges)
        }
    }

    public func stopLogging() { lock.withLock { dirtyLog = nil } }

    public func setDirtyLog(_ log: DirtyPageLog?) { lock.withLock { dirtyLog = log } }
}

/// Pages the device wrote, at the logging page size, as a sparse bitmap.
public struct DirtyPageLog: Sendable {
    public let pageSize: UInt64
    public let ranges: [DMALoggingRange]
    /// page number / 64 → bits
    public private(set) var words: [UInt64: UInt64] = [:]

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

    public mutating func mark(address: UInt64, length: UInt64) {
        guard length > 0 else { return }
        let first = address / pageSize, last = (address + (length - 1)) / pageSize
        for p in first...last where tracked(p) { words[p / 64, default: 0] |= 1 << (p % 64) }
    }

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
