import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

// Config space as a PCI device must present it (PCI Local Bus 3.0, PCIe Base 6.x §7):
// the capability lists' structure, an Express capability in a 4 KiB space, BAR and
// ROM sizing that agrees with the region sizes, and restores what sizing overwrote.
extension ConformanceSuite {
    func readConfig(_ p: RawPeer, _ offset: Int, _ count: Int) -> [UInt8]? {
        guard case .message(let m) = p.call(.regionRead, RegionAccess(offset: UInt64(offset), region: 7, count: UInt32(count)).encoded),
              !m.header.isError, let a = try? RegionAccess(payload: Array(m.payload)), a.data.count >= count else { return nil }
        return Array(a.data.prefix(count))
    }

    @discardableResult
    func writeConfig(_ p: RawPeer, _ offset: Int, _ bytes: [UInt8]) -> Bool {
        !isError(p.call(.regionWrite, RegionAccess(offset: UInt64(offset), region: 7, data: bytes).encoded))
    }

    func read32(_ p: RawPeer, _ offset: Int) -> UInt32? { readConfig(p, offset, 4).map { $0.le32(at: 0) } }
    func read16(_ p: RawPeer, _ offset: Int) -> UInt16? { readConfig(p, offset, 2).map { $0.le16(at: 0) } }
    func write32(_ p: RawPeer, _ offset: Int, _ v: UInt32) { writeConfig(p, offset, le(v)) }
    func write16(_ p: RawPeer, _ offset: Int, _ v: UInt16) { writeConfig(p, offset, [UInt8(v & 0xFF), UInt8(v >> 8)]) }
    func le(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } }

    func regionInfo(_ p: RawPeer, _ index: UInt32) -> (RegionInfo, [OwnedFD])? {
        guard case .message(let m) = p.call(.deviceGetRegionInfo, RegionInfoRequest(argsz: 32, index: index).encoded),
              !m.header.isError, let ri = try? RegionInfo(payload: Array(m.payload)) else { return nil }
        guard ri.argsz > 32 else { return (ri, m.fds) }
        m.closeFDs()
        guard case .message(let f) = p.call(.deviceGetRegionInfo, RegionInfoRequest(argsz: ri.argsz, index: index).encoded),
              !f.header.isError, let full = try? RegionInfo(payload: Array(f.payload)) else { return (ri, []) }
        return (full, f.fds)
    }

    /// The offset of standard capability `id`, if listed.
    func capability(_ cfg: [UInt8], _ id: UInt8) -> Int? {
        ConfigSpaceReport.capabilityList(cfg).first { $0.id == id }?.offset
    }

    func configStructure(_ r: inout Recorder, _ info: DeviceInfo, _ links: Connections) {
        guard let p = links.negotiated(&r, "config.capability-structure") else { return }
        guard let (ci, _) = regionInfo(p, 7), ci.size >= 256, let cfg = readConfig(p, 0, Int(min(ci.size, 4096))) else {
            r.skip("config.capability-structure", "config space unreadable (config.read reports it)", "PCI"); return
        }
        // The standard list: the status bit says whether there is one; every entry is
        // dword-aligned, inside the 256-byte header space, fits its fixed length, and
        // the chain ends.
        var problems: [String] = []
        let hasList = cfg.le16(at: 6) & 0x10 != 0
        if hasList != (cfg[0x34] & 0xFC != 0) {
            problems.append("status capability-list bit \(hasList ? "set" : "clear") but the pointer is 0x\(String(cfg[0x34], radix: 16))")
        }
        if hasList {
            var at = Int(cfg[0x34])
            var seen = Set<Int>()
            while at != 0 && problems.isEmpty {
                if at & 3 != 0 || at < 0x40 || at > 0xFC { problems.append("capability pointer 0x\(String(at, radix: 16)) is outside 0x40-0xFC or not dword-aligned"); break }
                if !seen.insert(at).inserted || seen.count > 48 { problems.append("the list loops at 0x\(String(at, radix: 16))"); break }
                let id = cfg[at]
                let length: Int = switch id {
                case 0x01: 8
                case 0x05: 10
                case 0x10: 0x3C
                case 0x11: 12
                case 0x09: max(Int(cfg[min(at + 2, 255)]), 3)
                default: 2
                }
                if at + length > 256 { problems.append("capability 0x\(String(id, radix: 16)) at 0x\(String(at, radix: 16)) runs past 0xFF") }
                at = Int(cfg[at + 1])
            }
        }
        // The extended list, in a 4 KiB space.
        if cfg.count == 4096 {
            var at = 0x100
            var seen = Set<Int>()
            while problems.isEmpty {
                let h = cfg.le32(at: at)
                if h == 0 && at == 0x100 { break }
                if h == 0xFFFF_FFFF { problems.append("extended capability header at 0x\(String(at, radix: 16)) reads all ones"); break }
                if !seen.insert(at).inserted || seen.count > 512 { problems.append("the extended list loops at 0x\(String(at, radix: 16))"); break }
                let next = Int(h >> 20)
                if next == 0 { break }
                if next & 3 != 0 || next < 0x100 || next > 0xFFC { problems.append("extended next pointer 0x\(String(next, radix: 16)) at 0x\(String(at, radix: 16)) is outside 0x100-0xFFC or not dword-aligned"); break }
                at = next
            }
        }
        let std = ConfigSpaceReport.capabilityList(cfg).map { "0x\(String($0.id, radix: 16))@0x\(String($0.offset, radix: 16))" }
        let ext = ConfigSpaceReport.extendedCapabilityList(cfg).map { "0x\(String($0.id, radix: 16))@0x\(String($0.offset, radix: 16))" }
        r.check(problems.isEmpty, "config.capability-structure",
                problems.isEmpty ? "standard [\(std.joined(separator: " "))], extended [\(ext.joined(separator: " "))]" : problems.joined(separator: "; "),
                "PCI 3.0 §6.7, PCIe §7.6")
        // 4 KiB of config space is PCI Express's; it needs the Express capability.
        let express = capability(cfg, 0x10)
        if cfg.count == 4096 {
            r.check(express != nil, "config.express-capability",
                    express.map { "4 KiB config space with the PCI Express capability at 0x\(String($0, radix: 16))" }
                        ?? "4 KiB config space but no PCI Express capability (ID 0x10) in the list: a conventional PCI device has 256 bytes",
                    "PCIe §7.5.3, §4.1")
        } else {
            r.pass("config.express-capability", "256-byte config space (conventional PCI)" + (express != nil ? " with an Express capability" : ""), "PCIe §7.5.3")
        }
        barSizing(&r, p, cfg)
        sparseAreas(&r, info, p)
    }

    /// BAR and ROM sizing: all ones written, the size read back matches the region's,
    /// and the original value comes back when rewritten. Changes config space, so only
    /// when the checks may (`--disruptive`, or `--server-cmd`).
    func barSizing(_ r: inout Recorder, _ p: RawPeer, _ cfg: [UInt8]) {
        guard mutating else {
            r.skip("config.bar-sizing", "changes BARs: run with --disruptive or --server-cmd", "PCI 3.0 §6.2.5.1"); return
        }
        guard cfg[0x0E] & 0x7F == 0 else { r.skip("config.bar-sizing", "not a type 0 header", "PCI"); return }
        let command = cfg.le16(at: 4)
        write16(p, 4, command & ~0x3)   // no decoding while the BARs hold sizing values
        defer { write16(p, 4, command) }
        var bad: [String] = [], seen: [String] = []
        var i = 0
        while i < 6 {
            let off = 0x10 + 4 * i
            let size = regionInfo(p, UInt32(i)).map { $0.0.size } ?? 0
            let orig = cfg.le32(at: off)
            let io = orig & 1 == 1
            let is64 = !io && (orig >> 1) & 3 == 2
            let origHigh: UInt32 = is64 && i < 5 ? cfg.le32(at: off + 4) : 0
            write32(p, off, 0xFFFF_FFFF)
            if is64 { write32(p, off + 4, 0xFFFF_FFFF) }
            let low = read32(p, off) ?? 0
            let high: UInt32 = is64 ? (read32(p, off + 4) ?? 0) : 0xFFFF_FFFF
            let sized: UInt64
            if is64 {
                let mask = (UInt64(high) << 32) | UInt64(low & ~0xF)
                sized = mask == 0 ? 0 : ~mask &+ 1
            } else {
                // An I/O BAR may decode only 16 address bits (the upper half reads 0).
                var mask = low & (io ? ~0x3 : ~0xF)
                if io && mask != 0 && mask & 0xFFFF_0000 == 0 { mask |= 0xFFFF_0000 }
                sized = mask == 0 ? 0 : UInt64(~mask &+ 1)
            }
            let expected = size == 0 ? 0 : nextPowerOfTwo(size)
            write32(p, off, orig)
            if is64 { write32(p, off + 4, origHigh) }
            let back = read32(p, off) ?? 0, backHigh = is64 ? (read32(p, off + 4) ?? 0) : 0
            if size > 0 || sized > 0 { seen.append("BAR\(i) \(sized)") }
            if sized != expected { bad.append("BAR\(i): sizing reads \(sized) bytes, region \(i) is \(size)") }
            if back != orig || backHigh != origHigh {
                bad.append("BAR\(i): 0x\(String(orig, radix: 16)) written back reads 0x\(String(back, radix: 16))")
            }
            i += is64 ? 2 : 1
        }
        // The expansion ROM.
        let romSize = regionInfo(p, 6).map { $0.0.size } ?? 0
        let romOrig = cfg.le32(at: 0x30)
        write32(p, 0x30, 0xFFFF_F800)
        let rv = (read32(p, 0x30) ?? 0) & 0xFFFF_F800
        let romSized: UInt64 = rv == 0 ? 0 : UInt64((~rv &+ 1) & 0xFFFF_FFFF)
        write32(p, 0x30, romOrig)
        let romBack = read32(p, 0x30) ?? 0
        if romSize > 0 || romSized > 0 { seen.append("ROM \(romSized)") }
        if romSized != (romSize == 0 ? 0 : nextPowerOfTwo(romSize)) { bad.append("ROM: sizing reads \(romSized) bytes, region 6 is \(romSize)") }
        if romBack != romOrig { bad.append("ROM: 0x\(String(romOrig, radix: 16)) written back reads 0x\(String(romBack, radix: 16))") }
        r.check(bad.isEmpty, "config.bar-sizing",
                bad.isEmpty ? "sizes agree with the regions and every BAR reads back as restored: " + (seen.isEmpty ? "no BARs" : seen.joined(separator: ", "))
                    : bad.joined(separator: "; "), "PCI 3.0 §6.2.5.1, §3.4")
    }

    /// Runs `body` with memory and I/O decoding on (a BAR access with them off fails
    /// with EIO, as vfio-pci's does), then restores the command register. nil when
    /// decoding is off and the checks may not change config space.
    func withDecoding<T>(_ p: RawPeer, _ body: () -> T) -> T? {
        guard let command = read16(p, 4) else { return nil }
        if command & 0x3 == 0x3 { return body() }
        guard mutating else { return nil }
        write16(p, 4, command | 0x3)
        defer { write16(p, 4, command) }
        return body()
    }

    func nextPowerOfTwo(_ v: UInt64) -> UInt64 {
        var p: UInt64 = 1
        while p < v && p != 0 { p <<= 1 }
        return p
    }

    /// Sparse-mmap areas (and wholly mmappable regions) read the same through
    /// REGION_READ as through the fd: QEMU reads them by message until it maps them.
    func sparseAreas(_ r: inout Recorder, _ info: DeviceInfo, _ p: RawPeer) {
        guard let (bad, seen) = withDecoding(p, { sparseAreaProblems(info, p) }) else {
            r.skip("region.sparse-mmap-read", "memory decoding is off: run with --disruptive or --server-cmd to turn it on", "§3.4, §4.4"); return
        }
        if seen == 0 && bad.isEmpty {
            r.skip("region.sparse-mmap-read", "no mmappable region", "§3.4, §4.4"); return
        }
        r.check(bad.isEmpty, "region.sparse-mmap-read",
                bad.isEmpty ? "\(seen) mmappable areas read through REGION_READ as through the fd" : bad.joined(separator: "; "), "§3.4, §4.4")
    }

    func sparseAreaProblems(_ info: DeviceInfo, _ p: RawPeer) -> ([String], Int) {
        var bad: [String] = [], seen = 0
        for i in 0..<min(info.numRegions, 9) where i != 7 {
            guard let (ri, fds) = regionInfo(p, i) else { continue }
            defer { fds.forEach { $0.close() } }
            guard ri.flags.contains(.mmap), ri.size > 0 else { continue }
            var areas: [SparseMmapArea] = [SparseMmapArea(offset: 0, size: ri.size)]
            for cap in ri.capabilities { if case .sparseMmap(let a) = cap { areas = a } }
            for a in areas where a.size > 0 {
                guard a.offset &+ a.size <= ri.size, a.offset &+ a.size >= a.offset else {
                    bad.append("region \(i): area at \(a.offset) of \(a.size) bytes runs past the region's \(ri.size)"); continue
                }
                seen += 1
                let n = Int(min(a.size, 256))
                let x = p.call(.regionRead, RegionAccess(offset: a.offset, region: i, count: UInt32(n)).encoded)
                guard case .message(let m) = x, !m.header.isError, let acc = try? RegionAccess(payload: Array(m.payload)), acc.data.count >= n else {
                    bad.append("region \(i): REGION_READ of \(n) bytes at area offset \(a.offset): \(show(x))"); continue
                }
                if let fd = fds.first, let map = try? MemoryMapping(fd: fd.rawValue, offset: ri.offset + a.offset, length: n, writable: false),
                   let mapped = map.read(at: 0, count: n), mapped != Array(acc.data.prefix(n)) {
                    bad.append("region \(i): REGION_READ at \(a.offset) disagrees with the mmapped bytes")
                }
            }
        }
        return (bad, seen)
    }
}
