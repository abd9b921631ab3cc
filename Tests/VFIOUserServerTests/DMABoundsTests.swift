import Glibc
@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// A DMA_MAP larger than the file behind its fd would let a device access raise
/// SIGBUS in the server; it must be refused up front.
@Suite struct DMABoundsTests {
    /// The smallest device that can do DMA: one register BAR.
    static func oneBAR(_ name: String) -> PCIDeviceConfiguration {
        var c = PCIDeviceConfiguration(name: name, identity: PCIIdentity(vendor: 0x1b36, device: 0x98))
        c.bars = [BARDescriptor(index: 0, size: 4096)]
        return c
    }

    @Test func aMapBeyondTheEndOfItsFileIsRefused() throws {
        let s = try InProcessServer(configuration: Self.oneBAR("dma-bounds"), tag: "dmab")
        defer { s.stop() }
        let device = s.device
        let client = try s.client()
        let mem = try ClientMemory(size: 8192)
        #expect(throws: ClientError.server(.dmaMap, .EINVAL)) {
            try client.dmaMap(mem, address: 0x10000, size: 1 << 20)
        }
        #expect(throws: ClientError.server(.dmaMap, .EINVAL)) {
            try client.dmaMap(mem, address: 0x10000, offset: 4096, size: 8192)
        }
        try client.dmaMap(mem, address: 0x10000, offset: 4096, size: 4096)
        #expect(device.dmaMappings.count == 1)
        // The device reaches exactly that page: one byte past it is EFAULT, not SIGBUS.
        mem.write(at: 4096, [0xAB])
        try client.writeConfig16(0x04, 0x0006)
        #expect(try device.dmaRead(address: 0x10000, count: 1) == [0xAB])
        #expect(throws: VFIOErrno.EFAULT) { _ = try device.dmaRead(address: 0x10000, count: 4097) }
    }

    @Test func oneClientCannotUnmapAnothersMemory() throws {
        let s = try InProcessServer(configuration: Self.oneBAR("dma-owner"), tag: "dmao")
        defer { s.stop() }
        let device = s.device
        let a = try s.client()
        let b = try s.client()
        let mem = try ClientMemory(size: 4096)
        try a.dmaMap(mem, address: 0x20000)
        // The device's DMA address space is A's: B may neither unmap nor map.
        #expect(throws: ClientError.server(.dmaUnmap, .EBUSY)) { try b.dmaUnmap(address: 0x20000, size: 4096) }
        #expect(throws: ClientError.server(.dmaUnmap, .EBUSY)) { try b.dmaUnmapAll() }
        #expect(throws: ClientError.server(.dmaMap, .EBUSY)) { try b.dmaMap(mem, address: 0x40000) }
        #expect(device.dmaMappings.count == 1)
        #expect(throws: ClientError.server(.dmaUnmap, .ENOENT)) { try a.dmaUnmap(address: 0x20000, size: 8192) }
        try a.dmaUnmapAll()
        #expect(device.dmaMappings.isEmpty)
    }
}
