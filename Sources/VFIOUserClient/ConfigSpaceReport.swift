import VFIOUserProtocol

/// Renders a function's config space the way lspci does, from the bytes alone:
/// used by `vfu inspect` and by conformance checks on any server.
public enum ConfigSpaceReport {
    /// `lspci -xxxx` format: a device line, then 16 bytes per line.
    public static func dump(_ cfg: [UInt8], address: String = "00:00.0") -> String {
        let id = cfg.count >= 4 ? "\(hex(cfg.le16(at: 0), 4)):\(hex(cfg.le16(at: 2), 4))" : "?"
        var out = "\(address) Device \(id)\n"
        for line in stride(from: 0, to: cfg.count, by: 16) {
            out += hex(UInt16(line), 2 + (line >= 256 ? 1 : 0)) + ":"
            for b in cfg[line..<min(line + 16, cfg.count)] { out += " " + hex(UInt16(b), 2) }
            out += "\n"
        }
        return out
    }

    static func hex<T: BinaryInteger>(_ v: T, _ width: Int) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }

    /// Standard capabilities as (id, offset), following the list from 0x34 with loop protection.
    public static func capabilityList(_ cfg: [UInt8]) -> [(id: UInt8, offset: Int)] {
        guard cfg.count >= 64, cfg.le16(at: 6) & 0x10 != 0 else { return [] }
        var out: [(UInt8, Int)] = []
        var p = Int(cfg[0x34] & 0xFC)
        var seen = Set<Int>()
        while p >= 0x40, p + 2 <= min(cfg.count, 256), !seen.contains(p) {
            seen.insert(p)
            out.append((cfg[p], p))
            p = Int(cfg[p + 1] & 0xFC)
        }
        return out
    }

    /// Extended capabilities as (id, version, offset).
    public static func extendedCapabilityList(_ cfg: [UInt8]) -> [(id: UInt16, version: UInt8, offset: Int)] {
        guard cfg.count >= 0x104 else { return [] }
        var out: [(UInt16, UInt8, Int)] = []
        var p = 0x100
        var seen = Set<Int>()
        while p >= 0x100, p + 4 <= cfg.count, !seen.contains(p) {
            seen.insert(p)
            let h = cfg.le32(at: p)
            if h == 0 { break }
            out.append((UInt16(h & 0xFFFF), UInt8((h >> 16) & 0xF), p))
            p = Int(h >> 20) & 0xFFC
        }
        return out
    }

    static let capNames: [UInt8: String] = [0x01: "Power Management", 0x05: "MSI", 0x09: "Vendor Specific", 0x10: "Express",
                                            0x11: "MSI-X", 0x13: "Advanced Features"]
    static let extNames: [UInt16: String] = [0x01: "Advanced Error Reporting", 0x03: "Device Serial Number",
                                             0x0B: "Vendor Specific", 0x1B: "PASID", 0x23: "Designated Vendor-Specific"]

    /// A register that may lie past the end of what the server gave us: 0 then. The
    /// report describes any server's bytes, so nothing in them may trap.
    static func read32(_ cfg: [UInt8], _ at: Int) -> UInt32 { at >= 0 && at + 4 <= cfg.count ? cfg.le32(at: at) : 0 }

    /// An `lspci -vv`-like description of config space `cfg` and the device's `regions`; never traps on short or odd bytes.
    public static func describe(_ cfg: [UInt8], regions: [(UInt32, RegionInfo)]) -> String {
        guard cfg.count >= 64 else { return "config space too short (\(cfg.count) bytes)" }
        var o: [String] = []
        let cls = UInt32(cfg[0x0B]) << 16 | UInt32(cfg[0x0A]) << 8 | UInt32(cfg[0x09])
        o.append("00:00.0 Class \(hex(cls, 6)): Vendor \(hex(cfg.le16(at: 0), 4)) Device \(hex(cfg.le16(at: 2), 4)) (rev \(hex(UInt16(cfg[8]), 2)))")
        o.append("\tSubsystem: \(hex(cfg.le16(at: 0x2C), 4)):\(hex(cfg.le16(at: 0x2E), 4))")
        let cmd = cfg.le16(at: 4), sta = cfg.le16(at: 6)
        func pm(_ b: Bool) -> String { b ? "+" : "-" }
        o.append("\tControl: I/O\(pm(cmd & 1 != 0)) Mem\(pm(cmd & 2 != 0)) BusMaster\(pm(cmd & 4 != 0)) DisINTx\(pm(cmd & 0x400 != 0))")
        o.append("\tStatus: Cap\(pm(sta & 0x10 != 0)) INTx\(pm(sta & 0x8 != 0))")
        if cfg[0x3D] != 0 {
            let pin = (1...4).contains(cfg[0x3D]) ? String(Character(UnicodeScalar(64 + cfg[0x3D]))) : "?\(cfg[0x3D])"
            o.append("\tInterrupt: pin \(pin) routed to IRQ \(cfg[0x3C])")
        }
        var i = 0
        while i < 6 {
            let bar = cfg.le32(at: 0x10 + 4 * i)
            let size = regions.first { $0.0 == UInt32(i) }?.1
            if let size, size.size > 0 {
                let io = bar & 1 != 0
                let is64 = !io && bar & 0x6 == 0x4
                var desc = io ? "I/O ports" : "Memory (\(is64 ? "64" : "32")-bit, \(bar & 8 != 0 ? "prefetchable" : "non-prefetchable"))"
                desc += " [size=\(sizeString(size.size))]"
                if size.flags.contains(.mmap) { desc += " mmap" }
                o.append("\tRegion \(i): \(desc)")
                if is64 { i += 1 }
            }
            i += 1
        }
        if let rom = regions.first(where: { $0.0 == 6 })?.1, rom.size > 0 {
            o.append("\tExpansion ROM: [size=\(sizeString(rom.size))]")
        }
        for (id, off) in capabilityList(cfg) {
            var line = "\tCapabilities: [\(hex(UInt16(off), 2))] \(capNames[id] ?? "capability 0x\(hex(UInt16(id), 2))")"
            let ctl = off + 3 < cfg.count ? cfg.le16(at: off + 2) : 0
            switch id {
            case 0x05:
                line += ": Enable\(pm(ctl & 1 != 0)) Count=\(1 << ((ctl >> 4) & 7))/\(1 << ((ctl >> 1) & 7)) Maskable\(pm(ctl & 0x100 != 0)) 64bit\(pm(ctl & 0x80 != 0))"
            case 0x11:
                line += ": Enable\(pm(ctl & 0x8000 != 0)) Count=\(Int(ctl & 0x7FF) + 1) Masked\(pm(ctl & 0x4000 != 0))"
                let t = read32(cfg, off + 4), p = read32(cfg, off + 8)
                line += "\n\t\tVector table: BAR=\(t & 7) offset=\(hex(t & ~7, 8))\n\t\tPBA: BAR=\(p & 7) offset=\(hex(p & ~7, 8))"
            case 0x10:
                let type = (ctl >> 4) & 0xF
                line += " (v\(ctl & 0xF)) \(type == 0 ? "Endpoint" : "type \(type)")"
                let devcap = read32(cfg, off + 4), devcap2 = read32(cfg, off + 0x24)
                line += "\n\t\tDevCap: FLReset\(pm(devcap & (1 << 28) != 0))"
                line += "\n\t\tDevCap2: AtomicOpsCap: Routing\(pm(devcap2 & 0x40 != 0)) 32bit\(pm(devcap2 & 0x80 != 0)) 64bit\(pm(devcap2 & 0x100 != 0)) 128bitCAS\(pm(devcap2 & 0x200 != 0))"
            case 0x01:
                line += " version \(ctl & 7)"
            case 0x09:
                line += " Len=\(hex(UInt16(cfg[off + 2]), 2))"
            default: break
            }
            o.append(line)
        }
        for (id, v, off) in extendedCapabilityList(cfg) {
            var line = "\tCapabilities: [\(hex(UInt16(off), 3)) v\(v)] \(extNames[id] ?? "extended capability 0x\(hex(id, 4))")"
            if id == 0x03, off + 12 <= cfg.count {
                let serial = cfg.le64(at: off + 4)
                line += " " + stride(from: 56, through: 0, by: -8).map { hex(UInt16((serial >> UInt64($0)) & 0xFF), 2) }.joined(separator: "-")
            }
            if id == 0x23, off + 10 <= cfg.count {
                line += ": Vendor=\(hex(cfg.le16(at: off + 4), 4)) ID=\(hex(cfg.le16(at: off + 8), 4)) Rev=\((cfg.le32(at: off + 4) >> 16) & 0xF) Len=\(cfg.le32(at: off + 4) >> 20)"
            }
            o.append(line)
        }
        for (i, r) in regions where i >= 9 && r.size > 0 {
            var line = "\tDevice-specific region \(i): size=\(sizeString(r.size)) flags="
            line += [r.flags.contains(.read) ? "R" : "", r.flags.contains(.write) ? "W" : "", r.flags.contains(.mmap) ? "M" : ""].joined()
            for c in r.capabilities {
                switch c {
                case .type(let t, let s): line += " type=0x\(hex(t, 8)) subtype=\(s)"
                case .sparseMmap(let a): line += " sparse-mmap=\(a.map { "[\(hex($0.offset, 1))+\(hex($0.size, 1))]" }.joined(separator: ","))"
                case .nvlink2SSATGT(let t): line += " ssatgt=0x\(hex(t, 1))"
                case .nvlink2LinkSpeed(let s): line += " link-speed=\(s)"
                case .msixMappable: line += " msix-mappable"
                case .unknown(let id, _, _): line += " cap \(id)"
                }
            }
            o.append(line)
        }
        return o.joined(separator: "\n")
    }

    /// `s` in the largest unit that divides it exactly: `4K`, `16M`, `1G`, or bytes.
    public static func sizeString(_ s: UInt64) -> String {
        if s >= 1 << 30, s % (1 << 30) == 0 { return "\(s >> 30)G" }
        if s >= 1 << 20, s % (1 << 20) == 0 { return "\(s >> 20)M" }
        if s >= 1 << 10, s % (1 << 10) == 0 { return "\(s >> 10)K" }
        return "\(s)"
    }
}
