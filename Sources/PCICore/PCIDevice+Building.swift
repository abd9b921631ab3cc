import VFIOUserProtocol
import VFIOUserTransport

/// How a `PCIDevice` is put together from its configuration, and how config space,
/// the MSI-X table and the interrupt controller are wired to each other.
extension PCIDevice {
    // MARK: - Building

    func buildHeader() {
        let id = configuration.identity
        config.define(offset: 0x00, width: 2, value: UInt64(id.vendor))
        config.define(offset: 0x02, width: 2, value: UInt64(id.device))
        config.define(offset: 0x04, width: 2, value: 0, writable: 0x0547)  // IO, MEM, BME, parity, SERR, INTx disable
        config.define(offset: 0x06, width: 2, value: 0, writeOneToClear: 0xF900)
        config.define(offset: 0x08, width: 1, value: UInt64(id.revision))
        config.define(offset: 0x09, width: 3, value: UInt64(id.classCode))
        config.define(offset: 0x0C, width: 1, value: 0, writable: 0xFF)    // cache line size
        config.define(offset: 0x0D, width: 1, value: 0, writable: configuration.express ? 0 : 0xFF)
        config.define(offset: 0x0E, width: 1, value: 0)                    // type 0, single function
        config.define(offset: 0x2C, width: 2, value: UInt64(id.subsystemVendor))
        config.define(offset: 0x2E, width: 2, value: UInt64(id.subsystem))
        config.define(offset: 0x3C, width: 1, value: 0xFF, writable: 0xFF) // interrupt line: unknown until set
        config.define(offset: 0x3D, width: 1, value: UInt64(configuration.interruptPin))
        if configuration.interruptPin == 0 { config.define(offset: 0x3C, width: 1, value: 0, writable: 0xFF) }
    }

    func buildBARs() throws(ConfigLayoutError) {
        for b in configuration.bars {
            let i = b.index
            let mask64 = ~(b.size &- 1)
            // The register holds what software wrote; reads show address bits & size mask | type flags.
            config.define(offset: 0x10 + 4 * i, width: 4, value: 0, writable: 0xFFFF_FFFF)
            let flags = b.flagBits
            let lowMask = UInt32(truncatingIfNeeded: mask64) & (b.kind == .io ? 0xFFFF_FFFC : 0xFFFF_FFF0)
            config.intercept(dword: 0x10 + 4 * i, .init(read: { stored in (stored & lowMask) | flags }))
            if b.kind == .memory64 {
                let highMask = UInt32(truncatingIfNeeded: mask64 >> 32)
                config.define(offset: 0x14 + 4 * i, width: 4, value: 0, writable: 0xFFFF_FFFF)
                config.intercept(dword: 0x14 + 4 * i, .init(read: { stored in stored & highMask }))
            }
            let backing: RegionBacking
            var mmappable = false
            switch b.backing {
            case .registers:
                let rf = RegisterFile(size: Int(min(b.size, 1 << 20)))
                for r in configuration.registers where r.bar == i {
                    rf.define(offset: Int(r.offset), width: r.width, value: r.value, writeMask: r.writeMask)
                }
                let mux = RegionMux(fallback: rf)
                registerFiles[i] = rf
                barHandlers[i] = mux
                backing = .composite(mux)
            case .ram(let mmap, _):
                let mem: SharedMemory
                do { mem = try SharedMemory(name: "\(configuration.name)-bar\(i)", size: Int(b.size)) } catch {
                    throw ConfigLayoutError(subject: "bars[\(i)]", reason: "cannot allocate \(b.size) bytes of shared memory: \(error)")
                }
                barMemory[i] = mem
                mmappable = mmap
                backing = .memory(mem)
            }
            regions[i] = Region(index: UInt32(i), size: b.size, mmappable: mmappable, backing: backing,
                                decodeGate: b.kind == .io ? .ioSpace : .memorySpace)
        }
    }

    func buildROM() {
        let size = configuration.romSize
        guard size > 0 else { return }
        let mask = UInt32(truncatingIfNeeded: ~(size &- 1)) & 0xFFFF_F800
        config.define(offset: 0x30, width: 4, value: 0, writable: UInt64(mask | 1))
        var image = configuration.romContents
        if image.count < Int(size) { image += [UInt8](repeating: 0, count: Int(size) - image.count) }
        let rom = RegisterFile(size: Int(size))
        for (k, b) in image.prefix(Int(size)).enumerated() { rom.define(offset: k, width: 1, value: UInt64(b), writeMask: 0) }
        regions[Int(RegionIndex.rom.rawValue)] = Region(index: RegionIndex.rom.rawValue, size: size, writable: false, backing: .handler(rom))
    }

    func buildCapabilities() throws(ConfigLayoutError) {
        let c = configuration
        var std: [PCICapability] = []
        if c.powerManagement { std.append(.powerManagement(offset: c.powerManagementOffset)) }
        if let m = c.msi { std.append(.msi(vectors: m.vectors, address64: m.address64, perVectorMask: m.perVectorMask, offset: m.offset)) }
        if let x = c.msix {
            std.append(.msix(vectors: x.vectors, tableBAR: x.tableBAR, tableOffset: x.tableOffset, pbaBAR: x.pbaBAR,
                             pbaOffset: x.pbaOffset, offset: x.offset))
        }
        if c.express { std.append(.express(c.expressParameters, offset: c.expressOffset)) }
        std += c.capabilities
        placedCapabilities = try CapabilityLayout.apply(standard: std, extended: c.extendedCapabilities, to: config)

        if let x = c.msix {
            let table = MSIXTable(vectors: x.vectors)
            msixTable = table
            msixTouched = Array(repeating: false, count: x.vectors)
            let t0 = UInt64(x.tableOffset), p0 = UInt64(x.pbaOffset)
            do {
                try barHandlers[x.tableBAR]?.add(t0..<(t0 + UInt64(table.tableSize)), handler: trackingTable(table))
                try barHandlers[x.pbaBAR]?.add(p0..<(p0 + UInt64(table.pbaSize)), handler: table.pbaHandler)
            } catch {
                throw ConfigLayoutError(subject: "interrupts.msix", reason: "table and PBA overlap each other or another register range")
            }
        }
    }

