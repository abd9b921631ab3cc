import VFIOUserProtocol
import VFIOUserTransport

/// Serves reads and writes of a register-backed region (or part of one).
///
/// Called with the device lock held. Offsets are relative to the handler's own
/// range; `count` is whatever the client asked for (QEMU: 1, 2, 4 or 8 bytes;
/// other clients: anything up to max_data_xfer_size) and has been bounds-checked.
public protocol RegionAccessHandler: AnyObject, Sendable {
    func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8]
    func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno)
}

/// A region handler made of closures, for small variant registers.
public final class ClosureRegionHandler: RegionAccessHandler, @unchecked Sendable {
    let readBody: (UInt64, Int) throws(VFIOErrno) -> [UInt8]
    let writeBody: (UInt64, ArraySlice<UInt8>) throws(VFIOErrno) -> Void

    public init(read: @escaping (UInt64, Int) throws(VFIOErrno) -> [UInt8],
                write: @escaping (UInt64, ArraySlice<UInt8>) throws(VFIOErrno) -> Void) {
        readBody = read
        writeBody = write
    }

    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] { try readBody(offset, count) }
    public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) { try writeBody(offset, data) }
}

/// Memory shared with clients: a memfd mapped into this process. Clients get the fd
/// through GET_REGION_INFO and mmap it, so their accesses cost no messages.
public final class SharedMemory: Sendable {
    public let fd: OwnedFD
    public let mapping: MemoryMapping
    public var size: Int { mapping.length }

    public init(name: String, size: Int) throws(TransportError) {
        fd = try MemFD.create(name: name, size: size, sealSize: true)
        mapping = try MemoryMapping(fd: fd.rawValue, offset: 0, length: size, writable: true)
    }

    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        guard let b = mapping.read(at: offset, count: count) else { throw .EINVAL }
        return b
    }

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
    public var index: UInt32
    public var size: UInt64
    public var readable: Bool
    public var writable: Bool
    /// Offer the backing memfd for mmap (only for `.memory` backing).
    public var mmappable: Bool
    /// Where the region may be mapped; empty = the whole region when `mmappable`.
    public var sparseAreas: [SparseMmapArea]
    /// `type`/`subtype` for device-specific regions (index >= 9 must have one).
    public var type: (type: UInt32, subtype: UInt32)?
    /// Extra capabilities (NVLink2 SSATGT/LNKSPD, MSIX_MAPPABLE, ...).
    public var extraCapabilities: [RegionCapability]
    public var backing: RegionBacking
    /// BARs decode only while the command register enables their space.
    public var decodeGate: DecodeGate

    public enum DecodeGate: Sendable { case none, memorySpace, ioSpace }

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
    public var mmapFD: Int32? {
        guard mmappable else { return nil }
        if let m = mmapMemory { return m.fd.rawValue }
        guard case .memory(let m) = backing else { return nil }
        return m.fd.rawValue
    }

    /// The capability chain GET_REGION_INFO reports.
    public var capabilities: [RegionCapability] {
        var caps: [RegionCapability] = []
        if let type { caps.append(.type(type: type.type, subtype: type.subtype)) }
        if mmappable, !sparseAreas.isEmpty { caps.append(.sparseMmap(sparseAreas)) }
        caps.append(contentsOf: extraCapabilities)
        return caps
    }

    public var infoFlags: RegionInfoFlags {
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
    public struct Entry: Sendable {
        public var range: Range<UInt64>
        public var handler: any RegionAccessHandler
    }

    // Sorted by lower bound, never overlapping. Guarded by the device lock.
    public private(set) var entries: [Entry] = []
    public let fallback: any RegionAccessHandler

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

    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        if entries.isEmpty { return try fallback.read(offset: offset, count: count) }
        var out = [UInt8](repeating: 0, count: count)
        try pieces(offset: offset, count: count) { (h, o, at, n) throws(VFIOErrno) in
            let b = try h.read(offset: o, count: n)
            out.replaceSubrange(at..<(at + n), with: b.prefix(n))
        }
        return out
    }

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
public final class RegisterFile: RegionAccessHandler, @unchecked Sendable {
    // Guarded by the device lock.
    public private(set) var bytes: [UInt8]
    public private(set) var writeMask: [UInt8]
    private var resetBytes: [UInt8]

    public init(size: Int) {
        bytes = [UInt8](repeating: 0, count: size)
        writeMask = bytes
        resetBytes = bytes
    }

    /// Defines a register's power-on value and which bits software may change.
    public func define(offset: Int, width: Int, value: UInt64, writeMask mask: UInt64) {
        for i in 0..<width where offset + i < bytes.count {
            bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i)))
            writeMask[offset + i] = UInt8(truncatingIfNeeded: mask >> (8 * UInt64(i)))
        }
        resetBytes = bytes
    }

    public func read(offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        let o = Int(offset)
        guard o + count <= bytes.count else { throw .EINVAL }
        return Array(bytes[o..<(o + count)])
    }

    public func write(offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        let o = Int(offset)
        guard o + data.count <= bytes.count else { throw .EINVAL }
        for (i, b) in data.enumerated() {
            let m = writeMask[o + i]
            bytes[o + i] = (bytes[o + i] & ~m) | (b & m)
        }
    }

    public func reset() { bytes = resetBytes }

    /// Stores bytes ignoring the write mask: a control plane's raw poke (docs/control.md).
    public func storeRaw(offset: Int, _ data: [UInt8]) {
        for (i, b) in data.enumerated() where offset + i < bytes.count { bytes[offset + i] = b }
    }
}
