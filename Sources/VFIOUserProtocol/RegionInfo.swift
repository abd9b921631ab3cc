/// `vfio_region_info` flags (reference §3.4, §4.3).
public struct RegionInfoFlags: OptionSet, Hashable, Sendable {
    /// The flag bits as carried on the wire.
    public var rawValue: UInt32
    /// Wraps raw flag bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `VFIO_REGION_INFO_FLAG_READ`: the region may be read.
    public static let read = RegionInfoFlags(rawValue: 0x1)
    /// `VFIO_REGION_INFO_FLAG_WRITE`: the region may be written.
    public static let write = RegionInfoFlags(rawValue: 0x2)
    /// The reply carries one fd that may be mmapped at `offset`.
    public static let mmap = RegionInfoFlags(rawValue: 0x4)
    /// A capability chain starts at `cap_offset`.
    public static let caps = RegionInfoFlags(rawValue: 0x8)
}

/// One mmappable window of a sparse region: `offset` is relative to the
/// region's `offset` (which is also the mmap file offset base).
public struct SparseMmapArea: Hashable, Sendable {
    /// Start of the window, relative to the region.
    public var offset: UInt64
    /// Bytes in the window.
    public var size: UInt64
    /// A window of `size` bytes at `offset`.
    public init(offset: UInt64, size: UInt64) {
        self.offset = offset
        self.size = size
    }
}

/// A region-info capability (reference §4.4). Known IDs are typed only at
/// version 1; anything else is kept as `.unknown` so it can be relayed.
public enum RegionCapability: Hashable, Sendable {
    /// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: only these windows may be mmapped.
    case sparseMmap([SparseMmapArea])
    /// `VFIO_REGION_INFO_CAP_TYPE`: a device-specific region's type and subtype (`RegionType`).
    case type(type: UInt32, subtype: UInt32)
    /// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`: the MSI-X table may be mmapped too.
    case msixMappable
    /// `VFIO_REGION_INFO_CAP_NVLINK2_SSATGT`: the GPU RAM's system target address.
    case nvlink2SSATGT(tgt: UInt64)
    /// `VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD`: the NVLink2 link speed.
    case nvlink2LinkSpeed(UInt32)
    /// `body` is the bytes after the 8-byte header; it is zero-padded to 8 on encode.
    case unknown(id: UInt16, version: UInt16, body: [UInt8])

    /// The capability as it goes into a chain.
    public var raw: RawCapability {
        var w = WireWriter(capacity: 16)
        switch self {
        case .sparseMmap(let areas):
            w.u32(UInt32(truncatingIfNeeded: areas.count)); w.u32(0)
            for a in areas { w.u64(a.offset); w.u64(a.size) }
            return RawCapability(id: RegionCapabilityID.sparseMmap, version: 1, body: w.bytes)
        case .type(let type, let subtype):
            w.u32(type); w.u32(subtype)
            return RawCapability(id: RegionCapabilityID.type, version: 1, body: w.bytes)
        case .msixMappable:
            return RawCapability(id: RegionCapabilityID.msixMappable, version: 1, body: [])
        case .nvlink2SSATGT(let tgt):
            w.u64(tgt)
            return RawCapability(id: RegionCapabilityID.nvlink2SSATGT, version: 1, body: w.bytes)
        case .nvlink2LinkSpeed(let speed):
            w.u32(speed); w.u32(0)
            return RawCapability(id: RegionCapabilityID.nvlink2LinkSpeed, version: 1, body: w.bytes)
        case .unknown(let id, let version, let body):
            return RawCapability(id: id, version: version, body: body)
        }
    }

    /// Types a raw capability; unknown IDs and versions become `.unknown`. Throws `.truncated` for a short known body.
    public init(raw: RawCapability) throws(ProtocolError) {
        var r = WireReader(raw.body)
        guard raw.version == 1 else {
            self = .unknown(id: raw.id, version: raw.version, body: raw.body)
            return
        }
        switch raw.id {
        case RegionCapabilityID.sparseMmap:
            let n = Int(try r.u32())
            try r.skip(4)
            guard n <= r.remaining / 16 else { throw .truncated(needed: 8 + 16 * n, available: raw.body.count) }
            var areas: [SparseMmapArea] = []
            areas.reserveCapacity(n)
            for _ in 0..<n { areas.append(SparseMmapArea(offset: try r.u64(), size: try r.u64())) }
            self = .sparseMmap(areas)
        case RegionCapabilityID.type:
            self = .type(type: try r.u32(), subtype: try r.u32())
        case RegionCapabilityID.msixMappable:
            self = .msixMappable
        case RegionCapabilityID.nvlink2SSATGT:
            self = .nvlink2SSATGT(tgt: try r.u64())
        case RegionCapabilityID.nvlink2LinkSpeed:
            let speed = try r.u32()
            try r.skip(4)  // pad: part of the fixed 16-byte capability
            self = .nvlink2LinkSpeed(speed)
        default:
            self = .unknown(id: raw.id, version: raw.version, body: raw.body)
        }
    }
}

/// DEVICE_GET_REGION_INFO request payload (32 bytes; only `index` matters).
public struct RegionInfoRequest: WirePayload, Hashable {
    /// Encoded size in bytes.
    public static let size = 32

    /// Largest reply payload the client can take.
    public var argsz: UInt32
    /// Unused in the request (0).
    public var flags: UInt32
    /// The region asked about (`RegionIndex`).
    public var index: UInt32
    /// Unused in the request (0).
    public var capOffset: UInt32
    /// Unused in the request (0).
    public var size: UInt64
    /// Unused in the request (0).
    public var offset: UInt64

