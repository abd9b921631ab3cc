@_spi(Server) import PCICore
import Testing
import VFIOUserProtocol

/// The dirty page log at the edges of the address space, and reports over ranges far
/// larger than what was logged: no arithmetic may overflow (a trap would take the
/// server down), and the work follows the pages logged, not the range asked about.
@Suite struct DirtyPageLogTests {
    static let top = UInt64.max - 4095   // the last 4 KiB page

    @Test func theTopPageOfTheAddressSpaceIsLoggedAndReported() {
        var log = DirtyPageLog(pageSize: 4096, ranges: [DMALoggingRange(iova: Self.top, length: 4096)])
        log.mark(address: Self.top + 100, length: 4096 - 100)
        log.mark(address: 0, length: 8)                       // outside the tracked range
        #expect(log.isDirty(page: Self.top / 4096))
        #expect(!log.isDirty(page: 0))
        #expect(log.report(iova: Self.top, length: 4096, reportPageSize: 4096) == [1])
        #expect(log.report(iova: Self.top, length: 4096, reportPageSize: 4096) == [0])   // cleared
    }

    @Test func aReportOverTheWholeAddressSpaceWithHugePages() {
        var log = DirtyPageLog(pageSize: 4096, ranges: [])
        log.mark(address: 0x1000, length: 1)
        log.mark(address: Self.top, length: 4096)
        // 2^63-byte report pages: page 0 holds the first write, page 1 the second.
        #expect(log.report(iova: 0, length: UInt64.max, reportPageSize: 1 << 63) == [0b11])
        log.mark(address: 1 << 40, length: 4096)              // below the next report's range
        log.mark(address: (1 << 63) + 5, length: 1)           // its second 2^62-byte page
        #expect(log.report(iova: 1 << 62, length: UInt64.max - (1 << 62), reportPageSize: 1 << 62) == [0b10])
        #expect(log.isDirty(page: (1 << 40) / 4096))          // not reported, so still logged
        #expect(log.report(iova: 1 << 62, length: UInt64.max - (1 << 62), reportPageSize: 1 << 62) == [0])
    }

    @Test func aLoggedPageLargerThanTheReportPageMarksEveryReportPageItCovers() {
        var log = DirtyPageLog(pageSize: 1 << 21, ranges: [])
        log.mark(address: (1 << 21) + 5, length: 1)
        // Report in 4 KiB pages over the first 4 MiB: the whole second 2 MiB page is dirty.
        let bits = log.report(iova: 0, length: 4 << 20, reportPageSize: 4096)
        #expect(bits.count == 16)
        #expect(bits[0..<8].allSatisfy { $0 == 0 } && bits[8..<16].allSatisfy { $0 == UInt64.max })
    }

    @Test func bitmapSizesNeverOverflow() {
        #expect(DMALoggingReport.bitmapWords(length: UInt64.max, pageSize: 1) == Int(UInt64.max / 64 + 1))
        #expect(DMALoggingReport.bitmapWords(length: UInt64.max, pageSize: 1 << 63) == 1)
        #expect(DMALoggingReport.bitmapWords(length: 0, pageSize: 4096) == 0)
        #expect(DMALoggingReport.bitmapWords(length: 4096 * 64, pageSize: 4096) == 1)
        #expect(DMALoggingReport.bitmapWords(length: 4096 * 64 + 1, pageSize: 4096) == 2)
    }
}
