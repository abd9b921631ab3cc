import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserControl
import VFIOUserProtocol
import VFIOUserTransport

/// Interrupts raised from the control socket and faults injected into the device.
@Suite struct InterruptAndFaultTests {
    static let base: UInt64 = 0x4000_0000

    @Test func interruptsAreRefusedUntilTheGuestEnablesThem() throws {
        let rig = try Rig(tag: "irq")
        defer { rig.stop() }
        let ctl = try rig.ctl()
        defer { ctl.close() }
        let vmm = try rig.vmm()
        defer { vmm.close() }

        var r = try ctl.req("irq") { $0.irq = "msix"; $0.vector = 2 }
        #expect(!r.ok && r.error == "not-enabled" && r.reason?.contains("MSI-X Enable") == true, "\(r)")
        let cap = try #require(rig.device.placedCapabilities.offset(ofStandard: 0x11))
        try vmm.writeConfig16(UInt64(cap + 2), 0x8000)
        r = try ctl.req("irq") { $0.irq = "msix"; $0.vector = 2 }
        #expect(!r.ok && r.error == "not-enabled" && r.reason?.contains("no eventfd") == true, "\(r)")
        let fd = try vmm.enableEventFDs(index: IRQIndex.msix.rawValue, start: 2, count: 1)[0]
        r = try ctl.ok("irq") { $0.irq = "msix"; $0.vector = 2 }
        #expect(r.delivered == true)
        #expect(EventFD.wait(fd.rawValue, timeoutMs: 2000) == 1, "MSI-X vector 2 signalled")
        r = try ctl.req("irq") { $0.irq = "msix"; $0.vector = 8 }
        #expect(!r.ok && r.error == "not-enabled" && r.reason?.contains("out of range") == true, "\(r)")

        // INTx: an eventfd is what enables it; asserted once, then automasked.
        r = try ctl.req("irq") { $0.irq = "intx" }
        #expect(!r.ok && r.error == "not-enabled")
        let intx = try vmm.enableEventFDs(index: IRQIndex.intx.rawValue, count: 1)[0]
        r = try ctl.ok("irq") { $0.irq = "intx" }
        #expect(r.delivered == true)
        #expect(EventFD.wait(intx.rawValue, timeoutMs: 2000) == 1)
        _ = try ctl.ok("irq") { $0.irq = "intx"; $0.deassert = true }
        #expect(!rig.device.interrupts.intxAsserted)

        // ERR exists but is not wired; REQ does not exist on this device.
        r = try ctl.req("irq") { $0.irq = "err" }
        #expect(!r.ok && r.error == "not-enabled")
        let err = try vmm.enableEventFDs(index: IRQIndex.err.rawValue, count: 1)[0]
        r = try ctl.ok("irq") { $0.irq = "err" }
        #expect(EventFD.wait(err.rawValue, timeoutMs: 2000) == 1)
        r = try ctl.req("irq") { $0.irq = "req" }
        #expect(!r.ok && r.error == "not-enabled" && r.reason?.contains("no REQ") == true, "\(r)")
        r = try ctl.req("irq") { $0.irq = "nmi" }
        #expect(!r.ok && r.error == "bad-request")
    }

    @Test func dmaFaultsFailTheNextDMAsAsABusError() throws {
        try withFaultBench(tag: "dmaf", dmaAt: Self.base) { b in
            let mem = try #require(b.mem)
            var r = try b.arm(.dma) { $0.count = 1; $0.errno = "EIO" }
            #expect(r.fault?.state == "armed" && r.fault?.remaining == 1, "\(r)")
            mem.write(at: 0, [0xEE, 0xEE, 0xEE, 0xEE])
            #expect(try DB.fill(b.vmm, address: Self.base, length: 16) == VFIOErrno.EIO.rawValue)
            #expect(mem.read(at: 0, count: 4) == [0xEE, 0xEE, 0xEE, 0xEE], "a faulted DMA writes nothing")
            #expect(try DB.fill(b.vmm, address: Self.base, length: 16) == 0, "the fault was for one DMA")
            #expect(try b.ctl.ok("fault-list").faults == [])

            // An address range: only DMA that overlaps it fails (EFAULT by default).
            r = try b.arm(.dma) { $0.address = Num(Self.base + 0x1000); $0.size = 0x1000 }
            #expect(try DB.fill(b.vmm, address: Self.base, length: 0x100) == 0)
            #expect(try DB.fill(b.vmm, address: Self.base + 0x1800, length: 0x100) == VFIOErrno.EFAULT.rawValue)
            #expect(try DB.fill(b.vmm, address: Self.base + 0xF00, length: 0x200) == VFIOErrno.EFAULT.rawValue, "overlapping")
            #expect(try b.ctl.ok("fault-list").faults?.first?.hits == 2)
            _ = try b.ctl.ok("fault-remove") { $0.faultId = r.fault!.id }
            #expect(try DB.fill(b.vmm, address: Self.base + 0x1800, length: 0x100) == 0)
        }
    }

