@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol

/// The standard header's write policy, BAR/ROM sizing and decode gating, bit by
/// bit, over a real socket (reference §1.2-§1.4).
@Suite struct ConfigHeaderTests {
    @Test func readOnlyIdentityFieldsIgnoreWrites() throws {
        let s = try Served(spec: "default")
        let before = try s.client.readConfig(offset: 0, count: 64)
        // Every read-only header byte, written with all ones, byte by byte and as dwords.
        let readOnly: [UInt64] = [0x00, 0x01, 0x02, 0x03,          // vendor, device
                                  0x08, 0x09, 0x0A, 0x0B,          // revision, class code
                                  0x0E,                            // header type
                                  0x2C, 0x2D, 0x2E, 0x2F,          // subsystem vendor, subsystem
                                  0x34,                            // capabilities pointer
                                  0x3D]                            // interrupt pin
        for o in readOnly { try s.set8(o, 0xFF) }
        try s.set32(0x00, 0xFFFF_FFFF)
        try s.set32(0x08, 0xFFFF_FFFF)
        try s.set32(0x2C, 0xFFFF_FFFF)
        try s.set32(0x34, 0xFFFF_FFFF)
        let after = try s.client.readConfig(offset: 0, count: 64)
        for o in readOnly { #expect(after[Int(o)] == before[Int(o)], "config byte 0x\(String(o, radix: 16)) changed") }
        #expect(after.u32(0) == 0x0005_1b36)
        #expect(after[0x08] == 0x02 && after[0x09] == 0x00 && after[0x0A] == 0x00 && after[0x0B] == 0xFF)
        #expect(after[0x0E] == 0x00)
        #expect(after.u32(0x2C) == 0x1100_1af4)
        #expect(after[0x34] == 0x40)
        #expect(after[0x3D] == 0x01)  // INTA
    }

    @Test func interruptLineIsWritableAndThePinIsNot() throws {
        let s = try Served(spec: "default")
        #expect(try s.cfg8(0x3C) == 0xFF)  // "unknown" until firmware routes it
        try s.set8(0x3C, 0x0B)
        #expect(try s.cfg8(0x3C) == 0x0B)
        // A dword write reaches the line only; pin, Min_Gnt and Max_Lat are read-only.
        try s.set32(0x3C, 0xFFFF_FF05)
        #expect(try s.cfg32(0x3C) == 0x0000_0105)
    }

    @Test func commandRegisterKeepsOnlyItsDefinedBits() throws {
        let s = try Served(spec: "default")
        try s.set16(0x04, 0xFFFF)
        // I/O, Memory, Bus Master, Parity Error Response, SERR#, Interrupt Disable.
        #expect(try s.cfg16(0x04) == 0x0547)
        try s.set16(0x04, 0)
        #expect(try s.cfg16(0x04) == 0)
    }

    @Test func statusErrorBitsAreWriteOneToClear() throws {
        let s = try Served(spec: "default")
        #expect(try s.cfg16(0x06) == 0x0010)  // Capabilities List only
        // The device model latches error bits (raw store, as hardware would).
        let errorBits: UInt16 = 0x8000 | 0x4000 | 0x2000 | 0x1000 | 0x0800 | 0x0100
        s.device.lock.withLock { s.device.config.store16(s.device.config.load16(0x06) | errorBits, 0x06) }
        #expect(try s.cfg16(0x06) == 0x0010 | errorBits)
        // Writing 0 clears nothing.
        try s.set16(0x06, 0)
        #expect(try s.cfg16(0x06) == 0x0010 | errorBits)
        // Writing 1 clears exactly the bits written: Detected Parity Error first.
        try s.set16(0x06, 0x8000)
        #expect(try s.cfg16(0x06) == 0x0010 | (errorBits & ~0x8000))
        // Capabilities List and Interrupt Status are read-only: a 1 there changes nothing.
        try s.set16(0x06, 0x0018)
        #expect(try s.cfg16(0x06) == 0x0010 | (errorBits & ~0x8000))
        // Clearing the rest through the upper half of a dword write to Command.
        try s.set32(0x04, UInt32(errorBits) << 16)
        #expect(try s.cfg16(0x06) == 0x0010)
        #expect(try s.cfg16(0x04) == 0)
    }

    /// One BAR of each kind, plus an 8 GiB 64-bit BAR whose size shows in the high dword.
    static func barConfiguration(rom: UInt64 = 0) -> PCIDeviceConfiguration {
        var c = PCIDeviceConfiguration(name: "bars", identity: PCIIdentity(vendor: 0x1b36, device: 0x00b0))
        c.bars = [
            BARDescriptor(index: 0, size: 4096, kind: .memory32),
            BARDescriptor(index: 1, size: 64 << 10, kind: .memory32, prefetchable: true),
            BARDescriptor(index: 2, size: 8 << 30, kind: .memory64, prefetchable: true),
            BARDescriptor(index: 4, size: 32, kind: .io),
        ]
        c.romSize = rom
        return c
    }

    @Test func barSizingReturnsTheSizeMaskWithTheTypeFlags() throws {
        let s = try Served(Self.barConfiguration())
        // Power-on: address 0, flags only.
        #expect(try s.cfg32(0x10) == 0x0000_0000)
        #expect(try s.cfg32(0x14) == 0x0000_0008)
        #expect(try s.cfg32(0x18) == 0x0000_000C)
        #expect(try s.cfg32(0x1C) == 0x0000_0000)
        #expect(try s.cfg32(0x20) == 0x0000_0001)
        for o in stride(from: UInt64(0x10), through: 0x24, by: 4) { try s.set32(o, 0xFFFF_FFFF) }
        #expect(try s.cfg32(0x10) == 0xFFFF_F000)   // 4 KiB, 32-bit, non-prefetchable
        #expect(try s.cfg32(0x14) == 0xFFFF_0008)   // 64 KiB, 32-bit, prefetchable
        #expect(try s.cfg32(0x18) == 0x0000_000C)   // 8 GiB, 64-bit, prefetchable: low dword
        #expect(try s.cfg32(0x1C) == 0xFFFF_FFFE)   //   ... high dword carries the size
        #expect(try s.cfg32(0x20) == 0xFFFF_FFE1)   // 32 bytes of I/O
        #expect(try s.cfg32(0x24) == 0)             // BAR5 unimplemented
        // An address reads back as address & mask | flags.
        try s.set32(0x10, 0xFEBF_1234)
        try s.set32(0x14, 0xFE12_3456)
        try s.set32(0x18, 0x4567_89AB)
        try s.set32(0x1C, 0x1234_5677)
        try s.set32(0x20, 0x0000_C0DF)
        #expect(try s.cfg32(0x10) == 0xFEBF_1000)
        #expect(try s.cfg32(0x14) == 0xFE12_0008)
        #expect(try s.cfg32(0x18) == 0x0000_000C)
        #expect(try s.cfg32(0x1C) == 0x1234_5676)
        #expect(try s.cfg32(0x20) == 0x0000_C0C1)
        // Sub-dword writes go through the same policy.
        try s.set16(0x12, 0xABCD)
        #expect(try s.cfg32(0x10) == 0xABCD_1000)
    }

    @Test func a64BitBarPairSizesLowAndHighDwords() throws {
        // The default spec's BAR2: 1 MiB, 64-bit, prefetchable RAM.
        let s = try Served(spec: "default")
        #expect(try s.cfg32(0x18) == 0x0000_000C)
        try s.set32(0x18, 0xFFFF_FFFF)
        try s.set32(0x1C, 0xFFFF_FFFF)
        #expect(try s.cfg32(0x18) == 0xFFF0_000C)
        #expect(try s.cfg32(0x1C) == 0xFFFF_FFFF)
        try s.set32(0x18, 0xE012_3456)
        try s.set32(0x1C, 0x0000_0001)
        #expect(try s.cfg32(0x18) == 0xE010_000C)
        #expect(try s.cfg32(0x1C) == 0x0000_0001)
        // BAR1 and BAR5 are unimplemented; BAR3 is BAR2's upper half.
        for o: UInt64 in [0x14, 0x24] {
            try s.set32(o, 0xFFFF_FFFF)
            #expect(try s.cfg32(o) == 0)
        }
    }

    @Test func romBarSizingKeepsTheEnableBit() throws {
        let s = try Served(Self.barConfiguration(rom: 64 << 10))
        #expect(try s.cfg32(0x30) == 0)
        try s.set32(0x30, 0xFFFF_FFFF)
        #expect(try s.cfg32(0x30) == 0xFFFF_0001)   // size mask | ROM Enable as written
        try s.set32(0x30, 0xFFFF_F800)
        #expect(try s.cfg32(0x30) == 0xFFFF_0000)   // the usual sizing write, enable off
        try s.set32(0x30, 0xFEB4_5679)
        #expect(try s.cfg32(0x30) == 0xFEB4_0001)
        let (info, _) = try s.client.regionInfo(RegionIndex.rom.rawValue)
        #expect(info.size == 64 << 10)
        #expect(info.flags == [.read])
        // The ROM region is read-only.
        #expect(errnoOf { try s.client.write(region: RegionIndex.rom.rawValue, offset: 0, [1]) } == .EINVAL)
    }

    @Test func withoutARomTheRomBarReadsZero() throws {
        let s = try Served(Self.barConfiguration())
        try s.set32(0x30, 0xFFFF_FFFF)
        #expect(try s.cfg32(0x30) == 0)
        #expect(try s.client.regionInfo(RegionIndex.rom.rawValue).info.size == 0)
    }

    @Test func memorySpaceEnableGatesMemoryBars() throws {
        let s = try Served(spec: "default")
        let bar0: UInt32 = 0, bar2: UInt32 = 2
        #expect(errnoOf { _ = try s.client.read32(region: bar0, offset: 0x100) } == .EIO)
        #expect(errnoOf { try s.client.write32(region: bar0, offset: 0x104, 1) } == .EIO)
        #expect(errnoOf { _ = try s.client.read(region: bar2, offset: 0, count: 8) } == .EIO)
        #expect(errnoOf { try s.client.write(region: bar2, offset: 0, [1, 2, 3]) } == .EIO)
        // I/O Space does not open memory BARs.
        try s.set16(0x04, 0x0001)
        #expect(errnoOf { _ = try s.client.read32(region: bar0, offset: 0x100) } == .EIO)
        try s.set16(0x04, 0x0002)
        #expect(try s.client.read32(region: bar0, offset: 0x100) == 0xCAFE_F00D)
        try s.client.write32(region: bar0, offset: 0x104, 0x1234_5678)
        #expect(try s.client.read32(region: bar0, offset: 0x104) == 0x1234_5678)
        try s.client.write(region: bar2, offset: 0, [1, 2, 3])
        #expect(try s.client.read(region: bar2, offset: 0, count: 3) == [1, 2, 3])
        // Off again: closed again, and the write did not land.
        try s.set16(0x04, 0)
        #expect(errnoOf { try s.client.write32(region: bar0, offset: 0x104, 0) } == .EIO)
        try s.set16(0x04, 0x0002)
        #expect(try s.client.read32(region: bar0, offset: 0x104) == 0x1234_5678)
    }

    @Test func ioSpaceEnableGatesIOBars() throws {
        let s = try Served(spec: "default")
        let bar4: UInt32 = 4
        #expect(errnoOf { _ = try s.client.read32(region: bar4, offset: 0) } == .EIO)
        try s.set16(0x04, 0x0002)   // Memory Space does not open I/O BARs
        #expect(errnoOf { _ = try s.client.read32(region: bar4, offset: 0) } == .EIO)
        #expect(errnoOf { try s.client.write32(region: bar4, offset: 0, 7) } == .EIO)
        try s.set16(0x04, 0x0001)
        #expect(try s.client.read32(region: bar4, offset: 0) == 0x5A5A_0001)
        try s.client.write32(region: bar4, offset: 0, 7)
        #expect(try s.client.read32(region: bar4, offset: 0) == 7)
    }

    @Test func configSpaceItselfIsNeverGated() throws {
        let s = try Served(spec: "default")
        #expect(try s.cfg16(0x04) == 0)
        #expect(try s.cfg32(0x00) == 0x0005_1b36)
        // Out of range config accesses fail.
        #expect(errnoOf { _ = try s.client.readConfig(offset: 0xFE, count: 4) } == .EINVAL)
    }
}
