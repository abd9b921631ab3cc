import Glibc
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// The region-access hot path (InPlaceAccess.swift) against the default spec: RAM
/// reads sent from the region, writes received into it (past the receive buffer
/// too), register and config reads through the scratch buffer, REGION_WRITE_MULTI
/// from the buffer, and requests it must leave to the general path.
@Suite struct InPlaceAccessTests {
    static let ram = RegionIndex.bar2.rawValue  // 1 MiB RAM
    static let regs = RegionIndex.bar0.rawValue  // registers: 0x100 reads 0xcafef00d, 0x104 writable

    func client(_ s: InProcessServer) throws -> VFIOUserClient {
        let c = try s.client()
        try c.writeConfig16(0x04, 0x0003)  // memory and I/O decoding on (the first write claims the device)
        return c
    }

    @Test func largeWritesLandInRAMAndReadBackWhole() throws {
        let s = try InProcessServer(tag: "inplace-ram")
        defer { s.stop() }
        let c = try client(s)
        let big = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        try c.write(region: Self.ram, offset: 0, big)  // 1 MiB: far past the 16 KiB receive buffer
        #expect(try c.read(region: Self.ram, offset: 0, count: 1 << 20) == big)
        let mid = [UInt8](repeating: 0xA5, count: 65536)
        try c.write(region: Self.ram, offset: 4096, mid)
        #expect(try c.read(region: Self.ram, offset: 4096, count: 65536) == mid)
        #expect(try c.read(region: Self.ram, offset: 4090, count: 8) == Array(big[4090..<4096]) + [0xA5, 0xA5])
        // The device's own view agrees with what the client wrote.
        #expect(s.device.memory(ofBAR: 2)?.mapping.read(at: 4096, count: 4) == [0xA5, 0xA5, 0xA5, 0xA5])
        // Out of bounds is refused and the stream goes on.
        #expect(throws: ClientError.self) { try c.read(region: Self.ram, offset: (1 << 20) - 2, count: 4) }
        #expect(throws: ClientError.self) { try c.write(region: Self.ram, offset: (1 << 20) - 2, [1, 2, 3, 4]) }
        #expect(try c.read32(region: Self.regs, offset: 0x100) == 0xcafe_f00d)
    }

    @Test func registersConfigAndWriteMultiAreServedInPlace() throws {
        let s = try InProcessServer(tag: "inplace-regs")
        defer { s.stop() }
        let c = try client(s)
        #expect(try c.readConfig16(0) == 0x1b36)
        try c.write32(region: Self.regs, offset: 0x104, 0x1234_5678)
        #expect(try c.read32(region: Self.regs, offset: 0x104) == 0x1234_5678)
        let multi = WriteMulti(entries: [
            WriteMultiEntry(offset: 0x104, region: Self.regs, count: 4, data: 0xdead_beef),
            WriteMultiEntry(offset: 0x104, region: Self.regs, count: 2, data: 0x1111),
        ])
        let reply = try c.call(.regionWriteMulti, payload: multi.encoded)
        #expect(reply.le64(at: 0) == 2)
        #expect(try c.read32(region: Self.regs, offset: 0x104) == 0xdead_1111)
        // An entry with count 0 is refused as a whole by the general path, nothing written.
        let bad = WriteMulti(entries: [WriteMultiEntry(offset: 0x104, region: Self.regs, count: 0, data: 0)])
        #expect(throws: ClientError.self) { try c.call(.regionWriteMulti, payload: bad.encoded) }
        #expect(try c.read32(region: Self.regs, offset: 0x104) == 0xdead_1111)
    }

    @Test func aSecondClientReadsButItsWritesAreRefused() throws {
        let s = try InProcessServer(tag: "inplace-owner")
        defer { s.stop() }
        let owner = try client(s)
        try owner.write(region: Self.ram, offset: 0, [9, 8, 7, 6])
        let other = try s.client()
        #expect(try other.read(region: Self.ram, offset: 0, count: 4) == [9, 8, 7, 6])
        #expect(throws: ClientError.self) { try other.write(region: Self.ram, offset: 0, [0, 0, 0, 0]) }
        #expect(try owner.read(region: Self.ram, offset: 0, count: 4) == [9, 8, 7, 6])
    }
}
