import VFIOUserProtocol
import VFIOUserTransport

/// Why a device is being reset.
public enum ResetReason: String, Sendable {
    /// VFIO_USER_DEVICE_RESET.
    case deviceReset
    /// Initiate Function Level Reset in the PCI Express Device Control register.
    case functionLevelReset
    /// The last client went away.
    case disconnect
}

/// An emulated PCI function: the vfio-pci-core of this project.
///
/// The core owns config space (header, BAR sizing, capability lists and their
/// write policy), the region table, the interrupt controller, the DMA table,
/// reset and the migration state machine. A variant device adds to it only
/// through the public API below: regions, capabilities, config interceptors,
/// interrupts, DMA, reset hooks and a migration handler.
///
/// Thread safety: one recursive `lock` guards everything; every public method
/// takes it, and handlers run with it held.
public final class PCIDevice: @unchecked Sendable {
    public let lock = DeviceLock()
    public let configuration: PCIDeviceConfiguration
    public let config: ConfigSpace
    public let interrupts: InterruptController
    public let dma: DMAController
    public private(set) var placedCapabilities = PlacedCapabilities()
    public private(set) var msixTable: MSIXTable?
    /// Register storage of each register-backed BAR (index → file).
    public private(set) var registerFiles: [Int: RegisterFile] = [:]
    /// The handler table of each register-backed BAR; variants add ranges here.
    public private(set) var barHandlers: [Int: RegionMux] = [:]
    /// Shared memory of each RAM-backed BAR.
    public private(set) var barMemory: [Int: SharedMemory] = [:]
    public private(set) var resetCount = 0
    /// Device-info capabilities (zPCI, AtomicOps), reachable only through our
    /// opt-in protocol extension because the vfio-user GET_INFO reply has no cap_offset.
    public var deviceInfoCapabilities: [DeviceInfoCapability] {
        get { lock.withLock { _deviceInfoCapabilities } }
        set { lock.withLock { _deviceInfoCapabilities = newValue } }
    }
    /// Migration support, when the device offers it.
    public var migration: MigrationController? {
        get { lock.withLock { _migration } }
        set { lock.withLock { _migration = newValue } }
    }

    private var _deviceInfoCapabilities: [DeviceInfoCapability] = []
    private var _migration: MigrationController?
    private var regions: [Region?]
    private var resetHooks: [@Sendable (ResetReason) -> Void] = []
    private var sessions: Set<SessionID> = []
    private var nextSession: SessionID = 1
    // Internal (not private) so the migration stream can save and restore it (MigrationController.swift).
    var msixTouched: [Bool] = []

    public static let commandIO: UInt16 = 0x0001
    public static let commandMemory: UInt16 = 0x0002
    public static let commandBusMaster: UInt16 = 0x0004
    public static let commandINTxDisable: UInt16 = 0x0400

    public init(configuration c: PCIDeviceConfiguration) throws(ConfigLayoutError) {
        configuration = c
        config = ConfigSpace(size: c.express ? 4096 : 256)
        dma = DMAController(lock: lock)
        interrupts = InterruptController(
            lock: lock, intx: c.interruptPin != 0 ? 1 : 0, msi: c.msi?.vectors ?? 0, msix: c.msix?.vectors ?? 0,
            err: (c.express || c.errInterrupt) ? 1 : 0, req: c.reqInterrupt ? 1 : 0)
        regions = Array(repeating: nil, count: RegionIndex.standardCount)
        try DeviceBuilder.validate(c)
        buildHeader()
        try buildBARs()
        buildROM()
        try buildCapabilities()
        regions[Int(RegionIndex.config.rawValue)] = Region(
            index: RegionIndex.config.rawValue, size: UInt64(config.size),
            backing: .handler(ClosureRegionHandler(
                read: { [unowned self] o, n throws(VFIOErrno) in try self.config.read(offset: o, count: n) },
                write: { [unowned self] o, d throws(VFIOErrno) in try self.config.write(offset: o, data: d) })))
        wireInterrupts()
        config.sealPowerOnState()
    }

    // MARK: - Public API for variants

    /// Adds a device-specific region (index 9 and up) and returns its index. It must
    /// carry a type/subtype, as vfio requires.
    @discardableResult
    public func addDeviceSpecificRegion(size: UInt64, type: UInt32, subtype: UInt32, readable: Bool = true,
                                        writable: Bool = false, mmappable: Bool = false,
                                        sparseAreas: [SparseMmapArea] = [], extraCapabilities: [RegionCapability] = [],
                                        backing: RegionBacking) -> UInt32 {
        lock.withLock {
            let index = UInt32(regions.count)
            regions.append(Region(index: index, size: size, readable: readable, writable: writable, mmappable: mmappable,
                                  sparseAreas: sparseAreas, type: (type, subtype), extraCapabilities: extraCapabilities,
                                  backing: backing))
            return index
        }
    }

