import DeviceSpecs
@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport
import VariantDevices

@Suite struct NVGraceTests {
    static let gib: UInt64 = 1 << 30

    /// A small GH200: 2.75 GiB → usemem 1.5 GiB (BAR4 2 GiB), resmem 1.25 GiB (BAR2 2 GiB).
    static let small = """
        {"name": "gh-t", "ids": {"vendor": "0x10de", "device": "0x2345", "classCode": "0x030200"},
         "express": {"atomicOps": {"completer32": true, "completer64": true}},
         "bars": [{"index": 0, "size": "16MiB", "bits": 64}], "interrupts": {"intx": "A", "msi": {"vectors": 1}},
         "nvgrace": {"memBase": "0x400000000000", "memSize": "0xb0000000"}}
        """

    @Test func theLayoutFollowsTheKernelsRounding() {
        let gh = NVGraceDriver.Layout(memSize: 96 * Self.gib + Self.gib + (256 << 20), hasMigHardwareBug: true)
        #expect(gh.usememLength == 96 * Self.gib && gh.usememBARSize == 128 * Self.gib)
        #expect(gh.resmemLength == Self.gib + (256 << 20) && gh.resmemBARSize == 2 * Self.gib)
        let gb = NVGraceDriver.Layout(memSize: 96 * Self.gib + Self.gib + (256 << 20), hasMigHardwareBug: false)
        #expect(gb.usememLength == 97 * Self.gib + (256 << 20) && gb.usememBARSize == 128 * Self.gib)
        #expect(gb.resmemLength == 0 && gb.resmemBARSize == 0)
        let odd = NVGraceDriver.Layout(memSize: 0x7000_0000, hasMigHardwareBug: true)
        #expect(odd.usememLength == 512 << 20 && odd.resmemLength == 0x5000_0000 && odd.resmemBARSize == 2 * Self.gib)
    }

    @Test func theSpecsBARsRegionsAndConfigSizingMatchTheReference() throws {
        let s = try Served(try loadSpec("nvgrace.json"))
        #expect(s.binding.driver.name == "nvgrace")
        let use = try s.regionInfo(4)
        #expect(use.size == 128 * Self.gib && use.flags == [.read, .write, .mmap, .caps])
        #expect(use.capabilities == [.sparseMmap([SparseMmapArea(offset: 0, size: 96 * Self.gib)])])
        let res = try s.regionInfo(2)
        #expect(res.size == 2 * Self.gib && res.flags == [.read, .write, .mmap, .caps])
        #expect(res.capabilities == [.sparseMmap([SparseMmapArea(offset: 0, size: Self.gib + (256 << 20))])])
        #expect(try s.regionInfo(3).size == 0 && s.regionInfo(5).size == 0)

        // usemem BAR4/5: 0x0C (64-bit prefetchable), sizing 128 GiB.
        #expect(try s.client.readConfig32(0x20) == 0x0000_000C)
        #expect(try s.client.readConfig32(0x24) == 0)
        try s.client.writeConfig32(0x20, 0xFFFF_FFFF)
        try s.client.writeConfig32(0x24, 0xFFFF_FFFF)
        #expect(try s.client.readConfig32(0x20) == 0x0000_000C)
        #expect(try s.client.readConfig32(0x24) == 0xFFFF_FFE0)
        try s.client.writeConfig32(0x20, 0)
        try s.client.writeConfig32(0x24, 0x40)
        #expect(try s.client.readConfig32(0x24) == 0x40 && s.client.readConfig32(0x20) == 0x0C)
        // resmem BAR2/3: sizing 2 GiB.
        try s.client.writeConfig32(0x18, 0xFFFF_FFFF)
        try s.client.writeConfig32(0x1C, 0xFFFF_FFFF)
        #expect(try s.client.readConfig32(0x18) == 0x8000_000C)
        #expect(try s.client.readConfig32(0x1C) == 0xFFFF_FFFF)
        // Reset clears the emulated BARs.
        try s.client.reset()
        #expect(try [0x18, 0x1C, 0x20, 0x24].map { try s.client.readConfig32(UInt64($0)) } == [0x0C, 0, 0x0C, 0])

        // The readiness registers read 0xFF; DevCap2 shows the AtomicOp completers.
        try s.client.writeConfig16(0x04, 0x0002)
        #expect(try s.client.read32(region: 0, offset: 0x1498) == 0xFF)
        #expect(try s.client.read32(region: 0, offset: 0x200BC) == 0xFF)
        let cfg = try s.config()
        let express = try #require(walkStandard(cfg).first { $0.id == 0x10 }).offset
        #expect(cfg.le32(at: express + 0x24) & 0x3C0 == 0x180)
        #expect(try s.client.irqInfo(IRQIndex.msix.rawValue).count == 0)
    }

