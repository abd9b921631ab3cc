import MigrationStream
import DeviceSpecs
import Glibc
@_spi(Server) import PCICore
import Testing
import VariantDevices
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// The migratable VF: what STOP and the P2P states allow, PRE_COPY accounting, the
/// stream's checks, and live migration between two servers under load.
@Suite struct DeviceMigrationTests {
    static func tempFile(_ name: String) -> String {
        var template = Array("/tmp/vfu-migf-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) } + "/" + name
    }

    @Test func stoppedAndP2PStatesStartNoDMAAndRaiseNoInterrupts() throws {
        let vf = try VF.serve()
        let g = try Guest(client: try vf.client())
        let ctl = try vf.client()
        try g.setUp()
        try g.submit(3)
        #expect(try g.waitFor(.completions, atLeast: 3))
        #expect(EventFD.wait(g.irq!.rawValue, timeoutMs: 1000) >= 1)
        let model = vf.model!

        for state: MigrationState in [.stop, .runningP2P] {
            try ctl.setMigrationState(state)
            _ = EventFD.wait(g.irq!.rawValue, timeoutMs: 0)
            let before = model.registers
            try g.submit(5)                         // accepted: the register write lands
            try g.setReg(.scratch, 0x5A5A)
            let mem = g.memory.read(at: 0, count: Guest.memSize)
            #expect(try g.reg(.scratch) == 0x5A5A)
            #expect(try g.reg(.magic) == MigratableVF.magic)
            #expect(try ctl.readConfig16(0) == 0x15b3)   // config space still answers
            // The TAIL write queued a look at the ring; once the device's work queue is
            // idle, anything that was going to run has run.
            #expect(vf.device.work.waitUntilIdle())
            let after = model.registers
            // Nothing ran: counters, head and ticks are as they were (only TAIL and SCRATCH moved).
            for r: MigratableVF.Register in [.completions, .ringHead, .ticks, .irqCount, .bytesLow, .digestLow] {
                #expect(after[r.rawValue / 4] == before[r.rawValue / 4], "\(state) \(r)")
            }
            let unchanged = g.memory.read(at: 0, count: Guest.memSize) == mem
            #expect(unchanged, "\(state): client memory written")
            #expect(EventFD.wait(g.irq!.rawValue, timeoutMs: 0) == 0, "\(state): interrupt raised")
            #expect(throws: VFIOErrno.EBUSY) { try vf.device.dmaWrite(address: Guest.iova, [1, 2, 3]) }
            vf.device.raiseInterrupt(vector: 0)
            #expect(EventFD.wait(g.irq!.rawValue, timeoutMs: 50) == 0)
            try ctl.setMigrationState(.running)
            #expect(try g.waitFor(.completions, atLeast: before[MigratableVF.Register.completions.rawValue / 4] + 5))
            #expect(EventFD.wait(g.irq!.rawValue, timeoutMs: 1000) >= 1)
        }
        // STOP_COPY: registers are frozen while the state is read out.
        try ctl.setMigrationState(.stopCopy)
        #expect(throws: ClientError.server(.regionWrite, .EBUSY)) { try g.setReg(.scratch, 1) }
        #expect(try g.reg(.scratch) == 0x5A5A)
        try ctl.setMigrationState(.running)
    }

    /// 32 MiB of RAM is rescanned by two threads (MigratableVFSave's rescan).
    @Test(arguments: [512, 32768])
    func preCopyReportsInitialAndDirtyBytesAndConverges(ramKiB: Int) throws {
        let vf = try VF.serve(ramKiB: ramKiB)
        let c = try vf.client()
        try c.writeConfig16(0x04, 0x0002)          // memory space on: REGION_WRITE reaches the BAR
        try c.setMigrationState(.preCopy)
        let first = try c.precopyInfo()
        #expect(first.initial >= UInt64(ramKiB * 1024) && first.dirty == 0)
        var total = 0
        while true {
            let chunk = try c.readMigrationChunk(max: 1 << 20)
            if chunk.isEmpty { break }
            total += chunk.count
        }
        #expect(total > ramKiB * 1024)
        #expect(try c.precopyInfo() == (0, 0))
        // Change three pages: two through REGION_WRITE, one through the client's mmap.
        try c.write(region: 2, offset: 0x1000, [1, 2, 3])
        try c.write(region: 2, offset: 0x5000 + 100, [9])
        let ram = vf.device.barMemory[2]!
        ram.mapping.write(at: UInt64(ramKiB * 1024 - 0x100), [0xEE])   // the last page
        #expect(try c.precopyInfo() == (0, 3 * 4096))
        var round = 0
        while true {
            let chunk = try c.readMigrationChunk(max: 64 << 10)
            if chunk.isEmpty { break }
            round += chunk.count
        }
        #expect(round > 3 * 4096 && round < 4 * 4096)
        #expect(try c.precopyInfo() == (0, 0))       // converged
        #expect(c.migrationDataSize() ?? 0 > 0)
        #expect(throws: ClientError.server(.deviceFeature, .EINVAL)) {
            try c.setMigrationState(.stopCopy)
            _ = try c.precopyInfo()
        }
    }

