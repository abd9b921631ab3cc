import Glibc
@_spi(Server) import PCICore
import Testing
import VariantDevices
import VFIOUserClient
import VFIOUserProtocol

/// DMA_LOGGING_START / STOP / REPORT, and that the log holds exactly the pages the
/// device wrote, through the mmap'd path and through DMA_WRITE messages.
@Suite struct DirtyLoggingTests {
    let resultBase = Guest.iova + UInt64(Guest.resultOffset)

    @Test func startStopReportRules() throws {
        let vf = try VF.serve()
        let c = try vf.client()
        let einval = ClientError.server(.deviceFeature, .EINVAL)
        #expect(throws: einval) { _ = try c.dirtyBitmap(iova: 0, length: 1 << 20, pageSize: 4096) }
        #expect(throws: einval) { try c.stopDirtyLogging() }
        _ = try c.feature(DeviceFeature.dmaLoggingStart, set: true, probe: true)
        _ = try c.feature(DeviceFeature.dmaLoggingReport, get: true, probe: true)
        let ranges = [DMALoggingRange(iova: 0x1000_0000, length: 1 << 20), DMALoggingRange(iova: 0x2000_0000, length: 1 << 20)]
        #expect(try c.startDirtyLogging(pageSize: 4096, ranges: ranges) == 4096)
        #expect(throws: ClientError.server(.deviceFeature, .EBUSY)) { try c.startDirtyLogging(pageSize: 4096) }
        try c.stopDirtyLogging()
        // page_size is a hint: below 4 KiB we choose 4 KiB; a power of two above is kept.
        #expect(try c.startDirtyLogging(pageSize: 1024) == 4096)
        try c.stopDirtyLogging()
        #expect(try c.startDirtyLogging(pageSize: 1 << 21) == 1 << 21)
        try c.stopDirtyLogging()
        #expect(throws: einval) { try c.startDirtyLogging(pageSize: 3000) }
        #expect(throws: einval) { try c.startDirtyLogging(pageSize: 4096, ranges: [DMALoggingRange(iova: 0, length: 8192), DMALoggingRange(iova: 4096, length: 4096)]) }
        #expect(throws: einval) { try c.startDirtyLogging(pageSize: 4096, ranges: [DMALoggingRange(iova: 0, length: 0)]) }
        // Reports at the edges of the address space are answered, never a trap. As with
        // the kernel, a range must end below 2^64.
        _ = try c.startDirtyLogging(pageSize: 4096)
        #expect(throws: ClientError.server(.deviceFeature, .E2BIG)) { _ = try c.dirtyBitmap(iova: 0, length: .max, pageSize: 1) }
        #expect(try c.dirtyBitmap(iova: 0, length: .max, pageSize: 1 << 63) == [0])
        #expect(try c.dirtyBitmap(iova: .max - 8191, length: 4096, pageSize: 4096) == [0])
        #expect(throws: einval) { _ = try c.dirtyBitmap(iova: .max - 4095, length: 4096, pageSize: 4096) }
        try c.stopDirtyLogging()
    }

    /// Runs `count` HASH descriptors whose results land on the given result slots,
    /// and returns the pages the device wrote (results and the descriptors' status words).
    func runHashes(_ g: Guest, slots: [Int], serve: Bool = false) throws -> Set<UInt64> {
        var expected = Set<UInt64>()
        let start = try g.reg(.completions)
        for s in slots {
            // Descriptor index chosen so it sits in ring slot s % ringEntries; results at page s.
            let dst = resultBase + UInt64(s * 4096) + 64
            let slot = g.put(op: .hash, len: 256, dst: dst, index: g.tail)
            g.tail &+= 1
            expected.insert(dst & ~4095)
            expected.insert((Guest.iova + UInt64(Guest.ringOffset + slot * 32)) & ~4095)
        }
        try g.setReg(.ringTail, g.tail)
        let done = waitUntil {
            if serve { try? g.client.serveRequests(timeoutMs: 5) }
            return ((try? g.reg(.completions)) ?? 0) >= start + UInt32(slots.count)
        }
        #expect(done)
        return expected
    }

    func checkExact(_ g: Guest, _ ctl: VFIOUserClient, serve: Bool) throws {
        try g.setUp()
        #expect(try ctl.startDirtyLogging(pageSize: 4096, ranges: [DMALoggingRange(iova: Guest.iova, length: UInt64(Guest.memSize))]) == 4096)
        let expected = try runHashes(g, slots: [3, 17, 200, 201, 700], serve: serve)
        let dirty = try ctl.dirtyPages(iova: Guest.iova, length: UInt64(Guest.memSize), pageSize: 4096)
        #expect(Set(dirty) == expected)
        #expect(dirty.count == expected.count)
        // Clear-on-read: nothing new, nothing reported.
        #expect(try ctl.dirtyPages(iova: Guest.iova, length: UInt64(Guest.memSize), pageSize: 4096).isEmpty)
        // A coarser report page: the 8 KiB pages holding the writes.
        let more = try runHashes(g, slots: [40, 41], serve: serve)
        let coarse = try ctl.dirtyPages(iova: Guest.iova, length: UInt64(Guest.memSize), pageSize: 8192)
        #expect(Set(coarse) == Set(more.map { Guest.iova + (($0 - Guest.iova) & ~8191) }))
        // The device's own verdicts reached client memory.
        let r = g.memory.read(at: Guest.resultOffset + 3 * 4096 + 64, count: 16)
        #expect(r.le64(at: 8) != 0)
        try ctl.stopDirtyLogging()
    }

    @Test func theLogHoldsExactlyThePagesWrittenThroughMmap() throws {
        let vf = try VF.serve()
        let g = try Guest(client: try vf.client())
        try checkExact(g, try vf.client(), serve: false)
        #expect(g.client.servedDMAWrites == 0)
    }

    @Test func theLogHoldsExactlyThePagesWrittenThroughDMAMessages() throws {
        let vf = try VF.serve()
        let g = try Guest(client: try vf.client(), mapWithFD: false)
        try checkExact(g, try vf.client(), serve: true)
        #expect(g.client.servedDMAWrites > 0)
    }

    @Test func onlyTrackedRangesAreLogged() throws {
        let vf = try VF.serve()
        let g = try Guest(client: try vf.client())
        let ctl = try vf.client()
        try g.setUp()
        // Track only the result area; the ring's status writes fall outside.
        try ctl.startDirtyLogging(pageSize: 4096, ranges: [DMALoggingRange(iova: resultBase, length: 1 << 20)])
        _ = try runHashes(g, slots: [5])
        #expect(try ctl.dirtyPages(iova: Guest.iova, length: UInt64(Guest.memSize), pageSize: 4096) == [resultBase + 5 * 4096])
    }
}
