@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// INTx, MSI and MSI-X delivery rules over a real socket (reference §1.3, §1.6).
/// The default spec: INTA, MSI (4 vectors, 64-bit, per-vector mask), MSI-X
/// (8 vectors, table at BAR0+0x800, PBA at BAR0+0xC00), doorbell at BAR0+0.
@Suite struct InterruptTests {
    static let intx = IRQIndex.intx.rawValue
    static let msi = IRQIndex.msi.rawValue
    static let msix = IRQIndex.msix.rawValue
    static let pba: UInt64 = 0xC00
    static let table: UInt64 = 0x800

    func pba(_ s: Served) throws -> UInt8 { try s.client.read(region: 0, offset: Self.pba, count: 1)[0] }
    func intxStatus(_ s: Served) throws -> Bool { try s.cfg16(0x06) & 0x0008 != 0 }

    // MARK: INTx

    @Test func interruptDisableMasksINTxAndStatusShowsIt() throws {
        let s = try Served(spec: "default")
        let fd = try s.client.enableEventFDs(index: Self.intx, count: 1)[0]
        try s.set16(0x04, 0x0402)   // Memory Space + Interrupt Disable
        #expect(try !intxStatus(s))
        // The doorbell's "interrupt" command raises INTx (no MSI/MSI-X in use), as a
        // device job once the write was answered.
        try s.client.write32(region: 0, offset: 0x20, 3)
        #expect(s.device.work.waitUntilIdle())
        #expect(try intxStatus(s), "Interrupt Status shows the pending INTx")
        #expect(silent(fd), "Interrupt Disable holds it back")
        // Clearing Interrupt Disable delivers it.
        try s.set16(0x04, 0x0002)
        #expect(signals(fd) == 1)
        #expect(try intxStatus(s), "still asserted until the device drops the line")
        // IRQ_ACK drops the line; Interrupt Status follows.
        try s.client.write32(region: 0, offset: 0x34, 1)
        #expect(try !intxStatus(s))
    }

    @Test func intxIsAutomaskedUntilUnmask() throws {
        let s = try Served(spec: "default")
        let fd = try s.client.enableEventFDs(index: Self.intx, count: 1)[0]
        #expect(s.device.raiseInterrupt() == .intx)
        #expect(signals(fd) == 1)
        // Still asserted and automasked: raising again delivers nothing.
        s.device.lock.withLock { s.device.interrupts.assertINTx() }
        #expect(silent(fd))
        // UNMASK while the line is still high delivers it again.
        try s.client.maskIRQ(index: Self.intx, vector: 0, masked: false)
        #expect(signals(fd) == 1)
        // Once the line is low, UNMASK delivers nothing.
        s.device.deassertINTx()
        try s.client.maskIRQ(index: Self.intx, vector: 0, masked: false)
        #expect(silent(fd))
        #expect(try !intxStatus(s))
    }

    @Test func interruptDisableSetWhileAssertedAndAnExplicitMask() throws {
        let s = try Served(spec: "default")
        let fd = try s.client.enableEventFDs(index: Self.intx, count: 1)[0]
        try s.client.maskIRQ(index: Self.intx, vector: 0, masked: true)
        s.device.lock.withLock { s.device.interrupts.assertINTx() }
        #expect(silent(fd), "SET_IRQS MASK holds INTx back")
        #expect(try intxStatus(s))
        try s.set16(0x04, 0x0400)
        try s.client.maskIRQ(index: Self.intx, vector: 0, masked: false)
        #expect(silent(fd), "Interrupt Disable still holds it back after UNMASK")
        try s.set16(0x04, 0)
        #expect(signals(fd) == 1)
    }

    // MARK: MSI

