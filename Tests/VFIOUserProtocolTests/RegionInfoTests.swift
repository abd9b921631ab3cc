import Testing
@testable import VFIOUserProtocol

@Suite("Region info and capability chains")
struct RegionInfoTests {
    let sparse = RegionCapability.sparseMmap([SparseMmapArea(offset: 0, size: 0x1000), SparseMmapArea(offset: 0x3000, size: 0x1000)])
    let igd = RegionCapability.type(type: RegionType.pciVendor(0x8086), subtype: RegionType.Subtype.igdOpRegion)

    /// The worked example of reference §4.5: IGD OpRegion TYPE capability.
    @Test func igdTypeCapabilityBytes() throws {
        let info = RegionInfo(index: RegionIndex.firstDeviceSpecific.rawValue, flags: [.read], size: 0x2000, capabilities: [igd])
        let bytes = info.encoded
        #expect(bytes.count == 48)
        #expect(bytes.le32(at: 0) == 48)  // argsz
        #expect(bytes.le32(at: 4) == 0x9)  // READ | CAPS
        #expect(bytes.le32(at: 12) == 32)  // cap_offset
        #expect(Array(bytes[32...]) == hexDump("02 00 01 00 00 00 00 00 86 80 00 80 01 00 00 00"))
        #expect(try RegionInfo(payload: bytes) == info)
    }

    @Test func threeCapabilityChainLayoutAndRoundTrip() throws {
        let caps: [RegionCapability] = [igd, sparse, .msixMappable]
        let info = RegionInfo(index: 2, flags: [.read, .write, .mmap], size: 0x4000, offset: 0x10000, capabilities: caps)
        // 32 fixed + TYPE 16 + SPARSE (16 + 2*16) + MSIX 8.
        #expect(info.argsz == 32 + 16 + 48 + 8)
        #expect(info.flags == [.read, .write, .mmap, .caps])
        let bytes = info.encoded
        #expect(bytes.count == Int(info.argsz))
        // Headers: id, version, next (offsets from the start of the struct).
        #expect(bytes.le16(at: 32) == 2 && bytes.le16(at: 34) == 1 && bytes.le32(at: 36) == 48)
        #expect(bytes.le16(at: 48) == 1 && bytes.le16(at: 50) == 1 && bytes.le32(at: 52) == 96)
        #expect(bytes.le32(at: 56) == 2)  // nr_areas
        #expect(bytes.le64(at: 80) == 0x3000 && bytes.le64(at: 88) == 0x1000)
        #expect(bytes.le16(at: 96) == 3 && bytes.le32(at: 100) == 0)
        let decoded = try RegionInfo(payload: bytes)
        #expect(decoded == info)
        #expect(decoded.capabilities == caps)
    }

    @Test func twoCapabilitiesWithUnknownRoundTrip() throws {
        let unknown = RegionCapability.unknown(id: 0x77, version: 3, body: [1, 2, 3, 4, 5, 6, 7, 8])
        let info = RegionInfo(index: 0, flags: [.read], size: 16, capabilities: [unknown, .nvlink2LinkSpeed(25)])
        let decoded = try RegionInfo(payload: info.encoded)
        #expect(decoded.capabilities == [unknown, .nvlink2LinkSpeed(25)])
    }

    @Test func unknownBodyIsPaddedToEightBytes() throws {
        let info = RegionInfo(index: 0, flags: [], size: 0, capabilities: [.unknown(id: 9, version: 1, body: [0xaa, 0xbb, 0xcc])])
        let bytes = info.encoded
        #expect(bytes.count == 32 + 16)
        #expect(Array(bytes[40...]) == [0xaa, 0xbb, 0xcc, 0, 0, 0, 0, 0])
        #expect(try RegionInfo(payload: bytes).capabilities == [.unknown(id: 9, version: 1, body: [0xaa, 0xbb, 0xcc, 0, 0, 0, 0, 0])])
    }

    /// Reference §3.4: a reply that does not fit carries only the 32-byte
    /// struct, the full size in argsz, CAPS cleared and cap_offset 0.
    @Test func truncatedReplyClearsCapsAndReportsFullSize() throws {
        let full = RegionInfo(index: 1, flags: [.read, .write, .mmap], size: 0x4000, offset: 0x1000, capabilities: [sparse])
        #expect(full.argsz == 80)
        let short = full.reply(forArgsz: 32)
        #expect(short.argsz == 80)
        #expect(short.flags == [.read, .write, .mmap])
        #expect(!short.flags.contains(.caps))
        #expect(short.capOffset == 0 && short.capabilities.isEmpty)
        let bytes = full.encoded(truncatingTo: 32)
        #expect(bytes.count == 32)
        #expect(bytes.le32(at: 0) == 80 && bytes.le32(at: 4) == 0x7 && bytes.le32(at: 12) == 0)
        #expect(bytes.le64(at: 16) == 0x4000 && bytes.le64(at: 24) == 0x1000)
        #expect(try RegionInfo(payload: bytes) == short)
        // One byte short still truncates; exactly enough or more gives everything.
        #expect(full.reply(forArgsz: 79).capabilities.isEmpty)
        #expect(full.reply(forArgsz: 80) == full)
        #expect(full.reply(forArgsz: 4096) == full)
        #expect(full.encoded(truncatingTo: 80).count == 80)
    }

    @Test func replyWithoutCapabilitiesNeverSetsCaps() {
        let info = RegionInfo(argsz: 0, flags: [.read, .caps], index: 7, capOffset: 99, size: 256, offset: 0)
        let reply = info.reply(forArgsz: 32)
        #expect(reply.argsz == 32 && reply.flags == [.read] && reply.capOffset == 0)
    }