    @Test func deviceMemoryReadsAndWritesLikeTheKernel() throws {
        let s = try Served(try parseSpec(Self.small))
        let memlength: UInt64 = 0x6000_0000
        // The Command Memory bit is not needed for the fake BARs.
        #expect(try s.client.readConfig16(0x04) & 0x2 == 0)
        try s.client.write(region: 4, offset: memlength - 4, [1, 2, 3, 4])
        #expect(try s.client.read(region: 4, offset: memlength - 4, count: 16) == [1, 2, 3, 4] + [UInt8](repeating: 0xFF, count: 12))
        // A write past memlength succeeds and changes nothing.
        try s.client.write(region: 4, offset: memlength, [9, 9, 9, 9])
        #expect(try s.client.read(region: 4, offset: memlength, count: 4) == [0xFF, 0xFF, 0xFF, 0xFF])
        // At or past bar_size: EINVAL.
        expectServerError(.EINVAL) { _ = try s.client.read(region: 4, offset: 2 * Self.gib, count: 1) }
        expectServerError(.EINVAL) { _ = try s.client.read(region: 4, offset: 2 * Self.gib - 2, count: 4) }
        expectServerError(.EINVAL) { _ = try s.client.read(region: 2, offset: 2 * Self.gib, count: 1) }
        // resmem: 1.25 GiB of memory in a 2 GiB BAR.
        try s.client.write(region: 2, offset: 0x5000_0000 - 2, [7, 7])
        #expect(try s.client.read(region: 2, offset: 0x5000_0000 - 2, count: 4) == [7, 7, 0xFF, 0xFF])
    }

    @Test func mappedDeviceMemoryAndRegionAccessSeeTheSameBytes() throws {
        let s = try Served(try parseSpec(Self.small))
        for (index, length) in [(UInt32(4), UInt64(0x6000_0000)), (2, 0x5000_0000)] {
            let (_, map) = try s.client.mapRegion(index)
            #expect(UInt64(map.length) == length)
            let bytes = (0..<256).map { UInt8(truncatingIfNeeded: $0 ^ Int(index)) }
            map.write(at: UInt64(length) - 256, bytes)
            #expect(try s.client.read(region: index, offset: length - 256, count: 256) == bytes)
            try s.client.write(region: index, offset: 0x1000, Array(bytes.reversed()))
            #expect(map.read(at: 0x1000, count: 256) == Array(bytes.reversed()))
        }
    }

    @Test func gb200WithTheDVSECHasNoResmem() throws {
        let s = try Served(try loadSpec("nvgrace-gb200.json"))
        #expect(s.binding.driver.name == "nvgrace")
        #expect(try s.regionInfo(2).size == 0)
        let use = try s.regionInfo(4)
        #expect(use.size == 64 * Self.gib)
        #expect(use.capabilities == [.sparseMmap([SparseMmapArea(offset: 0, size: 64 * Self.gib)])])
        #expect(try s.client.readConfig32(0x18) == 0)   // no resmem BAR: the core's (absent) BAR2
        // The DVSEC is in config space as the spec gave it.
        let cfg = try s.config()
        #expect(cfg.le32(at: 0x100) & 0xFFFF == 0x23)
        #expect(cfg.le32(at: 0x104) & 0xFFFF == 0x10DE && cfg.le16(at: 0x108) == 3 && cfg.le16(at: 0x10A) == 1)
    }

    @Test func aDeviceThatIsNotReadyOrLacksMemoryFallsThrough() throws {
        let notReady = try parseSpec(Self.small.replacing(#""bits": 64}]"#,
                                                          with: #""bits": 64}], "registers": [{"bar": 0, "offset": "0x1498", "value": 0}]"#))
        let b = try registry.bind(notReady)
        #expect(b.driver.name == "generic")
        #expect(b.skipped.contains { $0.name == "nvgrace" && $0.reason.contains("not ready: BAR0+0x1498 reads 0x0") })
        let noMem = try parseSpec(Self.small.replacing(#""memSize": "0xb0000000""#, with: #""memSize": 0"#))
        expectSpecError(field: "--variant", reason: "the C2C link is down") { _ = try registry.bind(noMem, override: "nvgrace") }
        // Too little memory for usemem once resmem is set aside: a build error naming memSize.
        let tiny = try parseSpec(Self.small.replacing(#""memSize": "0xb0000000""#, with: #""memSize": "1GiB""#))
        expectSpecError(field: "nvgrace.memSize", reason: "leave no usemem") { _ = try NVGraceDriver().build(tiny) }
        // A spec BAR in the way of the fake BARs.
        let clash = try parseSpec(Self.small.replacing(#""bits": 64}]"#, with: #""bits": 64}, {"index": 4, "size": 4096}]"#))
        expectSpecError(field: "bars", reason: "BAR4 is in the way") { _ = try NVGraceDriver().build(clash) }
    }
}
