// The `vfio_info_cap_header` chain shared by region info and device info
// (reference §4.4). Kept generic so both structs encode and validate chains the
// same way; the typed capability enums convert to and from `RawCapability`.

/// One capability as it sits in a chain: its header fields and the bytes after
/// the 8-byte header.
public struct RawCapability: Hashable, Sendable {
    /// The capability ID (`RegionCapabilityID` or `DeviceInfoCapabilityID`).
    public var id: UInt16
    /// The capability's layout version.
    public var version: UInt16
    /// Bytes after the header. On decode this runs up to the next capability
    /// (or the end of the payload for the last one), so it includes any
    /// alignment padding.
    public var body: [UInt8]

    /// A capability with the given header fields and body.
    public init(id: UInt16, version: UInt16, body: [UInt8]) {
        self.id = id
        self.version = version
        self.body = body
    }

    /// Size in the chain: header plus body, rounded up to 8 bytes.
    public var encodedSize: Int { CapabilityChain.headerSize + CapabilityChain.align(body.count) }
}

/// Encoding and decoding of capability chains.
public enum CapabilityChain {
    /// Bytes of `vfio_info_cap_header` (id u16, version u16, next u32).
    public static let headerSize = 8
    /// Every capability starts on this boundary.
    public static let alignment = 8

    @inlinable static func align(_ n: Int) -> Int { (n + alignment - 1) & ~(alignment - 1) }

    /// Total bytes the chain occupies.
    public static func size(of caps: [RawCapability]) -> Int {
        var total = 0
        for c in caps { total += c.encodedSize }
        return total
    }

    /// Appends `caps` to `writer`. The chain starts at `firstOffset` bytes from
    /// the start of the containing struct (which must be 8-byte aligned), and
    /// `next` pointers are relative to that struct start. Each capability is
    /// padded with zeros to 8 bytes.
    public static func encode(_ caps: [RawCapability], firstOffset: Int, into w: inout WireWriter) {
        var offset = align(firstOffset)
        for (i, cap) in caps.enumerated() {
            let next = i + 1 < caps.count ? offset + cap.encodedSize : 0
            w.u16(cap.id)
            w.u16(cap.version)
            w.u32(UInt32(truncatingIfNeeded: next))
            w.append(cap.body)
            w.zeros(align(cap.body.count) - cap.body.count)
            offset += cap.encodedSize
        }
    }

    /// Walks a chain inside `bytes[structStart ..< structStart + structLength]`.
    ///
    /// Offsets are relative to `structStart`. The first capability must sit at
    /// or after `fixedSize` (the struct's fixed part), every header must fit in
    /// the struct, and every `next` must point strictly forward past the
    /// current header: this guarantees termination on hostile input.
    public static func decode(
        _ bytes: [UInt8], structStart: Int, structLength: Int, firstOffset: UInt32, fixedSize: Int
    ) throws(ProtocolError) -> [RawCapability] {
        var caps: [RawCapability] = []
        var offset = Int(firstOffset)
        guard offset >= fixedSize else {
            throw .invalid("capability offset \(offset) inside the fixed \(fixedSize)-byte struct")
        }
        while true {
            guard offset + headerSize <= structLength else {
                throw .invalid("capability at \(offset) beyond payload of \(structLength) bytes")
            }
            var r = WireReader(bytes, from: structStart + offset, to: structStart + structLength)
            let id = try r.u16()
            let version = try r.u16()
            let next = Int(try r.u32())
            let end: Int
            if next == 0 {
                end = structLength
            } else {
                guard next >= offset + headerSize else {
                    throw .invalid("capability next \(next) does not point past capability at \(offset)")
                }
                guard next + headerSize <= structLength else {
                    throw .invalid("capability next \(next) beyond payload of \(structLength) bytes")
                }
                end = next
            }
            let body = Array(bytes[(structStart + offset + headerSize) ..< (structStart + end)])
            caps.append(RawCapability(id: id, version: version, body: body))
            if next == 0 { return caps }
            offset = next
        }
    }
}
