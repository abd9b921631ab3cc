import Glibc
import VFIOUserProtocol
import VFIOUserTransport

/// Serves reads and writes of a register-backed region (or part of one).
///
/// Called with the device lock held. Offsets are relative to the handler's own
/// range; `count` is whatever the client asked for (QEMU: 1, 2, 4 or 8 bytes;
/// other clients: anything up to max_data_xfer_size) and has been bounds-checked.
public protocol RegionAccessHandler: AnyObject, Sendable {
    /// Returns `count` bytes at `offset` (an errno fails the client's access).
    func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8]
    /// Takes the client's `data` at `offset` (an errno fails the client's access).
    func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno)
    /// Reads `buffer.count` bytes into `buffer`. The REGION_READ hot path calls this so
    /// that a reply needs no array; the default goes through `read(offset:count:)`,
    /// so handlers that store their bytes override it to copy them straight out.
    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno)
}

extension RegionAccessHandler {
    /// Reads through `read(offset:count:)` and copies into `buffer`.
    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno) {
        let b = try read(offset: offset, count: buffer.count)
        guard b.count >= buffer.count else { throw .EIO }
        b.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<buffer.count])) }
    }
}

/// The config-space region: client accesses with the write policy and hooks.
final class ConfigRegionHandler: RegionAccessHandler, @unchecked Sendable {
    // @unchecked: `unowned(unsafe)` is not checked Sendable; the one field never changes
    // and ConfigSpace is guarded by the device lock.
    // The device owns both this handler and its config space, so the config space
    // outlives it; unowned(unsafe) saves a checked strong retain per config access.
    unowned(unsafe) let config: ConfigSpace
    init(_ config: ConfigSpace) { self.config = config }
    func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] { try config.read(offset: offset, count: count) }
    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno) {
        try config.read(offset: offset, into: buffer)
    }
    func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) { try config.write(offset: offset, data: data) }
}

/// A region handler made of closures, for small variant registers. The closures
/// run with the device lock held, on whichever connection thread serves the access.
public final class ClosureRegionHandler: RegionAccessHandler, Sendable {
    let readBody: @Sendable (UInt64, Int) throws(VFIOErrno) -> [UInt8]
    let writeBody: @Sendable (UInt64, ArraySlice<UInt8>) throws(VFIOErrno) -> Void

    /// A handler whose reads return `read(offset, count)` and whose writes call
    /// `write(offset, data)` (offsets relative to the handler's range).
    public init(read: @escaping @Sendable (UInt64, Int) throws(VFIOErrno) -> [UInt8],
                write: @escaping @Sendable (UInt64, ArraySlice<UInt8>) throws(VFIOErrno) -> Void) {
        readBody = read
        writeBody = write
    }

    /// Calls the read closure.
    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] { try readBody(offset, count) }
    /// Calls the write closure.
    public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) { try writeBody(offset, data) }
}

/// Memory shared with clients: a memfd mapped into this process. Clients get the fd
/// through GET_REGION_INFO and mmap it, so their accesses cost no messages.
public final class SharedMemory: Sendable {
    /// The memfd (sent to clients that mmap the region).
    public let fd: OwnedFD
    /// Our mapping of it.
    public let mapping: MemoryMapping
    /// Its size in bytes.
    public var size: Int { mapping.length }

    /// A zeroed, size-sealed memfd of `size` bytes, mapped read-write.
    public init(name: String, size: Int) throws(TransportError) {
        fd = try MemFD.create(name: name, size: size, sealSize: true)
        mapping = try MemoryMapping(fd: fd.rawValue, offset: 0, length: size, writable: true)
    }

    /// Copies `count` bytes at `offset` out (EINVAL outside).
    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        guard let b = mapping.read(at: offset, count: count) else { throw .EINVAL }
        return b
    }

    /// Copies `data` in at `offset` (EINVAL outside).
    public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        guard mapping.write(at: offset, data) else { throw .EINVAL }
    }

    /// Fills the memory with zeros (used on reset where the spec says RAM does not survive).
    public func clear() { mapping.base.initializeMemory(as: UInt8.self, repeating: 0, count: mapping.length) }
}