    /// A request for region `index`.
    public init(argsz: UInt32 = 32, flags: UInt32 = 0, index: UInt32, capOffset: UInt32 = 0, size: UInt64 = 0, offset: UInt64 = 0) {
        self.argsz = argsz
        self.flags = flags
        self.index = index
        self.capOffset = capOffset
        self.size = size
        self.offset = offset
    }

    /// Decodes the 32 bytes.
    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = try r.u32(); index = try r.u32(); capOffset = try r.u32()
        size = try r.u64(); offset = try r.u64()
    }

    /// Writes the 32 bytes.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags); w.u32(index); w.u32(capOffset); w.u64(size); w.u64(offset)
    }
}

/// DEVICE_GET_REGION_INFO reply payload: the 32-byte `vfio_region_info` plus
/// an optional capability chain starting at offset 32.
public struct RegionInfo: WirePayload, Hashable {
    /// Bytes before the capability chain.
    public static let fixedSize = 32

    /// Bytes the complete reply needs (32 + capabilities), even when truncated.
    public var argsz: UInt32
    /// Access rights, mmap and whether a capability chain follows.
    public var flags: RegionInfoFlags
    /// The region described (`RegionIndex`).
    public var index: UInt32
    /// Written as 32 whenever `capabilities` is non-empty.
    public var capOffset: UInt32
    /// Region size in bytes; 0 for a region the device does not have.
    public var size: UInt64
    /// Offset for mmap of the fd the reply carries (the region's base in that file).
    public var offset: UInt64
    /// The capability chain (sparse mmap, type, ...).
    public var capabilities: [RegionCapability]

    /// Memberwise: fields are encoded as given (except `capOffset`, see above).
    public init(argsz: UInt32, flags: RegionInfoFlags, index: UInt32, capOffset: UInt32,
                size: UInt64, offset: UInt64, capabilities: [RegionCapability] = []) {
        self.argsz = argsz
        self.flags = flags
        self.index = index
        self.capOffset = capOffset
        self.size = size
        self.offset = offset
        self.capabilities = capabilities
    }

    /// A complete reply: `argsz`, the CAPS flag and `cap_offset` derived from `capabilities`.
    public init(index: UInt32, flags: RegionInfoFlags, size: UInt64, offset: UInt64 = 0,
                capabilities: [RegionCapability] = []) {
        var f = flags
        if capabilities.isEmpty { f.remove(.caps) } else { f.insert(.caps) }
        self.init(argsz: UInt32(Self.fixedSize + CapabilityChain.size(of: capabilities.map(\.raw))),
                  flags: f, index: index, capOffset: capabilities.isEmpty ? 0 : UInt32(Self.fixedSize),
                  size: size, offset: offset, capabilities: capabilities)
    }

    /// Bytes the complete reply needs.
    public var fullSize: Int { Self.fixedSize + CapabilityChain.size(of: capabilities.map(\.raw)) }

    /// The reply to send for a request whose `argsz` was `requested`.
    ///
    /// If everything fits, the complete reply. Otherwise only the 32-byte
    /// struct, with `argsz` = full size so the client retries, and with CAPS
    /// cleared and `cap_offset` 0: QEMU rejects a reply with CAPS set and
    /// `cap_offset` < 32 (reference §3.4), so the kernel's "CAPS set,
    /// cap_offset 0" truncation must not be copied. Other flags (MMAP) are
    /// kept; whether to attach the fd to a truncated reply is the caller's call.
    public func reply(forArgsz requested: UInt32) -> RegionInfo {
        let complete = RegionInfo(index: index, flags: flags, size: size, offset: offset, capabilities: capabilities)
        if complete.argsz <= requested { return complete }
        var f = flags
        f.remove(.caps)
        return RegionInfo(argsz: complete.argsz, flags: f, index: index, capOffset: 0, size: size, offset: offset)
    }

    /// `reply(forArgsz:)` encoded.
    public func encoded(truncatingTo requested: UInt32) -> [UInt8] { reply(forArgsz: requested).encoded }

    /// Decodes the fixed struct and, when CAPS is set and `cap_offset` is
    /// non-zero, walks the capability chain (forward-only, inside the payload).
    /// CAPS with `cap_offset` 0 (a kernel-style truncated reply) decodes as no capabilities.
    public init(from r: inout WireReader) throws(ProtocolError) {
        let start = r.position
        let length = r.remaining
        argsz = try r.u32()
        flags = RegionInfoFlags(rawValue: try r.u32())
        index = try r.u32()
        capOffset = try r.u32()
        size = try r.u64()
        offset = try r.u64()
        capabilities = []
        if flags.contains(.caps) && capOffset != 0 {
            let raws = try CapabilityChain.decode(r.bytes, structStart: start, structLength: length,
                                                  firstOffset: capOffset, fixedSize: Self.fixedSize)
            for raw in raws { capabilities.append(try RegionCapability(raw: raw)) }
        }
    }

    /// Writes the fixed part and the chain; `argsz` and `capOffset` are written as set.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags.rawValue); w.u32(index)
        w.u32(capabilities.isEmpty ? capOffset : UInt32(Self.fixedSize))
        w.u64(size); w.u64(offset)
        CapabilityChain.encode(capabilities.map(\.raw), firstOffset: Self.fixedSize, into: &w)
    }
}
