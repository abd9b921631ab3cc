/// DMA_MAP flags (reference §3.1).
public struct DMAMapFlags: OptionSet, Hashable, Sendable {
    /// The flag bits as carried on the wire.
    public var rawValue: UInt32
    /// Wraps raw flag bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The device may read the range.
    public static let read = DMAMapFlags(rawValue: 0x1)
    /// The device may write the range.
    public static let write = DMAMapFlags(rawValue: 0x2)
}

/// DMA_MAP request payload (32 bytes). Zero or one fd accompanies it; the
/// reply is header only.
public struct DMAMapRequest: WirePayload, Hashable {
    /// Encoded size in bytes.
    public static let size = 32

    /// Size of the request (32).
    public var argsz: UInt32
    /// What the device may do with the range.
    public var flags: DMAMapFlags
    /// Offset into the passed fd; 0 without fd.
    public var offset: UInt64
    /// IOVA / guest-physical base.
    public var address: UInt64
    /// Bytes in the range.
    public var size: UInt64

    /// A request mapping `size` bytes at `address`, backed by the fd at `offset` (if one is passed).
    public init(argsz: UInt32 = 32, flags: DMAMapFlags, offset: UInt64, address: UInt64, size: UInt64) {
        self.argsz = argsz
        self.flags = flags
        self.offset = offset
        self.address = address
        self.size = size
    }

    /// Decodes the 32 bytes.
    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = DMAMapFlags(rawValue: try r.u32())
        offset = try r.u64(); address = try r.u64(); size = try r.u64()
    }

    /// Writes the 32 bytes.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags.rawValue); w.u64(offset); w.u64(address); w.u64(size)
    }
}

/// DMA_UNMAP flags (values from Linux; reference §3.2).
public struct DMAUnmapFlags: OptionSet, Hashable, Sendable {
    /// The flag bits as carried on the wire.
    public var rawValue: UInt32
    /// Wraps raw flag bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Legacy (migration v1): append a dirty bitmap to the reply.
    public static let getDirtyBitmap = DMAUnmapFlags(rawValue: 0x1)
    /// Unmap everything; `address` and `size` must be 0. QEMU sends it.
    public static let all = DMAUnmapFlags(rawValue: 0x2)
}

/// The legacy dirty-bitmap header that follows DMA_UNMAP with GET_DIRTY_BITMAP.
public struct DirtyBitmapHeader: Hashable, Sendable {
    /// Page size of the bitmap's bits.
    public var pgsize: UInt64
    /// Bitmap bytes.
    public var size: UInt64
    /// A header for a bitmap of `size` bytes at `pgsize`.
    public init(pgsize: UInt64, size: UInt64) {
        self.pgsize = pgsize
        self.size = size
    }
}

/// DMA_UNMAP request payload (24 bytes, +16 with GET_DIRTY_BITMAP). The reply
/// payload is the 24-byte request echoed back, so the same type serves both.
public struct DMAUnmapRequest: WirePayload, Hashable {
    /// Encoded size without the legacy bitmap header.
    public static let size = 24

    /// Size of the request (24, +16 with the bitmap header).
    public var argsz: UInt32
    /// `all` and the legacy `getDirtyBitmap`.
    public var flags: DMAUnmapFlags
    /// Start of the range to unmap.
    public var address: UInt64
    /// Bytes to unmap.
    public var size: UInt64
    /// Present exactly when `flags` contains `.getDirtyBitmap`.
    public var bitmap: DirtyBitmapHeader?

    /// A request unmapping `size` bytes at `address`.
    public init(argsz: UInt32 = 24, flags: DMAUnmapFlags = [], address: UInt64, size: UInt64, bitmap: DirtyBitmapHeader? = nil) {
        self.argsz = argsz
        self.flags = flags
        self.address = address
        self.size = size
        self.bitmap = bitmap
    }

    /// The reply payload: the 24-byte struct without the legacy bitmap part.
    public var echo: DMAUnmapRequest {
        DMAUnmapRequest(argsz: argsz, flags: flags.subtracting(.getDirtyBitmap), address: address, size: size)
    }

    /// Decodes the 24 bytes, and the bitmap header when the flag asks for it.
    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = DMAUnmapFlags(rawValue: try r.u32())
        address = try r.u64(); size = try r.u64()
        bitmap = flags.contains(.getDirtyBitmap) ? DirtyBitmapHeader(pgsize: try r.u64(), size: try r.u64()) : nil
    }

    /// Writes the 24 bytes, and the bitmap header when present.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags.rawValue); w.u64(address); w.u64(size)
        if let bitmap { w.u64(bitmap.pgsize); w.u64(bitmap.size) }
    }
}