    /// The MSI-X table handler, remembering which entries a client programmed: an
    /// entry nobody wrote is being delivered by the VMM itself (QEMU emulates the
    /// table and only uses SET_IRQS), so its reset-time mask bit must not block it.
    func trackingTable(_ table: MSIXTable) -> any RegionAccessHandler {
        let inner = table.tableHandler
        return ClosureRegionHandler(
            read: { o, n throws(VFIOErrno) in try inner.read(offset: o, count: n) },
            write: { [unowned self] o, d throws(VFIOErrno) in
                let first = Int(o) / 16, last = (Int(o) + d.count - 1) / 16
                for v in first...last where v < self.msixTouched.count { self.msixTouched[v] = true }
                try inner.write(offset: o, data: d)
            })
    }

    var msixCapOffset: Int? { placedCapabilities.offset(ofStandard: PCICapability.msixID) }
    var msiCapOffset: Int? { placedCapabilities.offset(ofStandard: PCICapability.msiID) }

    var msixConfigEnabled: Bool { msixCapOffset.map { config.load16($0 + 2) & 0x8000 != 0 } ?? false }
    var msiConfigEnabled: Bool { msiCapOffset.map { config.load16($0 + 2) & 0x1 != 0 } ?? false }

    /// Offset of the MSI mask-bits register, if per-vector masking is present.
    var msiMaskOffset: Int? {
        guard let o = msiCapOffset, let m = configuration.msi, m.perVectorMask else { return nil }
        return o + (m.address64 ? 0x10 : 0x0C)
    }

    func wireInterrupts() {
        interrupts.intxDisabled = { [unowned self] in self.config.load16(0x04) & Self.commandINTxDisable != 0 }
        interrupts.raisingAllowed = { [unowned self] in self._migration?.interruptsAllowed ?? true }
        dma.allowed = { [unowned self] in
            if self.config.load16(0x04) & Self.commandBusMaster == 0 { return .EPERM }
            return self._migration?.dmaError
        }
        interrupts.externalMask = { [unowned self] index, v in
            switch index {
            case 1:
                guard let mo = self.msiMaskOffset else { return false }
                return self.config.load32(mo) & (1 << UInt32(v)) != 0
            case 2:
                if let o = self.msixCapOffset, self.config.load16(o + 2) & 0x4000 != 0 { return true }
                guard let t = self.msixTable, v < self.msixTouched.count, self.msixTouched[v] else { return false }
                return t.isVectorMasked(v)
            default:
                return false
            }
        }
        interrupts.pendingChanged = { [unowned self] index, v, p in
            if index == 2 { self.msixTable?.setPending(v, p) }
            if index == 1, let mo = self.msiMaskOffset {
                var bits = self.config.load32(mo + 4)
                if p { bits |= 1 << UInt32(v) } else { bits &= ~(1 << UInt32(v)) }
                self.config.store32(bits, mo + 4)
            }
        }
        msixTable?.onMaskChange = { [unowned self] in self.interrupts.reevaluate() }

        // Command register: INTx Disable; Status: Interrupt Status shows a pending INTx.
        config.intercept(dword: 0x04, .init(
            read: { [unowned self] stored in self.interrupts.intxAsserted ? stored | (0x0008 << 16) : stored },
            write: { [unowned self] old, new, _ in
                if (old ^ new) & UInt32(Self.commandINTxDisable) != 0 || (old ^ new) & UInt32(Self.commandBusMaster) != 0 {
                    self.interrupts.reevaluate()
                }
            }))
        if let o = msiCapOffset {
            config.intercept(dword: o, .init(write: { [unowned self] _, _, _ in
                // Multiple Message Enable never exceeds Multiple Message Capable (vfio clamps it too).
                let ctl = self.config.load16(o + 2)
                let mmc = (ctl >> 1) & 7
                if (ctl >> 4) & 7 > mmc { self.config.store16((ctl & ~0x0070) | mmc << 4, o + 2) }
                self.interrupts.reevaluate()
            }))
            if let mo = msiMaskOffset {
                config.intercept(dword: mo, .init(write: { [unowned self] _, _, _ in self.interrupts.reevaluate() }))
            }
        }
        if let o = msixCapOffset {
            config.intercept(dword: o, .init(write: { [unowned self] _, _, _ in self.interrupts.reevaluate() }))
        }
        if let e = placedCapabilities.offset(ofStandard: PCICapability.expressID) {
            let flr = configuration.expressParameters.functionLevelReset
            config.intercept(dword: e + 8, .init(write: { [unowned self] _, new, lanes in
                guard new & 0x8000 != 0 else { return }
                var v = self.config.load16(e + 8)
                v &= ~0x8000                    // Initiate FLR always reads 0
                self.config.store16(v, e + 8)
                if flr && lanes & 0xFF00 != 0 { self.reset(.functionLevelReset) }
            }))
        }
    }
}