    @Test func anArmedFaultDoesNotOutliveAResetUnlessItSaysSo() throws {
        try withFaultBench(tag: "reset", dmaAt: Self.base) { b in
            try b.arm(.dma)
            try b.arm(.hang) { $0.region = RegionRef(0); $0.offset = 0x100; $0.length = 4; $0.stopWork = true }
            let keep = try b.arm(.config) { $0.offset = 0x2c; $0.data = "efbe"; $0.survivesReset = true }
            #expect(b.rig.device.work.isHeld)
            #expect(try b.vmm.read32(region: 0, offset: 0x100) == 0xffff_ffff)

            try b.vmm.reset()
            try b.vmm.writeConfig16(0x04, 0x2 | 0x4)
            let left = try b.ctl.ok("fault-list").faults ?? []
            #expect(left.map(\.id) == [keep.fault!.id], "only the survivesReset fault is left")
            #expect(!b.rig.device.work.isHeld, "the hung engine runs again")
            #expect(try b.vmm.read32(region: 0, offset: 0x100) == 0xcafe_f00d)
            #expect(try DB.fill(b.vmm, address: Self.base, length: 16) == 0, "DMA works again")
            #expect(try b.vmm.readConfig16(0x2c) == 0xbeef, "the config fault survived")
            // The control socket's own reset does the same.
            _ = try b.ctl.ok("reset")
            #expect(try b.ctl.ok("fault-list").faults?.count == 1)
        }
    }

    @Test func aHungDeviceReadsAllOnesOrFrozenAndStopsCompletingWork() throws {
        try withFaultBench(tag: "hang", dmaAt: Self.base) { b in
            let vmm = b.vmm, work = b.rig.device.work
            let f = try b.arm(.hang) { $0.region = RegionRef(0); $0.offset = Num(DB.completions); $0.length = 4; $0.stopWork = true }
            #expect(try vmm.read32(region: 0, offset: DB.completions) == 0xffff_ffff)
            #expect(try vmm.read32(region: 0, offset: 0x00) == 0x4455_4656, "other registers still answer")
            try vmm.write32(region: 0, offset: DB.length, 16)
            try vmm.write32(region: 0, offset: DB.addrLow, UInt32(Self.base & 0xffff_ffff))
            try vmm.write32(region: 0, offset: DB.doorbell, 1)
            #expect(!work.waitUntilIdle(timeoutMs: 100), "the job is held")
            #expect(try b.ctl.ok("peek") { $0.region = RegionRef(0); $0.offset = Num(DB.completions) }.value == Num(0), "not completed")
            _ = try b.ctl.ok("fault-remove") { $0.faultId = f.fault!.id }
            #expect(work.waitUntilIdle(timeoutMs: 5000))
            #expect(try vmm.read32(region: 0, offset: DB.completions) == 1)

            // Frozen: reads keep returning what the first read after arming saw.
            try vmm.write32(region: 0, offset: DB.scratch, 5)
            try b.arm(.hang) { $0.region = RegionRef(0); $0.offset = Num(DB.scratch); $0.mode = "frozen"; $0.length = 4 }
            #expect(try vmm.read32(region: 0, offset: DB.scratch) == 5)
            try vmm.write32(region: 0, offset: DB.scratch, 6)
            #expect(try vmm.read32(region: 0, offset: DB.scratch) == 5, "frozen")
            _ = try b.ctl.ok("fault-clear")
            #expect(try vmm.read32(region: 0, offset: DB.scratch) == 6)
        }
    }

