import DeviceSpecs
@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport
import VariantDevices

@Suite struct NVLink2Tests {
    static let tgt: UInt64 = 0x0000_2000_0000_0000
    static let gpuType: UInt32 = 0x8000_10DE
    static let npuType: UInt32 = 0x8000_1014

    static let gpu = """
        {"name": "v100-t", "ids": {"vendor": "0x10de", "device": "0x1db5", "classCode": "0x030200"},
         "express": true, "bars": [{"index": 0, "size": "16MiB"}], "interrupts": {"intx": "A", "msi": {"vectors": 1}},
         "nvlink2": {"tgt": "0x0000200000000000", "ramWindow": "64MiB", "ramSize": "16MiB"}}
        """

    static func npu(atsd: String) -> String {
        """
        {"name": "npu-t", "ids": {"vendor": "0x1014", "device": "0x04ea", "classCode": "0x068000"}, "express": true,
         "interrupts": {"intx": "A"}, "nvlink2": {"tgt": "0x0000200000000000", "linkSpeed": 9, "atsdSize": "\(atsd)"}}
        """
    }

    @Test func theGPURAMRegionHasItsTypeSparseAreaAndSSATGT() throws {
        let s = try Served(try parseSpec(Self.gpu))
        #expect(s.binding.driver.name == "nvlink2-gpu")
        #expect(try s.client.deviceInfo().numRegions == 10)
        let info = try s.regionInfo(9)
        #expect(info.size == 64 << 20)
        #expect(info.flags == [.read, .write, .mmap, .caps])
        #expect(info.capabilities == [
            .type(type: Self.gpuType, subtype: 1),
            .sparseMmap([SparseMmapArea(offset: 0, size: 16 << 20)]),
            .nvlink2SSATGT(tgt: Self.tgt),
        ])
        // The raw reply, byte for byte: the 32-byte struct, then TYPE, SPARSE_MMAP, SSATGT.
        let m = try s.client.callKeepingFDs(.deviceGetRegionInfo, payload: RegionInfoRequest(argsz: 200, index: 9).encoded)
        #expect(m.fds.count == 1)
        m.closeFDs()
        var w = WireWriter()
        w.u32(32 + 16 + 32 + 16); w.u32(0xF); w.u32(9); w.u32(32); w.u64(64 << 20); w.u64(0)
        w.u16(2); w.u16(1); w.u32(48); w.u32(Self.gpuType); w.u32(1)
        w.u16(1); w.u16(1); w.u32(80); w.u32(1); w.u32(0); w.u64(0); w.u64(16 << 20)
        w.u16(4); w.u16(1); w.u32(0); w.u64(Self.tgt)
        #expect(Array(m.payload) == w.bytes)
    }

    @Test func mappedGPURAMAndRegionAccessSeeTheSameBytes() throws {
        let s = try Served(try parseSpec(Self.gpu))
        let (info, map) = try s.client.mapRegion(9)
        #expect(info.flags.contains(.mmap))
        #expect(map.length == 16 << 20)
        // A write through the mapping is what REGION_READ returns...
        let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        map.write(at: 0x10_0000, pattern)
        #expect(try s.client.read(region: 9, offset: 0x10_0000, count: 4096) == pattern)
        // ...and a REGION_WRITE shows in the mapping.
        try s.client.write(region: 9, offset: 0xFF_F000, Array(pattern.reversed()))
        #expect(map.read(at: 0xFF_F000, count: 4096) == Array(pattern.reversed()))
        // Past the RAM, inside the window: 0xFF, writes dropped.
        #expect(try s.client.read(region: 9, offset: (16 << 20) - 4, count: 16) == Array(pattern.reversed().suffix(4)) + [UInt8](repeating: 0xFF, count: 12))
        try s.client.write(region: 9, offset: 32 << 20, [1, 2, 3, 4])
        #expect(try s.client.read(region: 9, offset: 32 << 20, count: 4) == [0xFF, 0xFF, 0xFF, 0xFF])
        expectServerError(.EINVAL) { _ = try s.client.read(region: 9, offset: 64 << 20, count: 1) }
    }

    @Test func accessesThroughTheMappingCostNoMessages() throws {
        let s = try Served(try parseSpec(Self.gpu))
        let (_, map) = try s.client.mapRegion(9)
        // With the connection gone, only the mapping can carry the bytes.
        s.client.close()
        map.write(at: 0x2000, Array("no messages".utf8))
        let second = try s.connect(extensions: false)
        defer { second.close() }
        #expect(try second.read(region: 9, offset: 0x2000, count: 11) == Array("no messages".utf8))
    }

    @Test func theATSDRegionChainIsTypeThenSSATGTThenLNKSPD() throws {
        let s = try Served(try parseSpec(Self.npu(atsd: "64KiB")))
        #expect(s.binding.driver.name == "nvlink2-npu")
        let info = try s.regionInfo(9)
        #expect(info.size == 65536 && info.flags == [.read, .write, .mmap, .caps])
        #expect(info.capabilities == [.type(type: Self.npuType, subtype: 1), .nvlink2SSATGT(tgt: Self.tgt), .nvlink2LinkSpeed(9)])
        let m = try s.client.callKeepingFDs(.deviceGetRegionInfo, payload: RegionInfoRequest(argsz: 200, index: 9).encoded)
        m.closeFDs()
        var w = WireWriter()
        w.u32(80); w.u32(0xF); w.u32(9); w.u32(32); w.u64(65536); w.u64(0)
        w.u16(2); w.u16(1); w.u32(48); w.u32(Self.npuType); w.u32(1)
        w.u16(4); w.u16(1); w.u32(64); w.u64(Self.tgt)
        w.u16(5); w.u16(1); w.u32(0); w.u32(9); w.u32(0)
        #expect(Array(m.payload) == w.bytes)
        // The whole region maps; mapping and REGION_READ/WRITE agree.
        let (_, map) = try s.client.mapRegion(9)
        #expect(map.length == 65536)
        map.write(at: 0x100, [0xA5, 0x5A])
        #expect(try s.client.read(region: 9, offset: 0x100, count: 2) == [0xA5, 0x5A])
        try s.client.write(region: 9, offset: 0xFFFC, [9, 8, 7, 6])
        #expect(map.read(at: 0xFFFC, count: 4) == [9, 8, 7, 6])
    }

    @Test func theGPUAndNPUShareTheirTGT() throws {
        let g = try Served(try loadSpec("nvlink2.json"))
        let n = try Served(try loadSpec("nvlink2-npu.json"))
        func tgt(_ s: Served) throws -> UInt64? {
            for case .nvlink2SSATGT(let t) in try s.regionInfo(9).capabilities { return t }
            return nil
        }
        #expect(try tgt(g) == Self.tgt)
        #expect(try tgt(g) == tgt(n))
        // The spec's sizes: a 128 GiB window with 16 GiB of RAM behind it.
        let info = try g.regionInfo(9)
        #expect(info.size == 128 << 30)
        #expect(info.capabilities.contains(.sparseMmap([SparseMmapArea(offset: 0, size: 16 << 30)])))
        try g.client.write(region: 9, offset: (16 << 30) - 8, [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(try g.client.read(region: 9, offset: (16 << 30) - 8, count: 8) == [1, 2, 3, 4, 5, 6, 7, 8])
    }

    @Test func withoutATSDTheRegionIsEmptyButKeepsItsCapabilities() throws {
        let s = try Served(try parseSpec(Self.npu(atsd: "0")))
        let info = try s.regionInfo(9)
        #expect(info.size == 0)
        #expect(info.flags == [.caps])
        #expect(info.capabilities == [.type(type: Self.npuType, subtype: 1), .nvlink2SSATGT(tgt: Self.tgt), .nvlink2LinkSpeed(9)])
        expectServerError(.EINVAL) { _ = try s.client.read(region: 9, offset: 0, count: 4) }
    }

    @Test func withoutThePlatformTheDeviceIsPlainVFIOPCI() throws {
        // The "no platform" mode: forcing generic (or no nvlink2 section) leaves 9 regions.
        let s = try Served(try parseSpec(Self.gpu), override: "generic")
        #expect(try s.client.deviceInfo().numRegions == 9)
        let t = try Served(try loadSpec("nvlink2-npu.json"), override: "generic")
        #expect(try t.client.deviceInfo().numRegions == 9)
    }

    @Test func badNVLink2SectionsNameTheField() throws {
        let gpu = try #require(registry.driver(named: "nvlink2-gpu"))
        expectSpecError(field: "nvlink2.ramSize", reason: "out of range") {
            _ = try gpu.build(try parseSpec(Self.gpu.replacing(#""ramSize": "16MiB""#, with: #""ramSize": "128MiB""#)))
        }
        expectSpecError(field: "nvlink2.ramWindow", reason: "multiple of 4 KiB") {
            _ = try gpu.build(try parseSpec(Self.gpu.replacing(#""ramWindow": "64MiB""#, with: #""ramWindow": 100"#)))
        }
        let npu = try #require(registry.driver(named: "nvlink2-npu"))
        expectSpecError(field: "nvlink2.atsdSize", reason: "multiple of 4 KiB") {
            _ = try npu.build(try parseSpec(Self.npu(atsd: "100")))
        }
        expectSpecError(field: "nvlink2.ramWindow", reason: "unknown key") {
            _ = try npu.build(try parseSpec(Self.npu(atsd: "0").replacing(#""linkSpeed": 9"#, with: #""linkSpeed": 9, "ramWindow": 1"#)))
        }
    }
}
