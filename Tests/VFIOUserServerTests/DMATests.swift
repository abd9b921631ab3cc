import Glibc
@_spi(Server) import PCICore
import Synchronization
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// DMA end to end with the doorbell model: memfd-backed maps the server mmaps,
/// fd-less maps served by DMA_READ / DMA_WRITE messages, and the error cases.
@Suite struct DMATests {
    static let base: UInt64 = 0x4000_0000

    func expectedFill(pattern: UInt32, length: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: (length + 3) / 4 * 4)
        for i in 0..<(out.count / 4) { out.setLE32(pattern &+ UInt32(i), at: i * 4) }
        return Array(out.prefix(length))
    }

    @Test func fillAndChecksumThroughAMappedMemfd() throws {
        let s = try InProcessServer(tag: "dmafd")
        defer { s.stop() }
        let c = try s.client()
        let mem = try ClientMemory(size: 1 << 20)
        try c.dmaMap(mem, address: Self.base)
        try c.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)
        let irq = try c.enableEventFDs(index: IRQIndex.msix.rawValue, start: 1, count: 1)[0]

        // FILL 1000 bytes (not a multiple of 4) at base + 0x3001.
        let marker: [UInt8] = [0xEE, 0xEE, 0xEE, 0xEE]
        mem.write(at: 0x3001 - 4, marker)
        mem.write(at: 0x3001 + 1000, marker)
        try Doorbell.program(c, address: Self.base + 0x3001, length: 1000, pattern: 0xA0B0_C000, vector: 1)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(try Doorbell.read(c, Doorbell.completions) == 1)
        #expect(mem.read(at: 0x3001, count: 1000) == expectedFill(pattern: 0xA0B0_C000, length: 1000))
        #expect(mem.read(at: 0x3001 - 4, count: 4) == marker, "nothing written before the range")
        #expect(mem.read(at: 0x3001 + 1000, count: 4) == marker, "nothing written after the range")
        #expect(EventFD.wait(irq.rawValue, timeoutMs: 2000) == 1, "completion interrupt on MSI-X vector 1")

        // CHECKSUM reads client memory.
        let data = (0..<4096).map { UInt8(truncatingIfNeeded: ($0 &* 131) ^ ($0 >> 3)) }
        mem.write(at: 0x8_0000, data)
        try Doorbell.program(c, address: Self.base + 0x8_0000, length: 4096, vector: 1)
        try Doorbell.ring(c, Doorbell.checksum)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(try Doorbell.read(c, Doorbell.result) == fnv1a(data))
        #expect(EventFD.wait(irq.rawValue, timeoutMs: 2000) == 1)

        // Exactly the last byte of the mapping is reachable; one past it is not.
        try Doorbell.program(c, address: Self.base + (1 << 20) - 4, length: 4, pattern: 0x0403_0201, vector: 1)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(mem.read(at: (1 << 20) - 4, count: 4) == [1, 2, 3, 4])
        try Doorbell.program(c, address: Self.base + (1 << 20) - 4, length: 5, vector: 1)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == VFIOErrno.EFAULT.rawValue)
        #expect(mem.read(at: (1 << 20) - 4, count: 4) == [1, 2, 3, 4], "a failing access writes nothing")
    }

    @Test func fdLessMapsAreServedWithDMAMessages() throws {
        let s = try InProcessServer(tag: "dmamsg")
        defer { s.stop() }
        let c = try s.client()
        let mem = try ClientMemory(size: 64 << 10)
        try c.dmaMapWithoutFD(mem, address: Self.base)
        try c.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)

        // FILL: the server sends DMA_WRITE while our REGION_WRITE waits for its reply.
        try Doorbell.program(c, address: Self.base + 0x100, length: 512, pattern: 0x1000_0000)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(c.servedDMAWrites >= 1)
        #expect(mem.read(at: 0x100, count: 512) == expectedFill(pattern: 0x1000_0000, length: 512))

        // CHECKSUM: DMA_READ.
        let data = (0..<3000).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
        mem.write(at: 0x2000, data)
        try Doorbell.program(c, address: Self.base + 0x2000, length: 3000)
        let readsBefore = c.servedDMAReads
        try Doorbell.ring(c, Doorbell.checksum)
        #expect(c.servedDMAReads > readsBefore)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(try Doorbell.read(c, Doorbell.result) == fnv1a(data))

        // A posted doorbell: the server's DMA_WRITE arrives while no call is waiting and
        // is answered during the next call; the read after it sees the completed fill.
        let writesBefore = c.servedDMAWrites
        try Doorbell.program(c, address: Self.base + 0x8000, length: 64, pattern: 0x7700_0000)
        try Doorbell.ring(c, Doorbell.fill, posted: true)
        #expect(try Doorbell.read(c, Doorbell.completions) == 3)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(c.servedDMAWrites > writesBefore)
        #expect(mem.read(at: 0x8000, count: 64) == expectedFill(pattern: 0x7700_0000, length: 64))
    }

    @Test func dmaErrorsReachTheDoorbellAndTheClient() throws {
        let s = try InProcessServer(tag: "dmaerr")
        defer { s.stop() }
        let c = try s.client()
        let mem = try ClientMemory(size: 1 << 16)
        try c.dmaMap(mem, address: Self.base)
        try c.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)

        // Unmapped address → EFAULT in ERROR.
        try Doorbell.program(c, address: 0x1000, length: 16)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 14)
        // Straddling the end of the mapping → EFAULT too.
        try Doorbell.program(c, address: Self.base + (1 << 16) - 8, length: 16)
        try Doorbell.ring(c, Doorbell.checksum)
        #expect(try Doorbell.read(c, Doorbell.error) == 14)

        // Overlapping maps → EEXIST; an identical re-map is accepted.
        c.expectErrno(.EEXIST) { try c.dmaMap(mem, address: Self.base + 0x1000, size: 0x1000) }
        c.expectErrno(.EEXIST) { try c.dmaMap(mem, address: Self.base - 0x1000, size: 0x2000) }
        try c.dmaMap(mem, address: Self.base)
        // Unknown ranges → ENOENT (address and size must match a map exactly).
        c.expectErrno(.ENOENT) { try c.dmaUnmap(address: 0x9999_0000, size: 0x1000) }
        c.expectErrno(.ENOENT) { try c.dmaUnmap(address: Self.base, size: 0x1000) }
        // A second, adjacent map; then unmap ALL (flags 0x2, address/size 0) drops both.
        try c.dmaMap(mem, address: Self.base + (1 << 16))
        try Doorbell.program(c, address: Self.base + (1 << 16) - 8, length: 16, pattern: 0x55)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 0, "an access may span adjacent maps")
        let raw = DMAUnmapRequest(flags: .all, address: 0, size: 0).encoded
        #expect(raw.le32(at: 4) == 0x2)
        let echo = try c.call(.dmaUnmap, payload: raw)
        #expect(echo.count == 0 || echo.count == 24)
        try Doorbell.program(c, address: Self.base, length: 16)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 14, "nothing mapped after unmap ALL")
        c.expectErrno(.ENOENT) { try c.dmaUnmap(address: Self.base, size: 1 << 16) }
        // ALL with a non-zero address is EINVAL.
        c.expectErrno(.EINVAL) { try c.call(.dmaUnmap, payload: DMAUnmapRequest(flags: .all, address: Self.base, size: 0).encoded) }

        // Bus Master off → EPERM (1), and memory untouched.
        try c.dmaMap(mem, address: Self.base)
        mem.fill(0x11)
        try c.writeConfig16(0x04, Cmd.memory)
        try Doorbell.program(c, address: Self.base, length: 16, pattern: 0x99)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 1)
        #expect(mem.read(at: 0, count: 16) == [UInt8](repeating: 0x11, count: 16))
        // And on again: works.
        try c.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(mem.read(at: 0, count: 4) == [0x99, 0, 0, 0])
    }
    @Test func dmaMessagesAreSplitToTheClientsMaxDataXferSize() throws {
        let s = try InProcessServer(tag: "dmasplit")
        defer { s.stop() }
        var caps = VFIOUserClient.defaultCapabilities
        caps.maxDataXferSize = 4096
        let c = try s.client(capabilities: caps)
        let mem = try ClientMemory(size: 64 << 10)
        try c.dmaMapWithoutFD(mem, address: Self.base)
        try c.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)
        try Doorbell.program(c, address: Self.base + 10, length: 10_000, pattern: 0x3300_0000)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 0, "no DMA message above the client's 4 KiB (E2BIG otherwise)")
        #expect(c.servedDMAWrites == 3)
        #expect(mem.read(at: 10, count: 10_000) == expectedFill(pattern: 0x3300_0000, length: 10_000))
        try Doorbell.ring(c, Doorbell.checksum)
        #expect(c.servedDMAReads == 3)
        #expect(try Doorbell.read(c, Doorbell.result) == fnv1a(mem.read(at: 10, count: 10_000)))
    }

    @Test func aMapWithAnUnalignedFileOffsetReachesTheRightBytes() throws {
        let s = try InProcessServer(tag: "dmaoff")
        defer { s.stop() }
        let c = try s.client()
        let mem = try ClientMemory(size: 1 << 16)
        // IOVA base → file offset 0x1234 (not page aligned).
        try c.dmaMap(mem, address: Self.base, offset: 0x1234, size: 0x4000)
        try c.writeConfig16(0x04, Cmd.memory | Cmd.busMaster)
        try Doorbell.program(c, address: Self.base + 4, length: 8, pattern: 0xC0DE_0000)
        try Doorbell.ring(c, Doorbell.fill)
        #expect(try Doorbell.read(c, Doorbell.error) == 0)
        #expect(mem.read(at: 0x1238, count: 8) == expectedFill(pattern: 0xC0DE_0000, length: 8))
        #expect(mem.read(at: 0x1230, count: 8) == [0, 0, 0, 0, 0, 0, 0, 0])
        // Bad maps: size 0, no access flags, IOVA wrap-around.
        c.expectErrno(.EINVAL) { try c.dmaMap(mem, address: 0x10_0000, size: 0) }
        c.expectErrno(.EINVAL) { try c.dmaMap(mem, address: 0x10_0000, flags: []) }
        c.expectErrno(.EINVAL) { try c.dmaMap(mem, address: UInt64.max - 0xFFF, size: 0x2000) }
    }
}