    /// Saves a device (running, with some history) to a file through the library.
    /// The guest of each saved device stays connected (a device resets when its owner leaves).
    static let keep = KeepAlive()

    func savedStream(from vf: Served) throws -> [UInt8] {
        let g = try Guest(client: try vf.client())
        Self.keep.add(g)
        try g.setUp()
        try g.submit(20)
        #expect(try g.waitFor(.completions, atLeast: 20))
        let path = Self.tempFile("saved.vfumig")
        var m = Migrator(source: .device(try vf.client()), destination: .file(path))
        m.resumeSourceAfterSave = true
        let r = try m.run()
        #expect(r.preCopyRounds >= 1 && r.stopCopyBytes > 0)
        let f = fopen(path, "rb")!
        defer { fclose(f) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n == 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    func load(_ bytes: [UInt8], into vf: Served) -> Result<MigrationReport, MigrationFailure> {
        let path = Self.tempFile("load.vfumig")
        let f = fopen(path, "wb")!
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
        let client = try! vf.client()
        do {
            return .success(try Migrator(source: .file(path), destination: .device(client)).run())
        } catch {
            return .failure(error)
        }
    }

    @Test func aSavedStreamLoadsIntoAFreshDevice() throws {
        let a = try VF.serve()
        let bytes = try savedStream(from: a)
        let b = try VF.serve()
        let vmmB = try b.client()   // keeps B from resetting when the loader leaves
        guard case .success = load(bytes, into: b) else { Issue.record("load failed"); return }
        #expect(try vmmB.migrationState() == .running)
        // A kept running after the save with nothing more to do: its RAM, ring and counters are what was saved.
        #expect(b.model!.ramDigest() == a.model!.ramDigest())
        #expect(b.model!.register(.completions) == 20)
        #expect(b.model!.register(.ringHead) == 20 && a.model!.register(.ringHead) == 20)
        #expect(b.model!.register(.digestLow) == a.model!.register(.digestLow))
        #expect(b.device.busMasterEnabled)
    }

    /// The spec sets the RAM BAR's size, from 4 KiB up to 1 GiB; beyond, the spec is
    /// refused naming the file, the field and the reason.
    @Test func theRAMBARIsSizedByTheSpecUpTo1GiB() throws {
        let big = try VF.serve(ramKiB: 1 << 20)
        #expect(big.device.barMemory[2]!.size == 1 << 30)
        #expect(try big.client().regionInfo(2).info.size == 1 << 30)
        for (kib, ok) in [(4, true), (2, false), (2 << 20, false)] {
            let spec = try DeviceSpec.parse(Array(VF.spec(ramKiB: kib).utf8), file: "vf.json", sectionKeys: VariantRegistry.standard.sectionKeys)
            do throws(SpecError) {
                _ = try MigratableVFOptions.parse(spec)
                #expect(ok, "\(kib) KiB accepted")
            } catch {
                #expect(!ok, "\(kib) KiB refused: \(error)")
                #expect(error.file == "vf.json" && error.field == "migration.ramBar" && error.reason.contains("4 KiB to 1 GiB"), "\(error)")
            }
        }
    }

    /// The framing docs/migration.md describes, format 2: XXH3 header checks and trailers.
    @Test func theStreamIsFormat2WithXXH3Checksums() throws {
        let bytes = try savedStream(from: try VF.serve())
        #expect(bytes.le32(at: 0) == MigrationRecord.magic)
        #expect(bytes.le16(at: 4) == MigrationRecord.Tag.begin.rawValue)
        #expect(bytes.le32(at: 20) == UInt32(truncatingIfNeeded: XXH3.hash(bytes[0..<20])))
        let length = Int(bytes.le64(at: 8))
        #expect(bytes.le64(at: 24 + length) == XXH3.hash(bytes[0..<(24 + length)]))
        #expect(bytes.le16(at: 24) == 2 && bytes.le16(at: 26) == 0)   // BEGIN: format 2.0
    }

    /// Every byte of the stream is under a checksum: any single flipped bit, anywhere,
    /// is refused, and the intact stream loads in chunks of any size.
    @Test func everyFlippedBitIsRefused() throws {
        let bytes = try savedStream(from: try VF.serve())
        let b = try VF.serve()
        var rng = SystemRandomNumberGenerator()
        var bits = (0..<300).map { _ in Int.random(in: 0..<(bytes.count * 8), using: &rng) }
        bits += Array(0..<(24 * 8)) + Array((bytes.count * 8 - 64)..<(bytes.count * 8))   // first header, last trailer
        for bit in bits {
            var s = bytes
            s[bit / 8] ^= 1 << UInt8(bit % 8)
            let loader = MigrationStreamLoader(consumer: b.model!)
            // The model is the loader's consumer: its callbacks run under the device lock.
            let verdict = b.device.lock.withLock {
                s.withUnsafeBytes { loader.write($0) }
                return loader.finish()
            }
            #expect(verdict != nil, "bit \(bit) of \(bytes.count * 8) flipped, and the stream was accepted")
            if let verdict { #expect([VFIOErrno.EBADMSG, .EPROTO, .ENODEV, .EOPNOTSUPP, .ENODATA].contains(verdict.errno), "bit \(bit): \(verdict)") }
        }
        let loader = MigrationStreamLoader(consumer: b.model!)
        var at = 0
        while at < bytes.count {
            let n = min(bytes.count - at, Int.random(in: 1...9000, using: &rng))
            b.device.lock.withLock { bytes[at..<(at + n)].withUnsafeBytes { loader.write($0) } }
            at += n
        }
        #expect(b.device.lock.withLock { loader.finish() } == nil)
    }

    @Test func corruptedTruncatedAndForeignStreamsAreEachRefusedWithTheirOwnError() throws {
        let a = try VF.serve()
        let bytes = try savedStream(from: a)
        var reasons: [String] = []
        func expectRefused(_ stream: [UInt8], _ verdict: MigrationStreamVerdict, _ errno: VFIOErrno, into vf: Served? = nil) throws {
            let b = try vf ?? VF.serve()
            let vmm = try b.client()
            try b.device.barMemory[2]!.write(offset: 0, data: [7, 7, 7][...])
            let regs = b.model!.registers
            guard case .failure(let f) = load(stream, into: b) else { Issue.record("\(verdict): accepted"); return }
            #expect(f.verdict == verdict, "\(f)")
            #expect(f.error?.errno == errno)
            #expect(f.destinationState == .error)
            reasons.append(b.device.migration?.lastFailure ?? "")
            // Defined state: ERROR, registers untouched, RAM zeroed; a reset brings it back.
            #expect(b.model!.registers == regs)
            #expect(try b.device.barMemory[2]!.read(offset: 0, count: 3) == [0, 0, 0])
            try vmm.reset()
            #expect(try vmm.migrationState() == .running)
        }
        var corrupted = bytes
        corrupted[bytes.count / 2] ^= 0x40
        try expectRefused(corrupted, .corrupted, .EBADMSG)
        try expectRefused(Array(bytes.prefix(bytes.count - 100)), .truncated, .ENODATA)
        try expectRefused(Array(bytes.prefix(bytes.count / 3)), .truncated, .ENODATA)
        try expectRefused(bytes, .wrongDevice, .ENODEV, into: try VF.serve(device: "0x1018"))
        try expectRefused(bytes, .wrongDevice, .ENODEV, into: try VF.serve(ramKiB: 2048))
        try expectRefused([UInt8](repeating: 0x42, count: 4096), .notAStream, .EPROTO)
        try expectRefused(bytes + [0], .corrupted, .EBADMSG)
        // A stream of format 1, whose headers were checked with XXH64, is named as such.
        var format1 = bytes
        format1.setLE32(UInt32(truncatingIfNeeded: XXH64.hash(bytes[0..<20])), at: 20)
        try expectRefused(format1, .notAStream, .EPROTO)
        #expect(reasons.last?.contains("format 1") == true, "\(reasons)")
        #expect(Set(reasons).count == reasons.count, "\(reasons)")
        #expect(reasons[0].contains("checksum"))
        #expect(reasons[1].contains("truncated"))
        #expect(reasons[3].contains("0x101e") || reasons[3].contains("101e"))
    }

    /// Two servers, a device under continuous load, a VMM that migrates guest RAM with
    /// the dirty log: registers, RAM and ring progress identical; work continues there.
    /// Over messages relayed by the client, and over the direct (mig-data-fd) path.
    @Test(arguments: [false, true])
    func liveMigrationUnderLoad(direct: Bool) throws {
        let ramKiB = 2048
        let a = try VF.serve(ramKiB: ramKiB)
        let b = try VF.serve(ramKiB: ramKiB)
        let ga = try Guest(client: try a.client())
        let gb = try Guest(client: try b.client())
        try ga.setUp()
        gb.irq = try gb.client.enableEventFDs(index: IRQIndex.msix.rawValue, count: 1)[0]
        ga.startLoad(ramSize: ramKiB * 1024)
        #expect(try ga.waitFor(.completions, atLeast: 100))
        // Some RAM the guest wrote through its mapping of the BAR.
        let (_, bar) = try ga.client.mapRegion(2)
        bar.write(at: 0x1234, Array("written through mmap".utf8))

        let caps = VersionCapabilities(maxMsgFDs: 16, maxDataXferSize: 256 << 10, pgsizes: 4096, maxDMAMaps: 65535,
                                       extensions: direct ? ["mig-data-fd": "1"] : nil)
        let ctlA = try VFIOUserClient(path: a.path, capabilities: caps), ctlB = try VFIOUserClient(path: b.path, capabilities: caps)
        // Guest RAM: the VMM's job. Everything once, then what the device and the CPU dirtied.
        try ctlA.startDirtyLogging(pageSize: 4096, ranges: [DMALoggingRange(iova: Guest.iova, length: UInt64(Guest.memSize))])
        gb.memory.write(at: 0, ga.memory.read(at: 0, count: Guest.memSize))
        var syncedPages = 0
        func syncRAM() throws {
            var pages = Set(try ctlA.dirtyPages(iova: Guest.iova, length: UInt64(Guest.memSize), pageSize: 4096).map { Int($0 - Guest.iova) / 4096 })
            pages.formUnion(ga.cpuDirty.withLock { d in defer { d.removeAll() }; return d })
            for p in pages { gb.memory.write(at: p * 4096, ga.memory.read(at: p * 4096, count: 4096)) }
            syncedPages += pages.count
        }
        var m = Migrator(source: .device(ctlA), destination: .device(ctlB))
        m.chunkSize = 256 << 10
        m.maxRounds = 5
        m.threshold = 64 << 10
        var progressCalls = 0
        m.progress = { _ in progressCalls += 1 }
        m.afterPreCopyRound = { _ in try syncRAM() }
        m.beforeStopCopy = { ga.stop() }                 // the VM's CPUs stop
        m.whileStopped = { try syncRAM() }
        var checked = false
        m.beforeDestinationRuns = {
            // Both devices are stopped now: everything must match.
            #expect(a.model!.registers == b.model!.registers)
            #expect(a.model!.ramDigest() == b.model!.ramDigest())
            let same = ga.memory.read(at: 0, count: Guest.memSize) == gb.memory.read(at: 0, count: Guest.memSize)
            #expect(same, "guest RAM differs after the dirty-log sync")
            #expect(a.device.saveCoreState() == b.device.saveCoreState())
            checked = true
        }
        let report = try m.run()
        #expect(report.directDataPath == direct)
        #expect(checked)
        #expect(report.preCopyRounds >= 1 && report.preCopyBytes >= UInt64(ramKiB * 1024))
        #expect(report.stopCopyBytes > 0 && report.downtimeSeconds > 0 && progressCalls > 0)
        #expect(syncedPages > 0)
        #expect(try ctlA.migrationState() == .stop && ctlB.migrationState() == .running)
        #expect(Array(b.device.barMemory[2]!.mapping.read(at: 0x1234, count: 20)!) == Array("written through mmap".utf8))

        // The source is frozen; the destination goes on: DMA and interrupts continue.
        let frozen = a.model!.register(.completions)
        gb.tail = try gb.reg(.ringTail)
        _ = EventFD.wait(gb.irq!.rawValue, timeoutMs: 0)
        gb.startLoad(ramSize: ramKiB * 1024)
        defer { gb.stop() }
        #expect(try gb.waitFor(.completions, atLeast: frozen + 50))
        #expect(EventFD.wait(gb.irq!.rawValue, timeoutMs: 2000) >= 1)
        let slot = Int((try gb.reg(.ringHead) &- 1) % Guest.ringEntries)
        #expect(gb.memory.read(at: Guest.ringOffset + slot * 32 + 28, count: 4).le32(at: 0) == 1)
        #expect(a.device.work.waitUntilIdle())
        #expect(a.model!.register(.completions) == frozen)
    }

    @Test func theSourceKeepsRunningAfterAFailedMigration() throws {
        let a = try VF.serve(ramKiB: 1024)
        let b = try VF.serve(ramKiB: 512)          // a different device: refused before anything changes
        let vmmB = try b.client()
        let ga = try Guest(client: try a.client())
        try ga.setUp()
        ga.startLoad()
        defer { ga.stop() }
        #expect(try ga.waitFor(.completions, atLeast: 50))
        var m = Migrator(source: .device(try a.client()), destination: .device(try b.client()))
        m.maxRounds = 2
        do {
            try m.run()
            Issue.record("the migration succeeded")
        } catch {
            #expect(error.phase == "setup" && error.reason.contains("on the source and 512 KiB on the destination"), "\(error)")
            #expect(error.verdict == nil)
        }
        // Neither end was touched: the destination never entered RESUMING.
        #expect(try vmmB.migrationState() == .running)
        let n = try ga.reg(.completions)
        #expect(try ga.waitFor(.completions, atLeast: n + 50))
        #expect(a.device.migration?.state == .running)
        // A corrupting link: the same.
        let c = try VF.serve(ramKiB: 1024)
        _ = try c.client()
        var m2 = Migrator(source: .device(try a.client()), destination: .device(try c.client()))
        m2.transform = { bytes in if bytes.count > 5000 { bytes[4000] ^= 1 } }
        do {
            try m2.run()
            Issue.record("the corrupted migration succeeded")
        } catch {
            #expect(error.verdict == .corrupted)
            #expect(error.sourceState == .running)
        }
        let k = try ga.reg(.completions)
        #expect(try ga.waitFor(.completions, atLeast: k + 20))
    }
}

final class KeepAlive: @unchecked Sendable {
    private var items: [AnyObject] = []
    private var m = pthread_mutex_t()
    init() { pthread_mutex_init(&m, nil) }
    func add(_ o: AnyObject) { pthread_mutex_lock(&m); items.append(o); pthread_mutex_unlock(&m) }
}
