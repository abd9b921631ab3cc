import VFIOUserProtocol

/// Checks a configuration for things no client could cope with.
enum DeviceBuilder {
    static func validate(_ c: PCIDeviceConfiguration) throws(ConfigLayoutError) {
        var taken = [Bool](repeating: false, count: 6)
        for b in c.bars {
            let f = "bars[\(b.index)]"
            guard (0..<6).contains(b.index) else { throw ConfigLayoutError(subject: f, reason: "index must be 0-5") }
            guard b.size.nonzeroBitCount == 1 else { throw ConfigLayoutError(subject: f, reason: "size \(b.size) is not a power of two") }
            switch b.kind {
            case .io:
                guard (4...256).contains(b.size) else { throw ConfigLayoutError(subject: f, reason: "I/O BAR size must be 4 to 256 bytes") }
                guard b.backing == .registers else { throw ConfigLayoutError(subject: f, reason: "I/O BARs are register-backed") }
                guard !b.prefetchable else { throw ConfigLayoutError(subject: f, reason: "I/O BARs cannot be prefetchable") }
            case .memory32:
                guard b.size >= 16, b.size <= 1 << 31 else { throw ConfigLayoutError(subject: f, reason: "32-bit memory BAR size must be 16 bytes to 2 GiB") }
            case .memory64:
                guard b.size >= 16, b.size <= 1 << 40 else { throw ConfigLayoutError(subject: f, reason: "64-bit memory BAR size must be 16 bytes to 1 TiB") }
                guard b.index < 5 else { throw ConfigLayoutError(subject: f, reason: "a 64-bit BAR needs the next slot; BAR5 cannot be 64-bit") }
            }
            if case .ram = b.backing, b.size > 1 << 32 {
                throw ConfigLayoutError(subject: f, reason: "RAM-backed BARs are limited to 4 GiB")
            }
            let slots = b.kind == .memory64 ? [b.index, b.index + 1] : [b.index]
            for s in slots {
                guard !taken[s] else { throw ConfigLayoutError(subject: f, reason: "overlaps BAR\(s), which is already in use") }
                taken[s] = true
            }
        }
        for r in c.registers {
            let f = "registers[bar \(r.bar) offset 0x\(String(r.offset, radix: 16))]"
            guard let b = c.bars.first(where: { $0.index == r.bar }) else { throw ConfigLayoutError(subject: f, reason: "BAR\(r.bar) does not exist") }
            guard b.backing == .registers else { throw ConfigLayoutError(subject: f, reason: "BAR\(r.bar) is RAM, not registers") }
            guard [1, 2, 4, 8].contains(r.width) else { throw ConfigLayoutError(subject: f, reason: "size must be 1, 2, 4 or 8") }
            guard r.offset + UInt64(r.width) <= min(b.size, 1 << 20) else { throw ConfigLayoutError(subject: f, reason: "lies outside BAR\(r.bar)") }
        }
        guard c.interruptPin <= 4 else { throw ConfigLayoutError(subject: "interrupts.intx", reason: "pin must be none or A-D") }
        if let m = c.msi {
            guard [1, 2, 4, 8, 16, 32].contains(m.vectors) else {
                throw ConfigLayoutError(subject: "interrupts.msi.vectors", reason: "\(m.vectors) is not 1, 2, 4, 8, 16 or 32")
            }
        }
        if let x = c.msix {
            let f = "interrupts.msix"
            guard (1...2048).contains(x.vectors) else { throw ConfigLayoutError(subject: "\(f).vectors", reason: "must be 1-2048") }
            for (name, bar, off, len) in [("table", x.tableBAR, x.tableOffset, x.vectors * 16), ("pba", x.pbaBAR, x.pbaOffset, (x.vectors + 63) / 64 * 8)] {
                guard let b = c.bars.first(where: { $0.index == bar }), b.backing == .registers, b.kind != .io else {
                    throw ConfigLayoutError(subject: "\(f).bar", reason: "the \(name) needs a register-backed memory BAR; BAR\(bar) is not one")
                }
                guard off % 8 == 0 else { throw ConfigLayoutError(subject: "\(f).\(name)Offset", reason: "must be 8-byte aligned") }
                guard UInt64(off) + UInt64(len) <= min(b.size, 1 << 20) else {
                    throw ConfigLayoutError(subject: "\(f).\(name)Offset", reason: "the \(name) (\(len) bytes at 0x\(String(off, radix: 16))) does not fit in BAR\(bar)")
                }
            }
        }
        if c.romSize > 0 {
            guard c.romSize.nonzeroBitCount == 1, c.romSize >= 2048, c.romSize <= 16 << 20 else {
                throw ConfigLayoutError(subject: "rom.size", reason: "must be a power of two from 2 KiB to 16 MiB")
            }
        }
    }
}