/// What backs a region's bytes.
public enum RegionBacking: Sendable {
    /// Registers: every access is a message served by the handler.
    case handler(any RegionAccessHandler)
    /// Shared memory: served from the memfd, and mmap-able by clients when the
    /// region says so.
    case memory(SharedMemory)
    /// Ranges served by different handlers (e.g. registers plus an MSI-X table).
    case composite(RegionMux)
}

/// A vfio region as the client sees it (reference §3.4, §4).
public struct Region: Sendable {
    /// The region index (0-5 BARs, 6 ROM, 7 config, 8 VGA, 9+ device-specific).
    public var index: UInt32
    /// Size in bytes (0: the region does not exist).
    public var size: UInt64
    /// Clients may read it.
    public var readable: Bool
    /// Clients may write it.
    public var writable: Bool
    /// Offer the backing memfd for mmap (only for `.memory` backing).
    public var mmappable: Bool
    /// Where the region may be mapped; empty = the whole region when `mmappable`.
    public var sparseAreas: [SparseMmapArea]
    /// `type`/`subtype` for device-specific regions (index >= 9 must have one).
    public var type: (type: UInt32, subtype: UInt32)?
    /// Extra capabilities (NVLink2 SSATGT/LNKSPD, MSIX_MAPPABLE, ...).
    public var extraCapabilities: [RegionCapability]
    /// What serves its bytes.
    public var backing: RegionBacking
    /// BARs decode only while the command register enables their space.
    public var decodeGate: DecodeGate

    /// Which Command register bit must be set for accesses to succeed.
    public enum DecodeGate: Sendable {
        /// Always decodes (config space, device-specific regions).
        case none
        /// Needs Memory Space Enable (memory BARs, the ROM).
        case memorySpace
        /// Needs I/O Space Enable (I/O BARs).
        case ioSpace
    }

    /// A region; readable and writable, not mmap-able, not gated, unless said otherwise.
    public init(index: UInt32, size: UInt64, readable: Bool = true, writable: Bool = true, mmappable: Bool = false,
                sparseAreas: [SparseMmapArea] = [], type: (type: UInt32, subtype: UInt32)? = nil,
                extraCapabilities: [RegionCapability] = [], backing: RegionBacking, decodeGate: DecodeGate = .none) {
        self.index = index
        self.size = size
        self.readable = readable
        self.writable = writable
        self.mmappable = mmappable
        self.sparseAreas = sparseAreas
        self.type = type
        self.extraCapabilities = extraCapabilities
        self.backing = backing
        self.decodeGate = decodeGate
    }

    /// Memory offered for mmap when the backing is not `.memory` itself: a variant
    /// that serves REGION_READ/WRITE with its own rules over the same memory (e.g.
    /// nvgrace's fake BARs, whose bytes past the real memory read as 0xFF).
    public var mmapMemory: SharedMemory? = nil

    /// The memfd clients may map, if any.
    @_spi(Server) public var mmapFD: Int32? {
        guard mmappable else { return nil }
        if let m = mmapMemory { return m.fd.rawValue }
        guard case .memory(let m) = backing else { return nil }
        return m.fd.rawValue
    }

    /// The capability chain GET_REGION_INFO reports.
    @_spi(Server) public var capabilities: [RegionCapability] {
        var caps: [RegionCapability] = []
        if let type { caps.append(.type(type: type.type, subtype: type.subtype)) }
        if mmappable, !sparseAreas.isEmpty { caps.append(.sparseMmap(sparseAreas)) }
        caps.append(contentsOf: extraCapabilities)
        return caps
    }

    /// The flags GET_REGION_INFO reports (read, write, mmap).
    @_spi(Server) public var infoFlags: RegionInfoFlags {
        guard size > 0 else { return [] }
        var f: RegionInfoFlags = []
        if readable { f.insert(.read) }
        if writable { f.insert(.write) }
        if mmapFD != nil { f.insert(.mmap) }
        return f
    }