    /// Builds a region-info payload with raw capability headers, for malformed chains.
    func payload(capOffset: UInt32, caps: [(id: UInt16, next: UInt32, body: [UInt8])]) -> [UInt8] {
        var w = WireWriter()
        w.u32(200); w.u32(RegionInfoFlags.caps.rawValue); w.u32(0); w.u32(capOffset); w.u64(0x1000); w.u64(0)
        for c in caps { w.u16(c.id); w.u16(1); w.u32(c.next); w.append(c.body) }
        return w.bytes
    }

    @Test func wellFormedHandBuiltChainDecodes() throws {
        let p = payload(capOffset: 32, caps: [(3, 40, []), (2, 0, [1, 0, 0, 0, 2, 0, 0, 0])])
        #expect(try RegionInfo(payload: p).capabilities == [.msixMappable, .type(type: 1, subtype: 2)])
    }

    @Test(arguments: [
        ("next points backwards", 32 as UInt32, [(UInt16(3), UInt32(40), [UInt8]()), (3, 32, [])]),
        ("next points at itself", 32, [(3, 32, [])]),
        ("next inside current header", 32, [(3, 36, []), (3, 0, [])]),
        ("next beyond payload", 32, [(3, 200, [])]),
        ("next leaves no room for a header", 32, [(3, 40, [0, 0, 0, 0])]),
        ("cap_offset inside fixed struct", 16, [(3, 0, [])]),
        ("cap_offset beyond payload", 64, [(3, 0, [])]),
        ("sparse nr_areas too large", 32, [(1, 0, [5, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 16))]),
        ("type body too short", 32, [(2, 0, [1, 0, 0, 0])]),
    ] as [(String, UInt32, [(UInt16, UInt32, [UInt8])])])
    func malformedChainsAreRejected(name: String, capOffset: UInt32, caps: [(UInt16, UInt32, [UInt8])]) {
        let p = payload(capOffset: capOffset, caps: caps.map { (id: $0.0, next: $0.1, body: $0.2) })
        #expect(throws: ProtocolError.self, "\(name)") { try RegionInfo(payload: p) }
    }

    @Test func kernelStyleCapsWithZeroOffsetDecodesAsNoCapabilities() throws {
        var w = WireWriter()
        w.u32(80); w.u32(RegionInfoFlags([.read, .caps]).rawValue); w.u32(0); w.u32(0); w.u64(0x1000); w.u64(0)
        let info = try RegionInfo(payload: w.bytes)
        #expect(info.capabilities.isEmpty && info.argsz == 80)
    }

    @Test func capsFlagClearIgnoresCapOffset() throws {
        var w = WireWriter()
        w.u32(32); w.u32(RegionInfoFlags.read.rawValue); w.u32(0); w.u32(1000); w.u64(0x1000); w.u64(0)
        #expect(try RegionInfo(payload: w.bytes).capabilities.isEmpty)
    }

    @Test func shortPayloadsThrow() {
        for n in 0 ..< 32 {
            #expect(decodeThrows(RegionInfo.self, [UInt8](repeating: 0, count: n)))
            #expect(decodeThrows(RegionInfoRequest.self, [UInt8](repeating: 0, count: n)))
        }
    }

    // MARK: Device info extension (same chain helper, 24-byte struct)

    @Test func extendedDeviceInfoLayout() throws {
        let zpci = DeviceInfoCapability.unknown(id: DeviceInfoCapabilityID.zpciUtil, version: 1, body: [4, 0, 0, 0, 0xc1, 0xc2, 0xc3, 0xc4])
        let info = DeviceInfo.extended(flags: [.reset, .pci], numRegions: 9, numIRQs: 5,
                                       capabilities: [.pciAtomicComp(flags: 0x3), zpci])
        #expect(info.argsz == 24 + 16 + 16)
        #expect(info.flags == [.reset, .pci, .caps])
        let bytes = info.encoded
        #expect(bytes.count == 56)
        #expect(bytes.le32(at: 16) == 24 && bytes.le32(at: 20) == 0)
        #expect(bytes.le16(at: 24) == 5 && bytes.le32(at: 28) == 40 && bytes.le32(at: 32) == 3)
        #expect(bytes.le16(at: 40) == 3 && bytes.le32(at: 44) == 0)
        #expect(try DeviceInfo(payload: bytes) == info)

        // Client asked with argsz 16 (QEMU, or extension not negotiated): plain 16 bytes, no CAPS.
        let plain = info.reply(forArgsz: 16)
        #expect(plain.encoded.count == 16 && !plain.flags.contains(.caps) && plain.capOffset == nil)
        // Extended request too small: 24 bytes, CAPS cleared, cap_offset 0, argsz = full size.
        let short = info.reply(forArgsz: 24)
        #expect(short.encoded.count == 24 && short.argsz == 56 && short.capOffset == 0 && !short.flags.contains(.caps))
        #expect(info.reply(forArgsz: 56) == info)
        // No capabilities at all: always the standard form.
        let none = DeviceInfo(argsz: 16, flags: [.pci], numRegions: 9, numIRQs: 5)
        #expect(none.reply(forArgsz: 1024).encoded.count == 16)
    }

    @Test func malformedDeviceInfoChainRejected() {
        var w = WireWriter()
        w.u32(64); w.u32(DeviceInfoFlags([.pci, .caps]).rawValue); w.u32(9); w.u32(5); w.u32(24); w.u32(0)
        w.u16(5); w.u16(1); w.u32(24)  // next points at itself
        w.u32(0); w.u32(0)
        #expect(throws: ProtocolError.self) { try DeviceInfo(payload: w.bytes) }
    }
}