    @Test func msiPerVectorMaskHoldsAVectorPending() throws {
        let s = try Served(spec: "default")
        let cap = try s.capability(PCICapability.msiID)
        // 64-bit with per-vector masking: control +2, address +4/+8, data +0xC, mask +0x10, pending +0x14.
        #expect(try s.cfg16(cap + 2) == 0x0184)   // per-vector mask, 64-bit, MMC = 4 vectors
        let fds = try s.client.enableEventFDs(index: Self.msi, count: 4)
        try s.set32(cap + 4, 0xFEE0_0000)
        try s.set32(cap + 8, 0)
        try s.set16(cap + 0xC, 0x4041)
        try s.set16(cap + 2, 0x0021)              // MSI Enable, MME = 4 vectors
        #expect(try s.cfg16(cap + 2) == 0x01A5)
        // Only the implemented vectors' mask bits are writable; pending is read-only.
        try s.set32(cap + 0x10, 0xFFFF_FFFF)
        #expect(try s.cfg32(cap + 0x10) == 0x0000_000F)
        try s.set32(cap + 0x10, 0x0000_0002)      // mask vector 1
        #expect(s.device.raiseInterrupt(vector: 1) == .msi)
        #expect(silent(fds[1]))
        #expect(try s.cfg32(cap + 0x14) == 0x0000_0002, "vector 1 pending")
        try s.set32(cap + 0x14, 0)
        #expect(try s.cfg32(cap + 0x14) == 0x0000_0002, "pending bits are read-only")
        // An unmasked vector is delivered at once and never pends.
        #expect(s.device.raiseInterrupt(vector: 0) == .msi)
        #expect(signals(fds[0]) == 1)
        #expect(try s.cfg32(cap + 0x14) == 0x0000_0002)
        // Unmasking delivers the pending vector and clears its bit.
        try s.set32(cap + 0x10, 0)
        #expect(signals(fds[1]) == 1)
        #expect(try s.cfg32(cap + 0x14) == 0)
        #expect(silent(fds[1]), "delivered once")
    }

    @Test func msiMultipleMessageEnableIsClampedToCapable() throws {
        let s = try Served(spec: "default")
        let cap = try s.capability(PCICapability.msiID)
        try s.set16(cap + 2, 0xFFFF)
        // Only Enable and MME are writable; MME (6:4) never exceeds MMC (3:1) = 4 vectors.
        #expect(try s.cfg16(cap + 2) == 0x01A5)
        try s.set16(cap + 2, 0x0010)
        #expect(try s.cfg16(cap + 2) == 0x0194)
    }

    @Test func msiSetIRQsMaskAlsoHoldsAVectorPending() throws {
        let s = try Served(spec: "default")
        let cap = try s.capability(PCICapability.msiID)
        let fds = try s.client.enableEventFDs(index: Self.msi, count: 4)
        try s.client.maskIRQ(index: Self.msi, vector: 2, masked: true)
        s.device.lock.withLock { s.device.interrupts.trigger(.msi, vector: 2) }
        #expect(silent(fds[2]))
        #expect(try s.cfg32(cap + 0x14) == 0x0000_0004)
        try s.client.maskIRQ(index: Self.msi, vector: 2, masked: false)
        #expect(signals(fds[2]) == 1)
        #expect(try s.cfg32(cap + 0x14) == 0)
    }

    // MARK: MSI-X

    /// Programs table entry `v` (address and data) through BAR0.
    func program(_ s: Served, vector v: UInt64, masked: Bool) throws {
        let e = Self.table + 16 * v
        try s.client.write32(region: 0, offset: e, 0xFEE0_1000)
        try s.client.write32(region: 0, offset: e + 4, 0)
        try s.client.write32(region: 0, offset: e + 8, 0x40 + UInt32(v))
        try s.client.write32(region: 0, offset: e + 12, masked ? 1 : 0)
    }

    @Test func msixVectorControlMaskHoldsAVectorInThePBA() throws {
        let s = try Served(spec: "default")
        try s.enableDecoding()
        let cap = try s.capability(PCICapability.msixID)
        let fd = try s.client.enableEventFDs(index: Self.msix, start: 3, count: 1)[0]
        try s.set16(cap + 2, 0x8000)              // MSI-X Enable
        // Table entries are masked at reset, as PCI requires.
        #expect(try s.client.read32(region: 0, offset: Self.table + 16 * 3 + 12) == 1)
        try program(s, vector: 3, masked: true)
        #expect(try s.client.read32(region: 0, offset: Self.table + 16 * 3) == 0xFEE0_1000)
        #expect(s.device.raiseInterrupt(vector: 3) == .msix)
        #expect(silent(fd))
        #expect(try pba(s) == 0x08)
        // The PBA ignores writes.
        try s.client.write(region: 0, offset: Self.pba, [0])
        #expect(try pba(s) == 0x08)
        // Unmask in the vector control word: delivered, PBA bit cleared.
        try s.client.write32(region: 0, offset: Self.table + 16 * 3 + 12, 0)
        #expect(signals(fd) == 1)
        #expect(try pba(s) == 0)
        #expect(silent(fd))
        // Unmasked: a new interrupt goes straight through.
        s.device.raiseInterrupt(vector: 3)
        #expect(signals(fd) == 1)
        #expect(try pba(s) == 0)
    }