    func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        switch backing {
        case .handler(let h): return try h.read(offset: offset, count: count)
        case .memory(let m): return try m.read(offset: offset, count: count)
        case .composite(let mux): return try mux.read(offset: offset, count: count)
        }
    }

    func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno) {
        switch backing {
        case .handler(let h): try h.read(offset: offset, into: buffer)
        case .memory(let m): guard m.mapping.read(at: offset, into: buffer) else { throw .EINVAL }
        case .composite(let mux): try mux.read(offset: offset, into: buffer)
        }
    }

    func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        switch backing {
        case .handler(let h): try h.write(offset: offset, data: data)
        case .memory(let m): try m.write(offset: offset, data: data)
        case .composite(let mux): try mux.write(offset: offset, data: data)
        }
    }
}

/// Routes accesses within one region to the handler that owns each range; the
/// rest goes to `fallback`. An access that spans two ranges is split.
public final class RegionMux: RegionAccessHandler, @unchecked Sendable {
    // @unchecked: `entries` changes only with the device lock held (mapRegisters, building).
    /// One range and its handler.
    @_spi(Server) public struct Entry: Sendable {
        /// The offsets the handler serves.
        public var range: Range<UInt64>
        /// What serves them.
        public var handler: any RegionAccessHandler
    }

    // Sorted by lower bound, never overlapping. Guarded by the device lock, which every
    // access holds, so the runtime's dynamic exclusivity check is skipped (issue #14).
    /// The ranges and their handlers, by address (the control plane's view).
    @_spi(Server) @exclusivity(unchecked) public private(set) var entries: [Entry] = []
    /// What serves the bytes no range claims.
    public let fallback: any RegionAccessHandler

    /// An empty mux: everything goes to `fallback`.
    public init(fallback: any RegionAccessHandler) { self.fallback = fallback }

    /// Adds a handler for `range`; fails if it overlaps one already there.
    public func add(_ range: Range<UInt64>, handler: any RegionAccessHandler) throws(VFIOErrno) {
        guard !entries.contains(where: { $0.range.overlaps(range) }) else { throw .EEXIST }
        entries.append(Entry(range: range, handler: handler))
        entries.sort { $0.range.lowerBound < $1.range.lowerBound }
    }

    /// Calls `body` once per piece of [offset, offset+count) with the handler that
    /// owns it and the piece's offset relative to that handler.
    private func pieces(offset: UInt64, count: Int,
                        _ body: (any RegionAccessHandler, UInt64, Int, Int) throws(VFIOErrno) -> Void) throws(VFIOErrno) {
        var pos = offset
        let end = offset + UInt64(count)
        while pos < end {
            if let e = entries.first(where: { $0.range.contains(pos) }) {
                let n = Int(min(end, e.range.upperBound) - pos)
                try body(e.handler, pos - e.range.lowerBound, Int(pos - offset), n)
                pos += UInt64(n)
            } else {
                let next = entries.first(where: { $0.range.lowerBound > pos })?.range.lowerBound ?? end
                let n = Int(min(end, next) - pos)
                try body(fallback, pos, Int(pos - offset), n)
                pos += UInt64(n)
            }
        }
    }

    /// Reads through the handlers that own the range, the fallback between them.
    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        if entries.isEmpty { return try fallback.read(offset: offset, count: count) }
        var out = [UInt8](repeating: 0, count: count)
        try pieces(offset: offset, count: count) { (h, o, at, n) throws(VFIOErrno) in
            let b = try h.read(offset: o, count: n)
            out.replaceSubrange(at..<(at + n), with: b.prefix(n))
        }
        return out
    }

    /// Reads into `buffer` through the handlers that own the range.
    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno) {
        if entries.isEmpty { return try fallback.read(offset: offset, into: buffer) }
        try pieces(offset: offset, count: buffer.count) { (h, o, at, n) throws(VFIOErrno) in
            try h.read(offset: o, into: UnsafeMutableRawBufferPointer(rebasing: buffer[at..<(at + n)]))
        }
    }

    /// Writes through the handlers that own the range, the fallback between them.
    public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        if entries.isEmpty { return try fallback.write(offset: offset, data: data) }
        let base = data.startIndex
        try pieces(offset: offset, count: data.count) { (h, o, at, n) throws(VFIOErrno) in
            try h.write(offset: o, data: data[(base + at)..<(base + at + n)])
        }
    }
}

