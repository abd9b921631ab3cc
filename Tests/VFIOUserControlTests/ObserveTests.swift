import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserControl
import VFIOUserProtocol
import VFIOUserTransport

/// The watch stream, the counters and the two reports.
@Suite struct ObserveTests {
    @Test func watchStreamsTheGuestsAccessesInOrderWithDMAInterruptsAndResets() throws {
        let rig = try Rig(tag: "watch")
        defer { rig.stop() }
        let watcher = try rig.ctl()
        defer { watcher.close() }
        let first = try watcher.ok("watch") { $0.kinds = ["access", "dma", "irq", "reset"] }
        #expect(first.watching == true)
        let vmm = try rig.vmm(enable: false)
        defer { vmm.close() }

        try vmm.writeConfig16(0x04, 0x2 | 0x4)
        try vmm.write32(region: 0, offset: DB.scratch, 0x0a0b_0c0d)
        #expect(try vmm.read32(region: 0, offset: DB.scratch) == 0x0a0b_0c0d)
        try vmm.write(region: 0, offset: DB.scratch, [1, 2], posted: true)
        let mem = try ClientMemory(size: 4096)
        try vmm.dmaMap(mem, address: 0x8000_0000)
        let fd = try vmm.enableEventFDs(index: IRQIndex.intx.rawValue, count: 1)[0]
        try vmm.write32(region: 0, offset: DB.irqVector, 0)
        #expect(try DB.fill(vmm, address: 0x8000_0000, length: 8) == 0)
        #expect(EventFD.wait(fd.rawValue, timeoutMs: 2000) == 1)
        try vmm.reset()

        var events: [ControlEvent] = []
        while !events.contains(where: { $0.event == "reset" }) { events.append(try watcher.readEvent(timeoutMs: 5000)) }
        let seqs = events.map(\.seq)
        #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count, "in order, numbered")
        let accesses = events.filter { $0.event == "access" }
        #expect(accesses.first?.region == RegionRef(7) && accesses.first?.op == "write" && accesses.first?.value == Num(6),
                "first the command register write: \(String(describing: accesses.first))")
        let scratch = accesses.filter { $0.region == RegionRef(0) && $0.offset == Num(DB.scratch) }
        #expect(scratch.map(\.op) == ["write", "read", "write"])
        #expect(scratch.map(\.value) == [Num(0x0a0b_0c0d), Num(0x0a0b_0c0d), Num(0x0201)])
        #expect(scratch.map(\.size) == [4, 4, 2])
        #expect(scratch.allSatisfy { $0.conn != nil && $0.time > 1.6e9 })
        let dma = try #require(events.first { $0.event == "dma" })
        #expect(dma.op == "write" && dma.address == Num(0x8000_0000) && dma.size == 8)
        let irq = try #require(events.first { $0.event == "irq" })
        #expect(irq.irq == "intx" && irq.vector == 0)
        #expect(events.firstIndex { $0.event == "dma" }! < events.firstIndex { $0.event == "irq" }!, "the FILL's DMA before its interrupt")
        #expect(events.last?.event == "reset" && events.last?.reason == "deviceReset")

