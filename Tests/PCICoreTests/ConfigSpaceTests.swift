@_spi(Server) import PCICore
import Testing
import VFIOUserProtocol

/// The config-space engine on its own: masks, W1C, hooks, bounds.
@Suite struct ConfigSpaceTests {
    func write(_ c: ConfigSpace, _ o: UInt64, _ bytes: [UInt8]) throws { try c.write(offset: o, data: bytes[...]) }
    func read32(_ c: ConfigSpace, _ o: UInt64) throws -> UInt32 {
        let b = try c.read(offset: o, count: 4)
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }

    @Test func writesChangeOnlyWritableBitsAndW1CClears() throws {
        let c = ConfigSpace(size: 256)
        c.define(offset: 0x40, width: 4, value: 0xA5A5_0000, writable: 0x0000_FF0F, writeOneToClear: 0xFF00_0000)
        try write(c, 0x40, [0xFF, 0xFF, 0xFF, 0xFF])
        // Low byte: only the low nibble; byte 1 fully; byte 2 read-only; byte 3 W1C (0xA5 cleared by ones).
        #expect(try read32(c, 0x40) == 0x00A5_FF0F)
        try write(c, 0x40, [0x00, 0x00, 0x00, 0x00])
        #expect(try read32(c, 0x40) == 0x00A5_0000)
    }

    @Test func hooksSeeOldAndNewValuesAndTheTouchedLanes() throws {
        let c = ConfigSpace(size: 256)
        c.define(offset: 0x50, width: 4, value: 0, writable: 0xFFFF_FFFF)
        let seen = Box<[(UInt32, UInt32, UInt32)]>([])
        c.intercept(dword: 0x52, .init(read: { $0 | 0x8000_0000 }, write: { old, new, lanes in seen.value.append((old, new, lanes)) }))
        try write(c, 0x51, [0x12, 0x34])
        #expect(seen.value.count == 1)
        #expect(seen.value[0].0 == 0 && seen.value[0].1 == 0x0034_1200 && seen.value[0].2 == 0x00FF_FF00)
        // Reads apply the hook, also for partial reads of the dword.
        #expect(try read32(c, 0x50) == 0x8034_1200)
        #expect(try c.read(offset: 0x53, count: 1) == [0x80])
        #expect(c.effectiveDword(0x50) == 0x8034_1200)
        #expect(c.load32(0x50) == 0x0034_1200, "raw access bypasses hooks")
    }

    @Test func resetRestoresTheSealedPowerOnState() throws {
        let c = ConfigSpace(size: 4096)
        c.define(offset: 0x3C, width: 1, value: 0xFF, writable: 0xFF)
        c.sealPowerOnState()
        try write(c, 0x3C, [0x0B])
        c.store32(0xDEAD_BEEF, 0x800)
        c.reset()
        #expect(c.load8(0x3C) == 0xFF)
        #expect(c.load32(0x800) == 0)
    }

    @Test func accessesOutsideConfigSpaceFail() {
        let c = ConfigSpace(size: 256)
        #expect(throws: VFIOErrno.EINVAL) { _ = try c.read(offset: 0xFD, count: 4) }
        #expect(throws: VFIOErrno.EINVAL) { try c.write(offset: 0x100, data: [1][...]) }
        #expect(throws: VFIOErrno.EINVAL) { _ = try c.read(offset: 0x1_0000_0000, count: 1) }
    }
}

/// A mutable box for values a @Sendable hook records (single-threaded test use).
final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ v: T) { value = v }
}

/// Capability placement, independent of any transport.
@Suite struct CapabilityLayoutTests {
    @Test func automaticPlacementFillsAroundExplicitOffsets() throws {
        let c = ConfigSpace(size: 4096)
        let placed = try CapabilityLayout.apply(
            standard: [.powerManagement(), .vendorSpecific([1, 2, 3, 4, 5], offset: 0x48), .msi(vectors: 1, address64: false, perVectorMask: false)],
            extended: [.serialNumber(42), .pasid(maxWidth: 20, execute: false, privileged: false, offset: 0x200)],
            to: c)
        #expect(placed.offset(ofStandard: 0x01) == 0x40)
        #expect(placed.offset(ofStandard: 0x09) == 0x48)
        #expect(placed.offset(ofStandard: 0x05) == 0x50)    // after the vendor capability (8 bytes)
        #expect(placed.offset(ofExtended: 0x03) == 0x100)
        #expect(placed.offset(ofExtended: 0x1B) == 0x200)
        // Linked in address order; Status shows the list.
        #expect(c.load8(0x34) == 0x40 && c.load8(0x41) == 0x48 && c.load8(0x49) == 0x50 && c.load8(0x51) == 0)
        #expect(c.load16(0x06) & 0x10 != 0)
        #expect(c.load32(0x100) >> 20 == 0x200 && c.load32(0x200) >> 20 == 0)
        #expect(CapabilityLayout.freeExtendedRanges(placed).first == 0x10C..<0x200)
    }

    @Test func theFirstExtendedCapabilityMustSitAt0x100() {
        #expect(throws: ConfigLayoutError.self) {
            _ = try CapabilityLayout.apply(standard: [], extended: [.serialNumber(1, offset: 0x200)], to: ConfigSpace(size: 4096))
        }
    }

    @Test func extendedCapabilitiesNeedExpress() {
        #expect(throws: ConfigLayoutError.self) {
            _ = try CapabilityLayout.apply(standard: [], extended: [.serialNumber(1)], to: ConfigSpace(size: 256))
        }
    }
}