    @Test func delaysHoldRepliesAndDisconnectDropsTheVMM() throws {
        try withFaultBench(tag: "delay") { b in
            try b.arm(.delay) { $0.ms = 300; $0.command = "REGION_READ"; $0.region = RegionRef(0); $0.offset = 0x08; $0.count = 1 }
            let t0 = monotonicMs()
            _ = try b.vmm.read32(region: 0, offset: 0x08)
            #expect(monotonicMs() - t0 >= 300, "the reply was held for at least 300 ms")
            #expect(try b.ctl.ok("fault-list").faults == [], "count 1: used up")

            // A disconnect that selects a command drops the connection at that command, without a reply.
            try b.arm(.disconnect) { $0.command = "REGION_READ"; $0.region = RegionRef(0); $0.offset = 0x100 }
            _ = try b.vmm.read32(region: 0, offset: 0x104)
            #expect(throws: (any Error).self) { _ = try b.vmm.read32(region: 0, offset: 0x100) }

            // The immediate one: drops the owner's connection.
            let vmm2 = try b.rig.vmm()
            defer { vmm2.close() }
            let mem = try ClientMemory(size: 4096)
            try vmm2.dmaMap(mem, address: Self.base)
            #expect(b.rig.device.owner != nil)
            let r = try b.ctl.ok("disconnect")
            #expect(r.dropped == 1)
            #expect(throws: (any Error).self) { _ = try vmm2.read32(region: 0, offset: 0x100) }
        }
    }

    @Test func configCorruptionChangesWhatTheGuestReadsOnly() throws {
        try withFaultBench(tag: "cfgf") { b in
            let f = try b.arm(.config) { $0.offset = 0x01; $0.data = "ff" }
            #expect(try b.vmm.readConfig(offset: 0, count: 4) == [0x36, 0xff, 0x05, 0x00])
            #expect(try b.vmm.readConfig(offset: 2, count: 2) == [0x05, 0x00], "bytes outside the fault are real")
            #expect(try b.ctl.ok("peek") { $0.region = RegionRef(7); $0.offset = 0; $0.length = 2; $0.raw = true }.data == "361b")
            _ = try b.ctl.ok("fault-remove") { $0.faultId = f.fault!.id }
            #expect(try b.vmm.readConfig16(0) == 0x1b36)
        }
    }

    @Test func triggersArmFaultsLater() throws {
        try withFaultBench(tag: "trig", dmaAt: Self.base) { b in
            let f = try b.arm(.dma) {
                $0.count = 1
                $0.trigger = FaultTrigger(onWrite: .init(region: RegionRef(0), offset: Num(DB.scratch), value: 0x5ca1_ab1e))
            }
            #expect(f.fault?.state == "pending")
            #expect(try DB.fill(b.vmm, address: Self.base, length: 16) == 0, "not armed yet")
            try b.vmm.write32(region: 0, offset: DB.scratch, 0x1111)
            #expect(try b.ctl.ok("fault-list").faults?.first?.state == "pending", "another value does not arm it")
            try b.vmm.write32(region: 0, offset: DB.scratch, 0x5ca1_ab1e)
            #expect(try b.ctl.ok("fault-list").faults?.first?.state == "armed")
            #expect(try DB.fill(b.vmm, address: Self.base, length: 16) == VFIOErrno.EFAULT.rawValue)

            // After N accesses.
            let g = try b.arm(.config) { $0.offset = 0; $0.data = "0000"; $0.trigger = FaultTrigger(afterAccesses: 3) }
            #expect(g.fault?.state == "pending")
            #expect(try b.vmm.readConfig16(0) == 0x1b36)
            #expect(try b.vmm.readConfig16(0) == 0x1b36)
            #expect(try b.vmm.readConfig16(0) == 0x0000, "the third access armed it before its reply")
        }
    }
}