        // A kind nobody knows is refused.
        let other = try rig.ctl()
        defer { other.close() }
        let r = try other.req("watch") { $0.kinds = ["access", "gossip"] }
        #expect(!r.ok && r.error == "bad-request")
    }

    @Test func countersUnmodeledOffsetsAndPollingLoops() throws {
        let rig = try Rig(tag: "report")
        defer { rig.stop() }
        let ctl = try rig.ctl()
        defer { ctl.close() }
        let vmm = try rig.vmm()
        defer { vmm.close() }

        // 0x200 and 0x300 are in BAR0 but no register or handler models them; 0x100 is a register.
        for _ in 0..<3 { _ = try vmm.read32(region: 0, offset: 0x200) }
        try vmm.write32(region: 0, offset: 0x300, 7)
        _ = try vmm.read32(region: 0, offset: 0x100)
        _ = try vmm.read(region: 2, offset: 0x200, count: 4)
        let un = try ctl.ok("unmodeled").unmodeled ?? []
        #expect(un.map(\.offset) == [Num(0x200), Num(0x300)], "\(un)")
        #expect(un.first?.reads == 3 && un.first?.writes == 0 && un.first?.size == 4)
        #expect(un.last?.writes == 1)
        #expect(un.first.map { $0.first <= $0.last } == true)

        // A polling loop: the same register more than the threshold times, nothing between.
        var r = try ctl.ok("polls") { $0.threshold = 5 }
        #expect(r.threshold == 5 && r.polls == [])
        for _ in 0..<4 { _ = try vmm.read32(region: 0, offset: DB.completions) }
        #expect(try ctl.ok("polls").polls == [], "4 reads are not a loop")
        _ = try vmm.read32(region: 0, offset: 0x100)
        for _ in 0..<9 { _ = try vmm.read32(region: 0, offset: DB.completions) }
        r = try ctl.ok("polls")
        #expect(r.polls?.count == 1)
        #expect(r.polls?.first?.offset == Num(DB.completions) && r.polls?.first?.longestRun == 9 && r.polls?.first?.active == true)
        _ = try vmm.read32(region: 0, offset: 0x100)
        #expect(try ctl.ok("polls").polls?.first?.active == false, "another access ended it")

        let stats = try ctl.ok("stats").stats ?? []
        let reads = try #require(stats.first { $0.command == "REGION_READ" })
        #expect(reads.count == 20 && reads.errors == 0)
        #expect(reads.p50Us > 0 && reads.p50Us <= reads.p99Us && reads.p99Us <= reads.maxUs)
        #expect(stats.contains { $0.command == "VERSION" && $0.count == 1 })
    }

    /// With nothing attached the accesses take the server's in-place path and are
    /// reported after their reply: a REGION_WRITE_MULTI counts once as a command and
    /// once per entry as an access; a watcher that attaches while the VMM's connection
    /// waits for its next message sees that message in full.
    @Test func countingWithNothingAttachedSeesEveryAccessAndAWatcherTakesOver() throws {
        let rig = try Rig(tag: "fastpath")
        defer { rig.stop() }
        let ctl = try rig.ctl()
        defer { ctl.close() }
        let vmm = try rig.vmm()
        defer { vmm.close() }

        try vmm.write32(region: 0, offset: 0x104, 1)  // owns the device: writes go in place from now on
        let multi = WriteMulti(entries: [
            WriteMultiEntry(offset: 0x200, region: 0, count: 4, data: 1),
            WriteMultiEntry(offset: 0x204, region: 0, count: 4, data: 2),
            WriteMultiEntry(offset: 0x208, region: 0, count: 4, data: 3),
        ])
        _ = try vmm.call(.regionWriteMulti, payload: multi.encoded)
        let stats = try ctl.ok("stats").stats ?? []
        #expect(stats.first { $0.command == "REGION_WRITE_MULTI" }?.count == 1, "\(stats)")
        let un = try ctl.ok("unmodeled").unmodeled ?? []
        #expect(un.map(\.offset) == [Num(0x200), Num(0x204), Num(0x208)], "every entry is an access: \(un)")

        // The connection is now blocked waiting for the VMM; a watcher attaches meanwhile.
        let watcher = try rig.ctl()
        defer { watcher.close() }
        #expect(try watcher.ok("watch") { $0.kinds = ["access"] }.watching == true)
        try vmm.write32(region: 0, offset: 0x104, 0x0bad_cafe)
        let e = try watcher.readEvent(timeoutMs: 5000)
        #expect(e.event == "access" && e.region == RegionRef(0) && e.offset == Num(0x104) && e.op == "write"
                && e.value == Num(0x0bad_cafe), "\(e)")
    }
}
