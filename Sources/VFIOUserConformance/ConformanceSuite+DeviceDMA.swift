import Glibc
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

// Checks that need the device itself to do DMA: the server's own DMA_READ and
// DMA_WRITE (§3.9), which the suite serves from memory it lent by a DMA_MAP without an
// fd, and dirty-page logging (§5.4) judged against the pages the device wrote. The
// suite can make a device write only through an engine it knows: the vfu doorbell
// block (docs/spec-format.md) at offset 0 of a register BAR. Other devices get a SKIP.
extension ConformanceSuite {
    enum Doorbell {
        static let magic: UInt32 = 0x4455_4656
        static let completions = 0x0C, addrLow = 0x10, addrHigh = 0x14, length = 0x18, pattern = 0x1C, doorbell = 0x20, result = 0x28, error = 0x2C, irqAck = 0x34
        static let fill: UInt32 = 1, checksum: UInt32 = 2
    }

    func deviceDMA(_ r: inout Recorder, _ info: DeviceInfo, _ links: Connections) {
        let ids = ["dma.server-requests", "dma.dirty-log"]
        guard mutating else {
            for id in ids { r.skip(id, "makes the device do DMA: run with --disruptive or --server-cmd", "§3.9, §5.4") }
            return
        }
        guard let p = links.negotiated(&r, "dma.server-requests") else { return }
        guard let command = read16(p, 4) else { return }
        write16(p, 4, command | 0x6)   // memory decoding and bus mastering
        defer { write16(p, 4, command) }
        var bar: UInt32?
        for i in 0..<UInt32(6) {
            guard let (ri, fds) = regionInfo(p, i) else { continue }
            fds.forEach { $0.close() }
            guard ri.size >= 64, !ri.flags.contains(.mmap) || ri.capabilities.contains(where: { if case .sparseMmap = $0 { return true }; return false }),
                  case .message(let m) = p.call(.regionRead, RegionAccess(offset: 0, region: i, count: 8).encoded), !m.header.isError,
                  let a = try? RegionAccess(payload: Array(m.payload)), a.data.count >= 8 else { continue }
            if a.data.le32(at: 0) == Doorbell.magic && a.data.le32(at: 4) >> 16 == 1 { bar = i; break }
        }
        guard let bar else {
            for id in ids { r.skip(id, "no way to make this device write: no vfu doorbell block at offset 0 of a BAR", "§3.9, §5.4") }
            return
        }
        func reg(_ off: Int, _ v: UInt32) { _ = p.call(.regionWrite, RegionAccess(offset: UInt64(off), region: bar, data: le(v)).encoded) }
        func reg(_ off: Int) -> UInt32? {
            guard case .message(let m) = p.call(.regionRead, RegionAccess(offset: UInt64(off), region: bar, count: 4).encoded), !m.header.isError,
                  let a = try? RegionAccess(payload: Array(m.payload)), a.data.count >= 4 else { return nil }
            return a.data.le32(at: 0)
        }
        func ring(_ cmd: UInt32, _ address: UInt64, _ length: UInt32, pattern: UInt32 = 0) -> UInt32? {
            reg(Doorbell.addrLow, UInt32(truncatingIfNeeded: address)); reg(Doorbell.addrHigh, UInt32(address >> 32))
            reg(Doorbell.length, length); reg(Doorbell.pattern, pattern)
            let before = reg(Doorbell.completions)
            reg(Doorbell.doorbell, cmd)
            // The device may work after the write's reply: wait (bounded) for the
            // completion count to move, serving its DMA meanwhile.
            let deadline = monotonicMs() + Int(timeoutMs)
            while reg(Doorbell.completions) == before && monotonicMs() < deadline { _ = poll(nil, 0, 1) }
            let e = reg(Doorbell.error)
            reg(Doorbell.irqAck, 1)
            return e
        }
        func expectedFill(_ length: Int, _ pattern: UInt32) -> [UInt8] {
            (0..<length).map { i in UInt8(truncatingIfNeeded: (pattern &+ UInt32(i / 4)) >> (8 * UInt32(i % 4))) }
        }

        // Message-based DMA: the device's writes and reads arrive here as DMA_WRITE / DMA_READ.
        let base: UInt64 = 0x9000_0000
        let guest = GuestMemory(base: base, size: 1 << 16)
        p.guestMemory = guest
        let map = p.call(.dmaMap, DMAMapRequest(flags: [.read, .write], offset: 0, address: base, size: 1 << 16).encoded)
        if isError(map) || !{ if case .message = map { return true }; return false }() {
            r.skip("dma.server-requests", "DMA_MAP without an fd (message-based DMA): \(show(map))", "§3.1, §3.9")
        } else {
            let fillError = ring(Doorbell.fill, base + 0x1000, 4096, pattern: 0x5A00_0000)
            let wrote = guest.read(base + 0x1000, 4096) == expectedFill(4096, 0x5A00_0000)
            let sumError = ring(Doorbell.checksum, base + 0x1000, 4096)
            let sum = reg(Doorbell.result)
            let want = DoorbellChecksum.fnv1a(guest.read(base + 0x1000, 4096) ?? [])
            let asked = p.served.filter { $0.hasPrefix("DMA_") }
            r.check(fillError == 0 && wrote && sumError == 0 && sum == want, "dma.server-requests",
                    "device FILL of 4 KiB: error \(fillError.map(String.init) ?? "unreadable"), memory \(wrote ? "holds the pattern" : "does not hold the pattern"); "
                        + "CHECKSUM: error \(sumError.map(String.init) ?? "unreadable"), result \(sum.map { "0x\(String($0, radix: 16))" } ?? "unreadable") (want 0x\(String(want, radix: 16))); "
                        + "served \(asked.count) requests: \(asked.prefix(4).joined(separator: ", "))", "§3.9")
            _ = p.call(.dmaUnmap, DMAUnmapRequest(address: base, size: 1 << 16).encoded)
        }
        p.guestMemory = nil

        // Dirty logging over shared memory: the pages the device wrote are reported, and a report clears them.
        guard let mem = try? ClientMemory(size: 1 << 20) else { r.skip("dma.dirty-log", "cannot create a memfd", "§5.4"); return }
        let base2: UInt64 = 0xA000_0000, page: UInt64 = 4096
        let map2 = p.call(.dmaMap, DMAMapRequest(flags: [.read, .write], offset: 0, address: base2, size: 1 << 20).encoded, fds: [mem.fd.rawValue])
        guard !isError(map2) else { r.fail("dma.dirty-log", "DMA_MAP of a 1 MiB memfd: \(show(map2))", "§3.1"); return }
        defer { _ = p.call(.dmaUnmap, DMAUnmapRequest(address: base2, size: 1 << 20).encoded) }
        let start = p.call(.deviceFeature, DeviceFeature(argsz: 8 + 32, flags: UInt32(DeviceFeature.dmaLoggingStart) | DeviceFeature.set,
                                                         data: DMALoggingStart(pageSize: page, ranges: [DMALoggingRange(iova: base2, length: 1 << 20)]).encoded).encoded)
        guard !isError(start), case .message = start else {
            r.skip("dma.dirty-log", "DMA_LOGGING_START: \(show(start)) (no dirty logging)", "§5.4"); return
        }
        defer { _ = p.call(.deviceFeature, DeviceFeature(argsz: 8, flags: UInt32(DeviceFeature.dmaLoggingStop) | DeviceFeature.set).encoded) }
        func report() -> Set<Int>? {
            let words = DMALoggingReport.bitmapWords(length: 1 << 20, pageSize: page)
            let req = DeviceFeature(argsz: UInt32(8 + DMALoggingReport.fixedSize + 8 * words), flags: UInt32(DeviceFeature.dmaLoggingReport) | DeviceFeature.get,
                                    data: DMALoggingReport(iova: base2, length: 1 << 20, pageSize: page).encoded)
            guard case .message(let m) = p.call(.deviceFeature, req.encoded), !m.header.isError,
                  let f = try? DeviceFeature(payload: Array(m.payload)), let rep = try? DMALoggingReport(payload: f.data) else { return nil }
            var pages = Set<Int>()
            for (w, word) in rep.bitmap.prefix(words).enumerated() { for b in 0..<64 where word & (1 << UInt64(b)) != 0 { pages.insert(w * 64 + b) } }
            return pages
        }
        _ = report()   // whatever was dirty before
        let fillError = ring(Doorbell.fill, base2 + 5 * page + 100, 8192, pattern: 0x0D1E_0000)
        let wrote = mem.read(at: Int(5 * page + 100), count: 8192) == expectedFill(8192, 0x0D1E_0000)
        let dirty = report(), again = report()
        let want: Set<Int> = [5, 6, 7]
        let missing = dirty.map { want.subtracting($0) } ?? want
        let extra = dirty.map { $0.subtracting(want) } ?? []
        let detail = "device FILL of 8 KiB at page 5 + 100 (error \(fillError.map(String.init) ?? "unreadable"), \(wrote ? "written" : "not written")): "
            + "report \(dirty.map { $0.sorted().map(String.init).joined(separator: ",") } ?? "failed"), then \(again.map { $0.isEmpty ? "empty" : $0.sorted().map(String.init).joined(separator: ",") } ?? "failed")"
        if fillError != 0 || !wrote {
            r.fail("dma.dirty-log", detail + " (the device's write through the mapping failed)", "§3.9")
        } else if !missing.isEmpty || again == nil || !(again!.isDisjoint(with: want)) {
            r.fail("dma.dirty-log", detail + (missing.isEmpty ? " (a report clears what it reported)" : " (pages \(missing.sorted()) were written but not reported)"), "§5.4")
        } else if !extra.isEmpty {
            r.warn("dma.dirty-log", detail + " (pages reported that were not written: safe, but costs a migration resends)", "§5.4")
        } else {
            r.pass("dma.dirty-log", detail, "§5.4")
        }
    }
}

/// FNV-1a, 32-bit: what the doorbell's CHECKSUM command computes.
enum DoorbellChecksum {
    static func fnv1a(_ data: [UInt8]) -> UInt32 {
        var h: UInt32 = 0x811C_9DC5
        for b in data { h = (h ^ UInt32(b)) &* 0x0100_0193 }
        return h
    }
}
