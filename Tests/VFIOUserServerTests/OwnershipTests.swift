import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// One VMM owns a device: its DMA address space, interrupt wiring, register writes
/// and resets. Other clients may look (info, reads) and drive migration; they can
/// never make the device reach the owner's memory, unmap it, or reset it.
@Suite struct OwnershipTests {
    static let base: UInt64 = 0x4000_0000

    @Test func aSecondVMMAtTheSameIOVAIsRefusedAndCannotReachTheFirstsMemory() throws {
        let s = try InProcessServer(tag: "own-two")
        defer { s.stop() }
        let a = try s.client()
        let b = try s.client()
        let memA = try ClientMemory(size: 1 << 16)
        let memB = try ClientMemory(size: 1 << 16)
        memB.fill(0x77)
        try a.dmaMap(memA, address: Self.base)
        try a.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)
        // B sends what a second QEMU would: the same map, interrupts, a reset, MMIO.
        b.expectErrno(.EBUSY) { try b.dmaMap(memB, address: Self.base) }
        b.expectErrno(.EBUSY) { _ = try b.enableEventFDs(index: IRQIndex.msix.rawValue, start: 0, count: 1) }
        b.expectErrno(.EBUSY) { try b.reset() }
        b.expectErrno(.EBUSY) { try b.write32(region: Doorbell.bar, offset: Doorbell.scratch, 0xBAD) }
        b.expectErrno(.EBUSY) { try b.dmaUnmap(address: Self.base, size: 1 << 16) }
        b.expectErrno(.EBUSY) { try b.writeConfig16(0x04, 0) }
        #expect(s.device.dmaMappings.count == 1)
        // B may still look: device info, region info (without the fd of device
        // memory), config and register reads.
        #expect(try b.deviceInfo().numRegions >= 9)
        #expect(try b.readConfig16(0) == s.device.configuration.identity.vendor)
        #expect(try Doorbell.read(b, Doorbell.magic) == 0x4455_4656)
        let ram = try (0..<6).first { try b.regionInfo($0).info.flags.contains(.mmap) }
        if let ram {
            #expect(try b.regionInfo(ram).fd == nil, "device memory is the owner's to map")
            #expect(try a.regionInfo(ram).fd != nil)
        }
        // A's DMA goes to A's memory only.
        try Doorbell.program(a, address: Self.base + 0x100, length: 16, pattern: 0xA000_0000)
        try Doorbell.ring(a, Doorbell.fill)
        #expect(try Doorbell.read(a, Doorbell.error) == 0)
        #expect(memA.read(at: 0x100, count: 4) == [0, 0, 0, 0xA0])
        #expect(memB.read(at: 0, count: 1 << 16) == [UInt8](repeating: 0x77, count: 1 << 16), "B's memory untouched")
        #expect(try Doorbell.read(a, Doorbell.scratch) == 0, "B's write did not land")
    }

    @Test func whenTheOwnerLeavesTheNextClientGetsAFreshDevice() throws {
        let s = try InProcessServer(tag: "own-next")
        defer { s.stop() }
        let a = try s.client()
        let mem = try ClientMemory(size: 1 << 16)
        try a.dmaMap(mem, address: Self.base)
        try a.writeConfig16(0x04, Cmd.memory)
        try a.write32(region: Doorbell.bar, offset: Doorbell.scratch, 0x1234)
        let b = try s.client()
        b.expectErrno(.EBUSY) { try b.dmaMap(mem, address: Self.base) }
        a.close()
        // B's next attempt succeeds once A's session is gone: the device was reset.
        #expect(waitUntil { s.device.owner == nil })
        try b.dmaMap(mem, address: Self.base)
        try b.writeConfig16(0x04, Cmd.memory)
        #expect(try Doorbell.read(b, Doorbell.scratch) == 0)
        #expect(s.device.dmaMappings.count == 1 && s.device.dmaMappings[0].owner == s.device.owner)
    }

    /// A VMM restarted at once: its first command may come before the server has seen
    /// the old connection go; it is not refused for that.
    @Test func aClientThatReconnectsAtOnceIsNotRefused() throws {
        let s = try InProcessServer(tag: "own-again")
        defer { s.stop() }
        let mem = try ClientMemory(size: 1 << 16)
        for _ in 0..<50 {
            let c = try s.client()
            try c.dmaMap(mem, address: Self.base)
            c.close()
        }
        #expect(waitUntil { s.device.owner == nil && s.device.dmaMappings.isEmpty })
    }

    /// `vfu migrate` and similar tools drive migration next to the VMM that owns the device.
    @Test func aManagementClientDrivesMigrationNextToTheOwner() throws {
        let s = try InProcessServer(spec: "migratable-vf.json", tag: "own-mig")
        defer { s.stop() }
        let vmm = try s.client()
        let mem = try ClientMemory(size: 1 << 16)
        try vmm.dmaMap(mem, address: Self.base)
        let tool = try s.client()
        #expect(try tool.migrationState() == .running)
        try tool.setMigrationState(.stop)
        #expect(try vmm.migrationState() == .stop)
        try tool.setMigrationState(.running)
        #expect(s.device.owner != nil, "the VMM still owns the device")
        tool.expectErrno(.EBUSY) { try tool.reset() }
    }

    @Test func theAdvertisedMaxDMAMapsIsEnforced() throws {
        var o = ServerOptions()
        o.maxDMAMaps = 3
        let s = try InProcessServer(tag: "own-maps", options: o)
        defer { s.stop() }
        // A request as long as QEMU's, so the reply has room for max_dma_maps.
        let c = try s.client(capabilities: VersionCapabilities(maxMsgFDs: 16, maxDataXferSize: 1 << 20, pgsizes: 4096, maxDMAMaps: 65535, writeMultiple: true))
        #expect(c.serverCapabilities.maxDMAMaps == 3)
        let mem = try ClientMemory(size: 1 << 16)
        for k in 0..<3 { try c.dmaMap(mem, address: Self.base + UInt64(k) << 20, size: 4096) }
        c.expectErrno(.ENOSPC) { try c.dmaMap(mem, address: Self.base + 3 << 20, size: 4096) }
        try c.dmaUnmap(address: Self.base, size: 4096)
        try c.dmaMap(mem, address: Self.base + 3 << 20, size: 4096)
    }
}