    @Test func msixSetIRQsMaskHoldsAVectorInThePBA() throws {
        let s = try Served(spec: "default")
        try s.enableDecoding()
        let fd = try s.client.enableEventFDs(index: Self.msix, start: 5, count: 1)[0]
        try program(s, vector: 5, masked: false)
        try s.client.maskIRQ(index: Self.msix, vector: 5, masked: true)
        s.device.raiseInterrupt(vector: 5)
        #expect(silent(fd))
        #expect(try pba(s) == 0x20)
        try s.client.maskIRQ(index: Self.msix, vector: 5, masked: false)
        #expect(signals(fd) == 1)
        #expect(try pba(s) == 0)
    }

    @Test func msixFunctionMaskHoldsEveryVector() throws {
        let s = try Served(spec: "default")
        try s.enableDecoding()
        let cap = try s.capability(PCICapability.msixID)
        let fds = try s.client.enableEventFDs(index: Self.msix, count: 8)
        for v in 0..<8 { try program(s, vector: UInt64(v), masked: false) }
        try s.set16(cap + 2, 0xC000)              // Enable + Function Mask
        #expect(try s.cfg16(cap + 2) == 0xC007)   // table size 8 (N-1 = 7) is read-only
        s.device.raiseInterrupt(vector: 0)
        s.device.raiseInterrupt(vector: 7)
        #expect(silent(fds[0]) && silent(fds[7]))
        #expect(try pba(s) == 0x81)
        try s.set16(cap + 2, 0x8000)
        #expect(signals(fds[0]) == 1)
        #expect(signals(fds[7]) == 1)
        #expect(try pba(s) == 0)
        for v in 1..<7 { #expect(silent(fds[v])) }
    }

    // MARK: Raised before the client registered an eventfd

    @Test func msixRaisedBeforeAnEventFDPendsAndIsDeliveredOnRegistration() throws {
        let s = try Served(spec: "default")
        try s.enableDecoding()
        let cap = try s.capability(PCICapability.msixID)
        try s.set16(cap + 2, 0x8000)              // the guest enabled MSI-X; the VMM has not wired it yet
        #expect(s.device.raiseInterrupt(vector: 2) == .msix)
        #expect(try pba(s) == 0x04)
        let fd = try s.client.enableEventFDs(index: Self.msix, start: 2, count: 1)[0]
        #expect(signals(fd) == 1)
        #expect(try pba(s) == 0)
    }

    @Test func msiRaisedBeforeAnEventFDPendsAndIsDeliveredOnRegistration() throws {
        let s = try Served(spec: "default")
        let cap = try s.capability(PCICapability.msiID)
        try s.set16(cap + 2, 0x0001)
        #expect(s.device.raiseInterrupt(vector: 0) == .msi)
        #expect(try s.cfg32(cap + 0x14) == 0x1)
        let fds = try s.client.enableEventFDs(index: Self.msi, count: 4)
        #expect(signals(fds[0]) == 1)
        #expect(try s.cfg32(cap + 0x14) == 0)
    }

    @Test func intxAssertedBeforeAnEventFDIsDeliveredOnRegistration() throws {
        let s = try Served(spec: "default")
        #expect(s.device.raiseInterrupt() == .intx)
        #expect(try intxStatus(s))
        let fd = try s.client.enableEventFDs(index: Self.intx, count: 1)[0]
        #expect(signals(fd) == 1)
        #expect(try intxStatus(s))
    }

    @Test func irqInfoFollowsTheSpec() throws {
        let s = try Served(spec: "default")
        let intx = try s.client.irqInfo(Self.intx)
        #expect(intx.count == 1 && intx.flags.contains(.automasked) && intx.flags.contains(.maskable))
        let msi = try s.client.irqInfo(Self.msi)
        #expect(msi.count == 4 && msi.flags.contains(.noresize))
        #expect(try s.client.irqInfo(Self.msix).count == 8)
        #expect(try s.client.irqInfo(IRQIndex.err.rawValue).count == 1)
        #expect(try s.client.irqInfo(IRQIndex.req.rawValue).count == 0)
    }
}