/// DMA_READ / DMA_WRITE payload (server→client), SPEC layout: `address` u64
/// @0, `count` u64 @8, data @16. Used for the READ request (no data), READ
/// reply (data), WRITE request (data) and WRITE reply (no data).
public struct DMAAccess: WirePayload, Hashable {
    /// Bytes before `data`: address u64, count u64.
    public static let headerSize = 16

    /// Address in client memory (the IOVA).
    public var address: UInt64
    /// Bytes to read or write.
    public var count: UInt64
    /// Everything after the 16-byte header.
    public var data: [UInt8]

    /// A request or reply with the given fields.
    public init(address: UInt64, count: UInt64, data: [UInt8] = []) {
        self.address = address
        self.count = count
        self.data = data
    }

    /// Decodes the SPEC layout; the rest of the payload becomes `data` (for DMA_READ replies use `decodeDMAReadReply`).
    public init(from r: inout WireReader) throws(ProtocolError) {
        address = try r.u64(); count = try r.u64()
        data = Array(r.rest())
    }

    /// Writes the SPEC layout.
    public func encode(into w: inout WireWriter) {
        w.u64(address); w.u64(count); w.append(data)
    }

    /// Which layout a DMA_READ reply used.
    public enum ReadReplyLayout: Sendable, Hashable {
        /// SPEC / libvfio-user: u64 count at P+8, data at P+16.
        case spec
        /// QEMU 10.1: u32 count at P+8, data at P+12, 4 zero bytes after the data.
        case qemu
    }

    /// Decodes a DMA_READ reply payload sent by either kind of client.
    ///
    /// QEMU 10.1 declares its DMA struct as `{hdr; u64 offset; u32 count;
    /// char data[]}` without packing (reference §3.9), so its reply has the
    /// same `msg_size` (32 + count) as the SPEC's, but the count is a u32 at
    /// P+8, the data starts at P+12 and the last 4 payload bytes are zero
    /// padding. We tell them apart by the u64 at P+8:
    ///
    /// - it equals `expectedCount`: SPEC layout, unless the 4 bytes at
    ///   P+12+count (QEMU's trailing padding, the SPEC's last data bytes) are
    ///   all zero, in which case both readings fit the bytes (QEMU data whose
    ///   first 4 bytes are zero looks exactly like a SPEC reply whose data
    ///   ends in 4 zeros). That case is resolved by `ambiguousAs`.
    /// - only its low u32 equals `expectedCount` (the high half holds data
    ///   bytes): QEMU layout.
    /// - otherwise the reply is rejected.
    ///
    /// The returned access always has `count == expectedCount` and
    /// `data.count == expectedCount`.
    public static func decodeDMAReadReply(
        _ payload: [UInt8], expectedCount: UInt64, ambiguousAs: ReadReplyLayout = .spec
    ) throws(ProtocolError) -> DMAAccess {
        let (access, _) = try decodeDMAReadReplyDetectingLayout(payload, expectedCount: expectedCount, ambiguousAs: ambiguousAs)
        return access
    }

    /// `decodeDMAReadReply` that also reports the layout it chose.
    public static func decodeDMAReadReplyDetectingLayout(
        _ payload: [UInt8], expectedCount: UInt64, ambiguousAs: ReadReplyLayout = .spec
    ) throws(ProtocolError) -> (DMAAccess, ReadReplyLayout) {
        // Both layouts make the payload 16 + count bytes long.
        guard payload.count >= headerSize, expectedCount <= UInt64(payload.count - headerSize) else {
            let needed = Int(clamping: min(expectedCount, UInt64(Int.max - headerSize))) + headerSize
            throw .truncated(needed: needed, available: payload.count)
        }
        let n = Int(expectedCount)
        let address = payload.le64(at: 0)
        let spec = DMAAccess(address: address, count: expectedCount, data: Array(payload[headerSize ..< headerSize + n]))
        let qemu = DMAAccess(address: address, count: expectedCount, data: Array(payload[12 ..< 12 + n]))

        if payload.le64(at: 8) == expectedCount {
            // QEMU leaves the 4 bytes after its data zero; SPEC data there that is non-zero settles it.
            if payload[(12 + n) ..< (headerSize + n)].contains(where: { $0 != 0 }) { return (spec, .spec) }
            return ambiguousAs == .spec ? (spec, .spec) : (qemu, .qemu)
        }
        if UInt64(payload.le32(at: 8)) == expectedCount { return (qemu, .qemu) }
        throw .invalid("DMA_READ reply count does not match the requested \(expectedCount)")
    }
}
