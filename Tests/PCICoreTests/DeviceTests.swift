@_spi(Server) import PCICore
import Testing
import VFIOUserProtocol

/// The device model without a transport: what the dispatcher calls.
@Suite struct DeviceTests {
    static func device() throws -> PCIDevice {
        var c = PCIDeviceConfiguration(name: "unit", identity: PCIIdentity(vendor: 0x1b36, device: 0x00c0))
        c.interruptPin = 1
        c.bars = [BARDescriptor(index: 0, size: 4096)]
        c.msi = MSIConfiguration(vectors: 2)
        c.msix = MSIXConfiguration(vectors: 4, tableBAR: 0, tableOffset: 0x800, pbaBAR: 0, pbaOffset: 0xC00)
        c.registers = [RegisterDefinition(bar: 0, offset: 0x10, width: 4, value: 0x1234, writeMask: 0xFF)]
        return try PCIDevice(configuration: c)
    }

    func cfg16(_ d: PCIDevice, _ o: UInt64) throws -> UInt16 {
        let b = try d.readRegion(index: RegionIndex.config.rawValue, offset: o, count: 2)
        return UInt16(b[0]) | UInt16(b[1]) << 8
    }

    @Test func barAccessNeedsMemorySpace() throws {
        let d = try Self.device()
        #expect(throws: VFIOErrno.EIO) { _ = try d.readRegion(index: 0, offset: 0x10, count: 4) }
        try d.writeRegion(index: RegionIndex.config.rawValue, offset: 4, data: [0x02, 0x00][...])
        #expect(try d.readRegion(index: 0, offset: 0x10, count: 4) == [0x34, 0x12, 0, 0])
        try d.writeRegion(index: 0, offset: 0x10, data: [0xFF, 0xFF][...])
        #expect(try d.readRegion(index: 0, offset: 0x10, count: 4) == [0xFF, 0x12, 0, 0], "register write mask")
    }

    @Test func interruptsWithoutAnEventFDStayPending() throws {
        let d = try Self.device()
        d.lock.withLock { d.interrupts.trigger(.msix, vector: 1) }
        d.lock.withLock { d.interrupts.trigger(.msi, vector: 0) }
        d.lock.withLock { d.interrupts.assertINTx() }
        d.lock.withLock {
            #expect(d.interrupts.isPending(.msix, vector: 1))
            #expect(d.interrupts.isPending(.msi, vector: 0))
            #expect(d.interrupts.intxAsserted)
            #expect(d.interrupts.delivered == [0, 0, 0, 0, 0])
        }
        #expect(try cfg16(d, 6) & 0x08 != 0)
        d.reset(.deviceReset)
        d.lock.withLock {
            #expect(!d.interrupts.isPending(.msix, vector: 1))
            #expect(!d.interrupts.isPending(.msi, vector: 0))
            #expect(!d.interrupts.intxAsserted)
        }
        #expect(try cfg16(d, 6) & 0x08 == 0)
    }

    @Test func msixTableStartsMaskedAndThePBAFollowsPending() throws {
        let d = try Self.device()
        let t = try #require(d.msixTable)
        d.lock.withLock { for v in 0..<4 { #expect(t.isVectorMasked(v)) } }
        try d.writeRegion(index: RegionIndex.config.rawValue, offset: 4, data: [0x02, 0x00][...])
        d.lock.withLock { d.interrupts.trigger(.msix, vector: 2) }
        #expect(try d.readRegion(index: 0, offset: 0xC00, count: 1) == [0x04])
    }

    @Test func resetHooksRunAfterTheCoreRestoredItsState() throws {
        let d = try Self.device()
        let seen = Box<[ResetReason]>([])
        d.onReset { [unowned d] r in
            seen.value.append(r)
            #expect(d.config.load8(0x3C) == 0xFF, "config already restored when the hook runs")
        }
        try d.writeRegion(index: RegionIndex.config.rawValue, offset: 0x3C, data: [0x0A][...])
        d.reset(.deviceReset)
        // A session that never owned the device leaves nothing to reset; the owner does.
        let observer = d.openSession()
        d.closeSession(observer)
        #expect(seen.value == [.deviceReset])
        let owner = d.openSession()
        #expect(try d.claimOwnership(owner))
        d.closeSession(owner)
        #expect(seen.value == [.deviceReset, .disconnect])
        #expect(d.resetCount == 2)
    }

    @Test func configurationValidationNamesTheField() {
        var c = PCIDeviceConfiguration(name: "bad", identity: PCIIdentity(vendor: 0x1b36, device: 1))
        c.bars = [BARDescriptor(index: 0, size: 3000)]
        #expect(throws: ConfigLayoutError(subject: "bars[0]", reason: "size 3000 is not a power of two")) { try c.validate() }
        c.bars = [BARDescriptor(index: 5, size: 4096, kind: .memory64)]
        #expect(throws: ConfigLayoutError.self) { try c.validate() }
    }
}
