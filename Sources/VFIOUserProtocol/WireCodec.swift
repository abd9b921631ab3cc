// Little-endian encoding and decoding of wire fields.
//
// The protocol is little-endian on every host we support (reference §1.3). We
// never reinterpret Swift structs as bytes: their layout is not guaranteed.

/// Appends little-endian fields to a growing byte array.
public struct WireWriter: Sendable {
    /// What has been written so far.
    public private(set) var bytes: [UInt8]

    /// An empty writer with room for `capacity` bytes.
    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Appends one byte.
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    /// Appends a little-endian u16.
    public mutating func u16(_ v: UInt16) { bytes.append(UInt8(truncatingIfNeeded: v)); bytes.append(UInt8(truncatingIfNeeded: v >> 8)) }
    /// Appends a little-endian u32.
    public mutating func u32(_ v: UInt32) {
        for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }
    /// Appends a little-endian u64.
    public mutating func u64(_ v: UInt64) {
        for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }
    /// Appends raw bytes as they are.
    public mutating func append<C: Collection>(_ data: C) where C.Element == UInt8 { bytes.append(contentsOf: data) }
    /// Appends `n` zero bytes (padding, reserved fields).
    public mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }

    /// Overwrites a u32 already written at `offset` (used to patch sizes and chain pointers).
    public mutating func patchU32(at offset: Int, _ v: UInt32) {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: v >> UInt32(8 * i)) }
    }
}

/// Reads little-endian fields from a byte buffer, failing instead of trapping on short input.
public struct WireReader: Sendable {
    /// The whole buffer; reading stays within `position..<end`.
    public let bytes: [UInt8]
    /// Offset of the next byte to read.
    public private(set) var position: Int
    private let end: Int

    /// Reads `bytes[start..<end]` (`end` defaults to the buffer's end).
    public init(_ bytes: [UInt8], from start: Int = 0, to end: Int? = nil) {
        self.bytes = bytes
        self.position = start
        self.end = end ?? bytes.count
    }

    /// Bytes left before the end.
    public var remaining: Int { end - position }

    @inline(__always)
    private mutating func take(_ n: Int) throws(ProtocolError) -> Int {
        guard n >= 0, remaining >= n else { throw ProtocolError.truncated(needed: n, available: remaining) }
        let p = position
        position += n
        return p
    }

    /// Reads one byte; throws `.truncated` at the end.
    public mutating func u8() throws(ProtocolError) -> UInt8 { bytes[try take(1)] }
    /// Reads a little-endian u16; throws `.truncated` when fewer than 2 bytes are left.
    public mutating func u16() throws(ProtocolError) -> UInt16 {
        let p = try take(2)
        return UInt16(bytes[p]) | UInt16(bytes[p + 1]) << 8
    }
    /// Reads a little-endian u32; throws `.truncated` when fewer than 4 bytes are left.
    public mutating func u32() throws(ProtocolError) -> UInt32 {
        let p = try take(4)
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[p + i]) << UInt32(8 * i) }
        return v
    }
    /// Reads a little-endian u64; throws `.truncated` when fewer than 8 bytes are left.
    public mutating func u64() throws(ProtocolError) -> UInt64 {
        let p = try take(8)
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[p + i]) << UInt64(8 * i) }
        return v
    }
    /// The next `n` bytes, without copying; throws `.truncated` when fewer are left.
    public mutating func bytes(_ n: Int) throws(ProtocolError) -> ArraySlice<UInt8> {
        let p = try take(n)
        return bytes[p..<(p + n)]
    }
    /// Skips `n` bytes (reserved fields, padding); throws `.truncated` when fewer are left.
    public mutating func skip(_ n: Int) throws(ProtocolError) { _ = try take(n) }
    /// Everything left, consuming it.
    public mutating func rest() -> ArraySlice<UInt8> {
        let p = position
        position = end
        return bytes[p..<end]
    }
}

/// Little-endian helpers on raw byte arrays, for device models and tests.
extension Array where Element == UInt8 {
    /// The little-endian u16 at byte offset `o` (traps out of bounds).
    @inlinable public func le16(at o: Int) -> UInt16 { UInt16(self[o]) | UInt16(self[o + 1]) << 8 }
    /// The little-endian u32 at byte offset `o` (traps out of bounds).
    @inlinable public func le32(at o: Int) -> UInt32 {
        UInt32(self[o]) | UInt32(self[o + 1]) << 8 | UInt32(self[o + 2]) << 16 | UInt32(self[o + 3]) << 24
    }
    /// The little-endian u64 at byte offset `o` (traps out of bounds).
    @inlinable public func le64(at o: Int) -> UInt64 { UInt64(le32(at: o)) | UInt64(le32(at: o + 4)) << 32 }
    /// Stores `v` little-endian at byte offset `o` (traps out of bounds).
    @inlinable public mutating func setLE16(_ v: UInt16, at o: Int) {
        self[o] = UInt8(truncatingIfNeeded: v); self[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
    /// Stores `v` little-endian at byte offset `o` (traps out of bounds).
    @inlinable public mutating func setLE32(_ v: UInt32, at o: Int) {
        for i in 0..<4 { self[o + i] = UInt8(truncatingIfNeeded: v >> UInt32(8 * i)) }
    }
    /// Stores `v` little-endian at byte offset `o` (traps out of bounds).
    @inlinable public mutating func setLE64(_ v: UInt64, at o: Int) {
        setLE32(UInt32(truncatingIfNeeded: v), at: o); setLE32(UInt32(truncatingIfNeeded: v >> 32), at: o + 4)
    }
}