    /// Replaces or adjusts a region (e.g. to add capabilities to a BAR).
    public func updateRegion(_ index: UInt32, _ body: (inout Region) -> Void) {
        lock.withLock {
            guard Int(index) < regions.count, var r = regions[Int(index)] else { return }
            body(&r)
            regions[Int(index)] = r
        }
    }

    public func region(_ index: UInt32) -> Region? {
        lock.withLock { Int(index) < regions.count ? regions[Int(index)] : nil }
    }

    public var regionCount: Int { lock.withLock { regions.count } }

    /// Serves `range` of a register-backed BAR with `handler`.
    public func mapRegisters(bar: Int, range: Range<UInt64>, handler: any RegionAccessHandler) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            guard let mux = barHandlers[bar] else { throw .EINVAL }
            guard let size = regions[bar]?.size, range.upperBound <= size else { throw .EINVAL }
            try mux.add(range, handler: handler)
        }
    }

    /// Intercepts a config-space dword (for registers a variant virtualizes, like IGD's ASLS).
    /// The dword is made writable with `writeMask` so the write reaches the stored bytes.
    public func interceptConfig(dword offset: Int, value: UInt32? = nil, writeMask: UInt32 = 0, hook: ConfigSpace.Hook) {
        lock.withLock {
            if let value { config.define(offset: offset & ~3, width: 4, value: UInt64(value), writable: UInt64(writeMask)) }
            config.intercept(dword: offset, hook)
            config.sealPowerOnState()
        }
    }

    /// Runs `body` on every reset, after the core has restored its own state.
    public func onReset(_ body: @escaping @Sendable (ResetReason) -> Void) {
        lock.withLock { resetHooks.append(body) }
    }

    /// Raises an interrupt: MSI-X if the client enabled it, else MSI, else INTx.
    /// Returns which index was used, or nil if the device has no usable interrupt.
    @discardableResult
    public func raiseInterrupt(vector: Int = 0) -> IRQIndex? {
        lock.withLock {
            if interrupts.indices[2].count > vector, interrupts.isEnabled(.msix) || msixConfigEnabled {
                interrupts.trigger(.msix, vector: vector); return .msix
            }
            if interrupts.indices[1].count > vector, interrupts.isEnabled(.msi) || msiConfigEnabled {
                interrupts.trigger(.msi, vector: vector); return .msi
            }
            if interrupts.indices[0].count > 0 { interrupts.assertINTx(); return .intx }
            return nil
        }
    }

    public func deassertINTx() { lock.withLock { interrupts.deassertINTx() } }

    /// Device-initiated DMA read of client memory (EFAULT outside mappings, EPERM
    /// without Bus Master Enable).
    public func dmaRead(address: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        try lock.withLock { () throws(VFIOErrno) in try dma.read(address: address, count: count) }
    }

    public func dmaWrite<C: Collection>(address: UInt64, _ data: C) throws(VFIOErrno) where C.Element == UInt8 {
        try lock.withLock { () throws(VFIOErrno) in try dma.write(address: address, data) }
    }

    public var command: UInt16 { lock.withLock { config.load16(0x04) } }
    public var busMasterEnabled: Bool { command & Self.commandBusMaster != 0 }

    // MARK: - What the dispatcher calls

    public func openSession() -> SessionID {
        lock.withLock {
            let id = nextSession
            nextSession += 1
            sessions.insert(id)
            return id
        }
    }

    /// Drops what the session registered; the last one to leave resets the device.
    public func closeSession(_ id: SessionID) {
        lock.withLock {
            dma.removeAll(owner: id)
            interrupts.removeAll(owner: id)
            sessions.remove(id)
            if sessions.isEmpty {
                dma.stopLogging()
                reset(.disconnect)
            }
        }
    }

    public func deviceInfo() -> DeviceInfo {
        lock.withLock {
            var flags: DeviceInfoFlags = [.pci]
            if configuration.resetSupported { flags.insert(.reset) }
            return DeviceInfo(argsz: 16, flags: flags, numRegions: UInt32(regions.count), numIRQs: 5)
        }
    }

    /// Region info (without argsz handling) and the fd to send, if mmap-able.
    public func regionInfo(index: UInt32) throws(VFIOErrno) -> (info: RegionInfo, fd: Int32?) {
        try lock.withLock { () throws(VFIOErrno) in
            guard Int(index) < regions.count else { throw .EINVAL }
            // A zero-sized device-specific region still reports its capabilities (the
            // kernel registers NVLink2's ATSD region with size 0 for its SSATGT/LNKSPD).
            guard let r = regions[Int(index)], r.size > 0 || (r.type != nil && !r.extraCapabilities.isEmpty) else {
                return (RegionInfo(argsz: 32, flags: [], index: index, capOffset: 0, size: 0, offset: 0, capabilities: []), nil)
            }
            return (RegionInfo(argsz: 32, flags: r.infoFlags, index: index, capOffset: 0, size: r.size, offset: 0,
                               capabilities: r.capabilities), r.mmapFD)
        }
    }

    public func irqInfo(index: UInt32) throws(VFIOErrno) -> IRQInfo {
        try lock.withLock { () throws(VFIOErrno) in try interrupts.info(index: index) }
    }

    public func setIRQs(_ req: SetIRQs, fds: [OwnedFD], session: SessionID) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in try interrupts.setIRQs(req, fds: fds, session: session) }
    }

    private func accessibleRegion(_ index: UInt32, _ offset: UInt64, _ count: Int) throws(VFIOErrno) -> Region {
        guard Int(index) < regions.count, let r = regions[Int(index)], r.size > 0 else { throw .EINVAL }
        guard count >= 0, offset <= r.size, UInt64(count) <= r.size - offset else { throw .EINVAL }
        switch r.decodeGate {
        case .none: break
        case .memorySpace: guard config.load16(0x04) & Self.commandMemory != 0 else { throw .EIO }
        case .ioSpace: guard config.load16(0x04) & Self.commandIO != 0 else { throw .EIO }
        }
        if let e = _migration?.regionAccessError(region: index) { throw e }
        return r
    }

    public func readRegion(index: UInt32, offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        try lock.withLock { () throws(VFIOErrno) in
            let r = try accessibleRegion(index, offset, count)
            guard r.readable else { throw .EINVAL }
            if count == 0 { return [] }
            return try r.read(offset: offset, count: count)
        }
    }

    public func writeRegion(index: UInt32, offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            let r = try accessibleRegion(index, offset, data.count)
            guard r.writable else { throw .EINVAL }
            if data.isEmpty { return }
            try r.write(offset: offset, data: data)
        }
    }

    public func dmaMap(_ req: DMAMapRequest, fd: OwnedFD?, session: SessionID,
                       transport: (any DMAMessageTransport)?) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in try dma.map(req, fd: fd, owner: session, transport: transport) }
    }

    /// DMA_UNMAP on behalf of `session`: it removes only that client's mappings.
    public func dmaUnmap(_ req: DMAUnmapRequest, session: SessionID? = nil) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            if req.flags.contains(.all) {
                guard req.address == 0, req.size == 0, !req.flags.contains(.getDirtyBitmap) else { throw .EINVAL }
                dma.unmapAll(owner: session)
            } else {
                guard req.flags.isEmpty else { throw .EINVAL }
                try dma.unmap(address: req.address, size: req.size, owner: session)
            }
        }
    }

    /// Returns the function to its power-on state: config registers, interrupt
    /// state (eventfd wiring survives), registers, MSI-X table; RAM BARs keep their
    /// contents unless the spec says otherwise; DMA mappings belong to the client
    /// and survive; device models stop through their reset hooks.
    public func reset(_ reason: ResetReason) {
        lock.withLock {
            config.reset()
            interrupts.resetState()
            msixTable?.reset()
            msixTouched = msixTouched.map { _ in false }
            for rf in registerFiles.values { rf.reset() }
            for b in configuration.bars {
                if case .ram(_, let keep) = b.backing, !keep { barMemory[b.index]?.clear() }
            }
            _migration?.deviceWasReset()
            resetCount += 1
            for h in resetHooks { h(reason) }
        }
    }

    // MARK: - Building

    private func buildHeader() {
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

    private func buildBARs() throws(ConfigLayoutError) {
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

    private func buildROM() {
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

    private func buildCapabilities() throws(ConfigLayoutError) {
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
    private func trackingTable(_ table: MSIXTable) -> any RegionAccessHandler {
        let inner = table.tableHandler
        return ClosureRegionHandler(
            read: { o, n throws(VFIOErrno) in try inner.read(offset: o, count: n) },
            write: { [unowned self] o, d throws(VFIOErrno) in
                let first = Int(o) / 16, last = (Int(o) + d.count - 1) / 16
                for v in first...last where v < self.msixTouched.count { self.msixTouched[v] = true }
                try inner.write(offset: o, data: d)
            })
    }

    private var msixCapOffset: Int? { placedCapabilities.offset(ofStandard: PCICapability.msixID) }
    private var msiCapOffset: Int? { placedCapabilities.offset(ofStandard: PCICapability.msiID) }

    private var msixConfigEnabled: Bool { msixCapOffset.map { config.load16($0 + 2) & 0x8000 != 0 } ?? false }
    private var msiConfigEnabled: Bool { msiCapOffset.map { config.load16($0 + 2) & 0x1 != 0 } ?? false }

    /// Offset of the MSI mask-bits register, if per-vector masking is present.
    private var msiMaskOffset: Int? {
        guard let o = msiCapOffset, let m = configuration.msi, m.perVectorMask else { return nil }
        return o + (m.address64 ? 0x10 : 0x0C)
    }

    private func wireInterrupts() {
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
