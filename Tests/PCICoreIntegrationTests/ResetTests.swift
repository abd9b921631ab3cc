@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// DEVICE_RESET, FLR and the last client leaving (reference §1.8): config back to
/// power-on, nothing pending, INTx low; eventfd wiring survives DEVICE_RESET and
/// FLR; RAM BARs keep their contents unless `preserveOnReset` is false.
@Suite struct ResetTests {
    enum Trigger: String, CaseIterable, Sendable { case deviceReset, flr }

    struct Dirtied {
        var msix: OwnedFD
        var intx: OwnedFD
    }

    /// Changes everything a reset must undo, leaves an MSI-X vector pending and
    /// INTx asserted (held back by Interrupt Disable), and writes the RAM BAR.
    func dirty(_ s: Served) throws -> Dirtied {
        let msixCap = try s.capability(PCICapability.msixID)
        let msix = try s.client.enableEventFDs(index: IRQIndex.msix.rawValue, count: 1)[0]
        let intx = try s.client.enableEventFDs(index: IRQIndex.intx.rawValue, count: 1)[0]
        try s.set8(0x3C, 0x0B)
        try s.set32(0x10, 0xFE00_0000)
        try s.set32(0x18, 0xC000_0000)
        try s.set16(0x04, 0x0406)                 // Memory, Bus Master, Interrupt Disable
        try s.set16(msixCap + 2, 0xC000)          // MSI-X Enable + Function Mask
        try s.client.write32(region: 0, offset: 0x2000, 0xFEE0_0000)
        try s.client.write(region: 2, offset: 0x100, [0xDE, 0xAD, 0xBE, 0xEF])
        try s.client.write32(region: 0, offset: 0x08, 0x5555_AAAA)   // doorbell SCRATCH
        #expect(s.device.raiseInterrupt(vector: 0) == .msix)
        s.device.lock.withLock { s.device.interrupts.assertINTx() }
        #expect(silent(msix) && silent(intx))
        #expect(try s.client.read(region: 0, offset: 0x3000, count: 1) == [1], "MSI-X PBA")
        #expect(try s.cfg16(0x06) & 0x08 != 0, "INTx status")
        return Dirtied(msix: msix, intx: intx)
    }

    func trigger(_ t: Trigger, _ s: Served) throws {
        switch t {
        case .deviceReset: try s.client.reset()
        case .flr:
            let pcie = try s.capability(PCICapability.expressID)
            try s.set16(pcie + 8, try s.cfg16(pcie + 8) | 0x8000)
        }
    }

    @Test(arguments: Trigger.allCases)
    func resetRestoresPowerOnStateAndKeepsEventFDWiring(_ t: Trigger) throws {
        let s = try Served(spec: "express-endpoint")
        let powerOn = try s.wholeConfig()
        let fds = try dirty(s)
        try trigger(t, s)

        #expect(try s.wholeConfig() == powerOn, "config space is back to its power-on values")
        s.device.lock.withLock {
            #expect(!s.device.interrupts.intxAsserted)
            #expect(!s.device.interrupts.isPending(.msix, vector: 0))
        }
        #expect(silent(fds.msix) && silent(fds.intx), "pending interrupts were dropped, not delivered")
        try s.enableDecoding()
        #expect(try s.client.read(region: 0, offset: 0x3000, count: 1) == [0], "PBA clear")
        #expect(try s.client.read32(region: 0, offset: 0x200C) == 1, "MSI-X table entries masked again")
        #expect(try s.client.read32(region: 0, offset: 0x2000) == 0)
        #expect(try s.client.read32(region: 0, offset: 0x08) == 0, "device registers back to power-on")
        #expect(try s.client.read(region: 2, offset: 0x100, count: 4) == [0xDE, 0xAD, 0xBE, 0xEF], "RAM BAR kept")

        // The eventfds the VMM registered still work.
        s.device.lock.withLock {
            #expect(s.device.interrupts.isEnabled(.msix))
            #expect(s.device.interrupts.isEnabled(.intx))
        }
        #expect(s.device.raiseInterrupt(vector: 0) == .msix)
        #expect(signals(fds.msix) == 1)
        s.device.lock.withLock { s.device.interrupts.assertINTx() }
        #expect(signals(fds.intx) == 1)
    }

    @Test func theOwnerDisconnectingResetsTheDeviceAndAnotherClientDoesNot() throws {
        let s = try Served(spec: "express-endpoint")
        let powerOn = try s.wholeConfig()
        let fds = try dirty(s)  // the first client wrote config and wired interrupts: it owns the device
        let resets = s.device.lock.withLock { s.device.resetCount }
        // A second client that only looks leaves: nothing is reset.
        let observer = try s.connect()
        #expect(try observer.readConfig(offset: 0x3C, count: 1) == [0x0B])
        observer.close()
        #expect(s.device.owner != nil)
        #expect(try s.client.readConfig(offset: 0x3C, count: 1) == [0x0B], "the owner's state survives")
        #expect(s.device.lock.withLock { s.device.resetCount } == resets)
        #expect(s.device.lock.withLock { s.device.interrupts.isEnabled(.msix) })
        // The owner leaves: reset, its eventfds dropped, the device free for the next client.
        s.disconnect(s.client, resetsBefore: resets)
        #expect(s.device.owner == nil)
        #expect(s.device.lock.withLock { !s.device.interrupts.isEnabled(.msix) })
        try s.reconnect()
        #expect(try s.wholeConfig() == powerOn)
        s.device.lock.withLock {
            #expect(!s.device.interrupts.intxAsserted)
            #expect(!s.device.interrupts.isPending(.msix, vector: 0))
        }
        #expect(silent(fds.msix) && silent(fds.intx))
        try s.enableDecoding()
    }

    static func ramConfiguration(preserve: Bool) -> PCIDeviceConfiguration {
        var c = PCIDeviceConfiguration(name: "ram", identity: PCIIdentity(vendor: 0x1b36, device: 0x00b1))
        c.express = true
        c.bars = [BARDescriptor(index: 0, size: 64 << 10, kind: .memory64, backing: .ram(mmap: true, preserveOnReset: preserve))]
        return c
    }

    @Test(arguments: [true, false], Trigger.allCases)
    func ramBarContentsFollowPreserveOnReset(_ preserve: Bool, _ t: Trigger) throws {
        let s = try Served(Self.ramConfiguration(preserve: preserve))
        try s.enableDecoding()
        let pattern: [UInt8] = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        try s.client.write(region: 0, offset: 0x1000, pattern)
        try trigger(t, s)
        try s.enableDecoding()
        let after = try s.client.read(region: 0, offset: 0x1000, count: 64)
        #expect(after == (preserve ? pattern : [UInt8](repeating: 0, count: 64)))
    }

    @Test func ramBarIsClearedOnDisconnectWhenNotPreserved() throws {
        let s = try Served(Self.ramConfiguration(preserve: false))
        try s.enableDecoding()
        try s.client.write(region: 0, offset: 0, [9, 9, 9, 9])
        s.disconnect(s.client, resetsBefore: 0)
        try s.reconnect()
        try s.enableDecoding()
        #expect(try s.client.read(region: 0, offset: 0, count: 4) == [0, 0, 0, 0])
    }

    @Test func resetIsRefusedWhenTheSpecSaysSo() throws {
        var c = try Served.configuration(spec: "default")
        c.resetSupported = false
        let s = try Served(c)
        #expect(!(try s.client.deviceInfo().flags.contains(.reset)))
        try s.set8(0x3C, 1)
        #expect(errnoOf { try s.client.reset() } == .EINVAL)
        #expect(try s.cfg8(0x3C) == 1)
    }
}