/// Plain registers with a per-bit write mask: what a spec's `registers` list builds.
/// Bytes with no register read as zero and ignore writes.
///
/// The bytes and their masks live in an anonymous private mapping: zero pages the
/// kernel provides on first touch, so a large register BAR (IGD's and Grace's are
/// 16 MiB, almost all of it empty) costs neither start-up time nor memory.
public final class RegisterFile: RegionAccessHandler, @unchecked Sendable {
    // @unchecked: `storage` and `powerOn` are only touched with the device lock held.
    /// Bytes of register space.
    public let size: Int
    // Guarded by the device lock: [0, size) the bytes, [size, 2 size) their write masks.
    private let storage: UnsafeMutablePointer<UInt8>
    private let mapped: Int
    /// The defined registers' power-on values, which `reset` restores. Only they can
    /// change (every other byte has an empty write mask), so a reset, like a define,
    /// costs what the registers cost, not the file's size.
    private var powerOn: [(offset: Int, width: Int, value: UInt64)] = []

    /// `size` bytes of zeros that ignore writes until registers are defined.
    public init(size: Int) {
        self.size = size
        mapped = max(2 * size, 1)
        let p = mmap(nil, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { fatalError("RegisterFile: cannot map \(mapped) bytes: errno \(errno)") }
        storage = p.assumingMemoryBound(to: UInt8.self)
    }

    deinit { munmap(storage, mapped) }

    /// A copy of the register bytes.
    public var bytes: [UInt8] { Array(UnsafeBufferPointer(start: storage, count: size)) }
    /// A copy of the write masks.
    public var writeMask: [UInt8] { Array(UnsafeBufferPointer(start: storage + size, count: size)) }

    /// Defines a register's power-on value and which bits software may change.
    public func define(offset: Int, width: Int, value: UInt64, writeMask mask: UInt64) {
        // A register nobody could ever change (no write mask, now or before) need not be restored.
        var changeable = mask != 0
        for i in 0..<width where offset + i < size && storage[size + offset + i] != 0 { changeable = true }
        for i in 0..<width where offset + i < size {
            storage[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))
            storage[size + offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * UInt64(i)))
        }
        if changeable { powerOn.append((offset, width, value)) }
    }

    /// The stored bytes (EINVAL outside the file).
    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        guard offset <= UInt64(size), count >= 0, count <= size - Int(offset) else { throw .EINVAL }
        return Array(UnsafeBufferPointer(start: storage + Int(offset), count: count))
    }

    /// Copies the stored bytes into `buffer` (EINVAL outside the file).
    public func read(offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno) {
        guard offset <= UInt64(size), buffer.count <= size - Int(offset) else { throw .EINVAL }
        if buffer.isEmpty { return }
        buffer.baseAddress!.copyMemory(from: storage + Int(offset), byteCount: buffer.count)
    }

    /// Changes each byte where its write mask allows (EINVAL outside the file).
    public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        guard offset <= UInt64(size), data.count <= size - Int(offset) else { throw .EINVAL }
        let o = Int(offset)
        var i = o
        for b in data {
            let m = storage[size + i]
            storage[i] = (storage[i] & ~m) | (b & m)
            i += 1
        }
    }

    /// Restores every defined register's power-on value.
    public func reset() {
        for r in powerOn {
            for i in 0..<r.width where r.offset + i < size {
                storage[r.offset + i] = UInt8(truncatingIfNeeded: r.value >> (8 * UInt64(i)))
            }
        }
    }

    /// Stores bytes ignoring the write mask: a control plane's raw poke (docs/control.md).
    /// A byte no write could change is remembered, so a reset still restores it.
    @_spi(Server) public func storeRaw(offset: Int, _ data: [UInt8]) {
        for (i, b) in data.enumerated() where offset + i < size {
            let at = offset + i
            if storage[size + at] == 0 { powerOn.append((offset: at, width: 1, value: UInt64(storage[at]))) }
            storage[at] = b
        }
    }
}
