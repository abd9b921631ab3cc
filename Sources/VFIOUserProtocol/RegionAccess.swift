/// REGION_READ / REGION_WRITE payload (reference §3.8): a 16-byte access
/// header (`offset` u64, `region` u32, `count` u32) followed by data.
///
/// One type covers all four messages: READ request (no data), READ reply
/// (`count` bytes), WRITE request (`count` bytes), WRITE reply (no data).
public struct RegionAccess: WirePayload, Hashable {
    /// Bytes before `data`: offset u64, region u32, count u32.
    public static let headerSize = 16

    /// Offset within the region.
    public var offset: UInt64
    /// The region index (`RegionIndex`).
    public var region: UInt32
    /// Bytes to read or write.
    public var count: UInt32
    /// Everything after the access header.
    public var data: [UInt8]

    /// A request or reply with the given fields.
    public init(offset: UInt64, region: UInt32, count: UInt32, data: [UInt8] = []) {
        self.offset = offset
        self.region = region
        self.count = count
        self.data = data
    }

    /// A READ reply or WRITE request carrying `data` (count = data size).
    public init(offset: UInt64, region: UInt32, data: [UInt8]) {
        self.init(offset: offset, region: region, count: UInt32(truncatingIfNeeded: data.count), data: data)
    }

    /// Reads just the access header of a message, without allocating.
    ///
    /// This is the hot path for MMIO traffic: the caller can check bounds and
    /// dispatch before copying any data. `payloadOffset` is where the payload
    /// starts in `bytes` (16 for a whole message).
    @inlinable
    public static func decodeHeader(_ bytes: [UInt8], payloadOffset: Int) throws(ProtocolError)
        -> (offset: UInt64, region: UInt32, count: UInt32)
    {
        guard payloadOffset >= 0, bytes.count - payloadOffset >= headerSize else {
            throw .truncated(needed: headerSize, available: max(0, bytes.count - max(payloadOffset, 0)))
        }
        return (bytes.le64(at: payloadOffset), bytes.le32(at: payloadOffset + 8), bytes.le32(at: payloadOffset + 12))
    }

    /// For a WRITE request or READ reply: the data must be exactly `count` bytes.
    public func validateDataLength() throws(ProtocolError) {
        guard data.count == Int(count) else {
            throw .invalid("region access count \(count) but \(data.count) data bytes")
        }
    }

    /// Decodes the header; the rest of the payload becomes `data`.
    public init(from r: inout WireReader) throws(ProtocolError) {
        offset = try r.u64(); region = try r.u32(); count = try r.u32()
        data = Array(r.rest())
    }

    /// Writes the header and `data`.
    public func encode(into w: inout WireWriter) {
        w.u64(offset); w.u32(region); w.u32(count); w.append(data)
    }
}

/// One write in a REGION_WRITE_MULTI request (24 bytes).
public struct WriteMultiEntry: Hashable, Sendable {
    /// Encoded size of one entry.
    public static let size = 24
    /// Most entries in one request (`VFIO_USER_MULTI_MAX`).
    public static let maxCount: UInt32 = 8

    /// Offset within the region.
    public var offset: UInt64
    /// The region index (`RegionIndex`).
    public var region: UInt32
    /// 1...8: how many low bytes of `data` are written.
    public var count: UInt32
    /// Little-endian; only the first `count` bytes are valid.
    public var data: UInt64

    /// An entry writing the low `count` bytes of `data`.
    public init(offset: UInt64, region: UInt32, count: UInt32, data: UInt64) {
        self.offset = offset
        self.region = region
        self.count = count
        self.data = data
    }

    /// The `count` valid data bytes.
    public var bytes: [UInt8] {
        (0 ..< Int(min(count, Self.maxCount))).map { UInt8(truncatingIfNeeded: data >> UInt64(8 * $0)) }
    }
}

/// REGION_WRITE_MULTI request (reference §3.11): `wr_cnt` u64 then entries.
/// QEMU always sends it with NO_REPLY; entries are applied in order.
public struct WriteMulti: WirePayload, Hashable {
    /// The writes, in the order they are applied.
    public var entries: [WriteMultiEntry]

    /// A request with `entries`.
    public init(entries: [WriteMultiEntry]) { self.entries = entries }

    /// Checks every entry's `count` is 1...8 and that there is at least one entry.
    public func validate() throws(ProtocolError) {
        guard !entries.isEmpty else { throw .invalid("REGION_WRITE_MULTI with no entries") }
        for (i, e) in entries.enumerated() where !(1 ... WriteMultiEntry.maxCount).contains(e.count) {
            throw .invalid("REGION_WRITE_MULTI entry \(i) count \(e.count) not in 1...8")
        }
    }

    /// Decodes a u64 count and that many entries; throws `.truncated` when fewer are there (`maxCount` is not checked here).
    public init(from r: inout WireReader) throws(ProtocolError) {
        let n = try r.u64()
        guard n <= UInt64(r.remaining / WriteMultiEntry.size) else {
            throw .truncated(needed: Int(clamping: n) &* WriteMultiEntry.size, available: r.remaining)
        }
        entries = []
        entries.reserveCapacity(Int(n))
        for _ in 0 ..< Int(n) {
            entries.append(WriteMultiEntry(offset: try r.u64(), region: try r.u32(), count: try r.u32(), data: try r.u64()))
        }
    }

    /// Writes the count and the entries.
    public func encode(into w: inout WireWriter) {
        w.u64(UInt64(entries.count))
        for e in entries { w.u64(e.offset); w.u32(e.region); w.u32(e.count); w.u64(e.data) }
    }
}

/// REGION_WRITE_MULTI reply (SPEC): the number of writes completed.
public struct WriteMultiReply: WirePayload, Hashable {
    /// Writes applied.
    public var completed: UInt64
    /// A reply counting `completed` writes.
    public init(completed: UInt64) { self.completed = completed }
    /// Reads the u64 count.
    public init(from r: inout WireReader) throws(ProtocolError) { completed = try r.u64() }
    /// Writes the u64 count.
    public func encode(into w: inout WireWriter) { w.u64(completed) }
}
