import VFIOUserProtocol
import VFIOUserTransport

/// Why a device is being reset.
public enum ResetReason: String, Sendable {
    /// VFIO_USER_DEVICE_RESET.
    case deviceReset
    /// Initiate Function Level Reset in the PCI Express Device Control register.
    case functionLevelReset
    /// The client that owned the device went away.
    case disconnect
}

/// An emulated PCI function: the vfio-pci-core of this project.
///
/// The core owns config space (header, BAR sizing, capability lists and their
/// write policy), the region table, the interrupt controller, the DMA table,
/// reset and the migration state machine. It has two contracts
/// (docs/architecture.md, "What the core owns and what a variant may touch"):
///
/// - the variant API, plain `public`: regions, register ranges, config intercepts
///   and hardware-set config bits, capability placement, interrupts, DMA and work
///   through ``submitWork(_:)``, reset hooks and the migration handler;
/// - the server's entry points, `@_spi(Server)`: sessions, region access, SET_IRQS,
///   DMA mapping, dirty logging, reset, and the parts behind them (`config`,
///   `interrupts`, `dma`). Only the server, the control plane and tests import them.
///
/// Thread safety: one recursive ``lock`` guards everything. Every method of the
/// device takes it; handlers, hooks and the parts behind the device run with it held.
public final class PCIDevice: @unchecked Sendable {
    // @unchecked: every mutable field is guarded by `lock` (each method takes it);
    // the `let` parts are classes with the same rule.

    /// The lock that guards the whole device, the variant's state included
    /// (``DeviceGuarded``). Take it only in code outside a handler.
    public let lock = DeviceLock()
    /// What the device was built from (identity, BARs, interrupts, capabilities).
    public let configuration: PCIDeviceConfiguration
    /// Config space with its write policy: the core's own, behind the lock.
    @_spi(Server) public let config: ConfigSpace
    /// Interrupt state and delivery: the core's own, behind the lock.
    @_spi(Server) public let interrupts: InterruptController
    /// The DMA table and device DMA: the core's own, behind the lock.
    @_spi(Server) public let dma: DMAController
    /// Where the work device models start from register accesses runs (see
    /// ``DeviceWorkQueue``): after the access completed, never holding back a reply.
    public let work: DeviceWorkQueue
    /// Where each capability landed in config space, with its length.
    public internal(set) var placedCapabilities = PlacedCapabilities()
    /// The MSI-X table, when the device has MSI-X.
    @_spi(Server) public internal(set) var msixTable: MSIXTable?
    /// Register storage of each register-backed BAR (index → file): the control plane's raw pokes.
    @_spi(Server) public internal(set) var registerFiles: [Int: RegisterFile] = [:]
    /// The handler table of each register-backed BAR (variants add ranges with ``mapRegisters(bar:range:handler:)``).
    @_spi(Server) public internal(set) var barHandlers: [Int: RegionMux] = [:]
    /// Shared memory of each RAM-backed BAR (variants use ``memory(ofBAR:)``).
    @_spi(Server) public internal(set) var barMemory: [Int: SharedMemory] = [:]
    /// How many resets the device has been through.
    public var resetCount: Int { lock.withLock { _resetCount } }
    private var _resetCount = 0
    /// Device-info capabilities (zPCI, AtomicOps), reachable only through our
    /// opt-in protocol extension because the vfio-user GET_INFO reply has no cap_offset.
    public var deviceInfoCapabilities: [DeviceInfoCapability] {
        get { lock.withLock { _deviceInfoCapabilities } }
        set { lock.withLock { _deviceInfoCapabilities = newValue } }
    }
    /// Migration support, when the device offers it: a variant attaches a
    /// ``MigrationController`` with its ``MigrationHandler`` once, while building.
    public var migration: MigrationController? {
        get { lock.withLock { _migration } }
        set {
            lock.withLock {
                // Interrupts that became deliverable while the device could not raise
                // them (a client unmask in STOP) go out when it may run again.
                newValue?.mayRunAgain = { [unowned self] in self.interrupts.reevaluate() }
                _migration = newValue
            }
        }
    }

    private var _deviceInfoCapabilities: [DeviceInfoCapability] = []
    // The hot path reads these under the device lock (their guard) on every access;
    // unchecked, they skip the runtime's dynamic exclusivity bookkeeping (~80
    // instructions an access, issue #14). Every access holds the device lock.
    @exclusivity(unchecked) var _migration: MigrationController?
    @exclusivity(unchecked) var regions: [Region?] { didSet { rebuildRoutes() } }
    /// `regions` as the access hot path reads it (RegionRoute.swift).
    @exclusivity(unchecked) private var routes: [RegionRoute?] = []
    private var resetHooks: [@Sendable (ResetReason) -> Void] = []
    private var sessions: Set<SessionID> = []
    private var _owner: SessionID?
    private var nextSession: SessionID = 1
    // Internal (not private) so the migration stream can save and restore it (MigrationController.swift).
    var msixTouched: [Bool] = []

    /// Command register: I/O Space Enable (I/O BARs decode).
    public static let commandIO: UInt16 = 0x0001
    /// Command register: Memory Space Enable (memory BARs decode).
    public static let commandMemory: UInt16 = 0x0002
    /// Command register: Bus Master Enable (device DMA is allowed).
    public static let commandBusMaster: UInt16 = 0x0004
    /// Command register: Interrupt Disable (INTx is held back).
    public static let commandINTxDisable: UInt16 = 0x0400

    /// Builds the function `c` describes, or says why it cannot exist (BAR overlap
    /// and sizes, register placement, MSI-X table/PBA fit, capability layout).
    public init(configuration c: PCIDeviceConfiguration) throws(ConfigLayoutError) {
        configuration = c
        config = ConfigSpace(size: c.express ? 4096 : 256)
        dma = DMAController(lock: lock)
        work = DeviceWorkQueue(name: "vfu-dev-\(c.name.prefix(6))")
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
            backing: .handler(ConfigRegionHandler(config)))
        wireInterrupts()
        config.sealPowerOnState()
        rebuildRoutes()
        work.device = self
    }

    private func rebuildRoutes() { routes = regions.map { $0.map(RegionRoute.init) } }

    deinit { work.stop() }

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

    /// Region `index` as it stands (a copy), or nil if there is none.
    public func region(_ index: UInt32) -> Region? {
        lock.withLock { Int(index) < regions.count ? regions[Int(index)] : nil }
    }

    /// How many regions the device reports (the standard nine plus device-specific ones).
    public var regionCount: Int { lock.withLock { regions.count } }

    /// The shared memory behind RAM-backed BAR `bar` (what clients mmap), or nil
    /// when the BAR is not RAM. The model owns its contents; the core clears it on
    /// reset unless the BAR preserves it.
    public func memory(ofBAR bar: Int) -> SharedMemory? { lock.withLock { barMemory[bar] } }

    /// Serves `range` of a register-backed BAR with `handler` (offsets relative to the
    /// range). EINVAL if the BAR is not register-backed or the range leaves it;
    /// EEXIST if it overlaps another range or the MSI-X table/PBA.
    public func mapRegisters(bar: Int, range: Range<UInt64>, handler: any RegionAccessHandler) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            guard let mux = barHandlers[bar] else { throw .EINVAL }
            guard let size = regions[bar]?.size, range.upperBound <= size else { throw .EINVAL }
            try mux.add(range, handler: handler)
        }
    }

    /// Intercepts a config-space dword (for registers a variant virtualizes, like IGD's ASLS).
    /// With `value`, the dword gets that power-on value and `writeMask` says which bits
    /// a client may change; the hook's `read` transforms what the client sees and its
    /// `write` runs after the write policy updated the stored bytes. Resets restore
    /// the new definition.
    public func interceptConfig(dword offset: Int, value: UInt32? = nil, writeMask: UInt32 = 0, hook: ConfigSpace.Hook) {
        lock.withLock {
            if let value { config.define(offset: offset & ~3, width: 4, value: UInt64(value), writable: UInt64(writeMask)) }
            config.intercept(dword: offset, hook)
            config.sealPowerOnState()
        }
    }

    /// The stored config dword at `offset` (rounded down to 4), as the device model
    /// sees it: no read hooks, so computed registers (BARs, Interrupt Status) show
    /// what was stored, not what a client reads.
    public func configDword(_ offset: Int) -> UInt32 {
        lock.withLock { config.load32(offset & ~3) }
    }

    /// Sets config bits the way hardware does, past the write policy and without
    /// running hooks: a Status error bit, a capability field the model updates, a
    /// register the variant clears on reset. Only the bits in `mask` of the dword at
    /// `offset` (rounded down to 4) change. Not a power-on value: a reset restores
    /// what the device was built with.
    public func setConfigBits(dword offset: Int, _ value: UInt32, mask: UInt32 = 0xFFFF_FFFF) {
        lock.withLock {
            let d = offset & ~3
            config.store32((config.load32(d) & ~mask) | (value & mask), d)
        }
    }

    /// Runs `body` on every reset, after the core has restored its own state.
    public func onReset(_ body: @escaping @Sendable (ResetReason) -> Void) {
        lock.withLock { resetHooks.append(body) }
    }

    /// Queues `body` on the device's work thread: the model's side of a register
    /// access (DMA, then the completion interrupt) runs there, after the access has
    /// been answered. A reset before it runs, or while it waits on a client, cancels
    /// it (see ``DeviceJob``). Returns false once the device is shut down.
    @discardableResult
    public func submitWork(_ body: @escaping @Sendable (DeviceJob) -> Void) -> Bool {
        let g = lock.withLock { dma.resetGeneration }
        return work.submit(generation: g, body)
    }

    /// Runs what is queued and stops the work thread; later submissions are refused
    /// (call it when the device is retired, before dropping it).
    public func stopWork() { work.stop() }

    /// How many resets the device has been through (a job's generation).
    public var resetGeneration: UInt64 { lock.withLock { dma.resetGeneration } }

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

    /// Raises vector `vector` of `index` whatever the guest enabled: a specific MSI or
    /// MSI-X vector, ERR or REQ, or (for INTx) asserts the line. Masking, pending bits
    /// and delivery follow the core's rules (docs/pci-core.md); an index or vector the
    /// device lacks is ignored.
    public func triggerInterrupt(_ index: IRQIndex, vector: Int = 0) {
        lock.withLock { interrupts.trigger(index, vector: vector) }
    }

    /// Lowers the INTx line that ``raiseInterrupt(vector:)`` asserted (the model's
    /// interrupt source was acknowledged).
    public func deassertINTx() { lock.withLock { interrupts.deassertINTx() } }

    /// Device-initiated DMA read of client memory (EFAULT outside mappings, EPERM
    /// without Bus Master Enable). Device models use ``DeviceJob/dmaRead(address:count:)``
    /// from a submitted job instead: called from a region handler, DMA served by
    /// messages would hold back the reply the client waits for.
    public func dmaRead(address: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        try lock.withLock { () throws(VFIOErrno) -> [UInt8] in try dma.read(address: address, count: count) }
    }

    /// Device-initiated DMA write of client memory, dirty-logged while the client
    /// logs (same errors as ``dmaRead(address:count:)``). Device models use
    /// ``DeviceJob/dmaWrite(address:_:)`` from a submitted job instead.
    public func dmaWrite<C: Collection>(address: UInt64, _ data: C) throws(VFIOErrno) where C.Element == UInt8 {
        try lock.withLock { () throws(VFIOErrno) in try dma.write(address: address, data) }
    }

    /// The control plane's probe (docs/control.md), nil unless one is attached.
    @_spi(Server) public var probe: (any DeviceProbe)? {
        get { lock.withLock { dma.probe } }
        set { lock.withLock { dma.probe = newValue; interrupts.probe = newValue } }
    }

    /// The Command register as the guest set it (see the `command*` bits).
    public var command: UInt16 { lock.withLock { config.load16(0x04) } }
    /// Whether the guest allows device DMA (Bus Master Enable).
    public var busMasterEnabled: Bool { command & Self.commandBusMaster != 0 }

    // MARK: - The server's entry points (SPI)
    //
    // What the dispatcher calls on a client's behalf: sessions and ownership, info,
    // interrupt wiring, region access, DMA mapping and reset. Marked `@_spi(Server)`:
    // the server (and tools acting as one) import them with `@_spi(Server) import
    // PCICore`; a variant never sees them, so it cannot act as a client of its own device.

    /// A new session for a client connection (its eventfds and DMA mappings are
    /// dropped with ``closeSession(_:)``).
    @_spi(Server) public func openSession() -> SessionID {
        lock.withLock {
            let id = nextSession
            nextSession += 1
            sessions.insert(id)
            return id
        }
    }

    /// The session that owns the device: its DMA address space, its interrupt wiring
    /// and its resets belong to that one client (the VMM). nil until a client claims it.
    @_spi(Server) public var owner: SessionID? { lock.withLock { _owner } }

    /// Makes `session` the owner if nobody owns the device; EBUSY if another session
    /// does. Returns true when this call made it the owner.
    @discardableResult
    @_spi(Server) public func claimOwnership(_ session: SessionID) throws(VFIOErrno) -> Bool {
        try lock.withLock { () throws(VFIOErrno) -> Bool in
            if let o = _owner {
                guard o == session else { throw .EBUSY }
                return false
            }
            _owner = session
            return true
        }
    }

    /// Drops what the session registered. When the owner leaves, the device resets
    /// and is free for the next client; other sessions leave nothing behind.
    @_spi(Server) public func closeSession(_ id: SessionID) {
        lock.withLock {
            dma.removeAll(owner: id)
            interrupts.removeAll(owner: id)
            sessions.remove(id)
            if dma.loggingOwner == id { dma.stopLogging() }
            if _owner == id {
                _owner = nil
                dma.stopLogging()
                reset(.disconnect)
            }
        }
    }

    /// GET_INFO: flags, region and interrupt-index counts.
    @_spi(Server) public func deviceInfo() -> DeviceInfo {
        lock.withLock {
            var flags: DeviceInfoFlags = [.pci]
            if configuration.resetSupported { flags.insert(.reset) }
            return DeviceInfo(argsz: 16, flags: flags, numRegions: UInt32(regions.count), numIRQs: 5)
        }
    }

    /// Region info (without argsz handling) and the fd to send, if mmap-able.
    @_spi(Server) public func regionInfo(index: UInt32) throws(VFIOErrno) -> (info: RegionInfo, fd: Int32?) {
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

    /// GET_IRQ_INFO for `index` (EINVAL past the five vfio-pci indices).
    @_spi(Server) public func irqInfo(index: UInt32) throws(VFIOErrno) -> IRQInfo {
        try lock.withLock { () throws(VFIOErrno) in try interrupts.info(index: index) }
    }

    /// SET_IRQS on behalf of `session`; consumes `fds` (docs/pci-core.md, "Interrupt delivery rules").
    @_spi(Server) public func setIRQs(_ req: SetIRQs, fds: [OwnedFD], session: SessionID) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in try interrupts.setIRQs(req, fds: fds, session: session) }
    }

    private func accessibleRegion(_ index: UInt32, _ offset: UInt64, _ count: Int) throws(VFIOErrno) -> RegionRoute {
        guard Int(index) < routes.count, let r = routes[Int(index)], r.size > 0 else { throw .EINVAL }
        guard count >= 0, offset <= r.size, UInt64(count) <= r.size - offset else { throw .EINVAL }
        switch r.decodeGate {
        case .none: break
        case .memorySpace: guard config.load16(0x04) & Self.commandMemory != 0 else { throw .EIO }
        case .ioSpace: guard config.load16(0x04) & Self.commandIO != 0 else { throw .EIO }
        }
        if let e = _migration?.regionAccessError(region: index) { throw e }
        return r
    }

    /// REGION_READ: bounds, decode (Command register) and migration checks, then the region's backing.
    @_spi(Server) public func readRegion(index: UInt32, offset: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        try lock.withLock { () throws(VFIOErrno) in
            let r = try accessibleRegion(index, offset, count)
            guard r.readable else { throw .EINVAL }
            if count == 0 { return [] }
            return try r.read(offset: offset, count: count)
        }
    }

    /// Reads `buffer.count` bytes of region `index` at `offset` into `buffer`, with the
    /// same checks as `readRegion`; nothing is allocated for config, register and RAM
    /// regions (the REGION_READ hot path).
    @_spi(Server) public func readRegion(index: UInt32, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            let r = try accessibleRegion(index, offset, buffer.count)
            guard r.readable else { throw .EINVAL }
            if buffer.isEmpty { return }
            try r.read(offset: offset, into: buffer)
        }
    }

    /// For an access to a RAM-backed region: checks it as `readRegion`/`writeRegion`
    /// would and returns the memory, so the caller moves the bytes itself (a reply sent
    /// straight from it, a write's data received straight into it) without the device
    /// lock, as a client that maps the region would. nil when the region is not plain
    /// memory: use `readRegion`/`writeRegion` then.
    @_spi(Server) public func regionMemory(index: UInt32, offset: UInt64, count: Int, write: Bool) throws(VFIOErrno) -> SharedMemory? {
        try lock.withLock { () throws(VFIOErrno) in
            guard Int(index) < routes.count, let r = routes[Int(index)], let m = r.memory else { return nil }
            _ = try accessibleRegion(index, offset, count)
            guard write ? r.writable : r.readable else { throw .EINVAL }
            guard offset + UInt64(count) <= UInt64(m.size) else { throw .EINVAL }
            return m
        }
    }

    /// The REGION_READ hot path in one lock: for a RAM-backed region, checks the access
    /// and returns the memory (as `regionMemory`) without reading; otherwise reads
    /// `buffer.count` bytes into `buffer` (as `readRegion(index:offset:into:)`) and
    /// returns nil.
    @_spi(Server) public func readRegionOrMemory(index: UInt32, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(VFIOErrno) -> SharedMemory? {
        try lock.withLock { () throws(VFIOErrno) in
            let r = try accessibleRegion(index, offset, buffer.count)
            guard r.readable else { throw .EINVAL }
            if let m = r.memory {
                guard offset + UInt64(buffer.count) <= UInt64(m.size) else { throw .EINVAL }
                return m
            }
            if !buffer.isEmpty { try r.read(offset: offset, into: buffer) }
            return nil
        }
    }

    /// REGION_WRITE, with the same checks as ``readRegion(index:offset:count:)``.
    @_spi(Server) public func writeRegion(index: UInt32, offset: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            let r = try accessibleRegion(index, offset, data.count)
            guard r.writable else { throw .EINVAL }
            if data.isEmpty { return }
            try r.write(offset: offset, data: data)
        }
    }

    /// DMA_MAP on behalf of `session`, which may hold at most `limit` mappings.
    @_spi(Server) public func dmaMap(_ req: DMAMapRequest, fd: OwnedFD?, session: SessionID,
                       transport: (any DMAMessageTransport)?, limit: Int = 65535) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            try dma.map(req, fd: fd, owner: session, transport: transport, limit: limit)
        }
    }

    /// DMA_UNMAP on behalf of `session`: it removes only that client's mappings.
    @_spi(Server) public func dmaUnmap(_ req: DMAUnmapRequest, session: SessionID? = nil) throws(VFIOErrno) {
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

    /// The DMA mappings, sorted by address (a copy): what clients mapped, for tests and the control plane.
    @_spi(Server) public var dmaMappings: [DMAMapping] { lock.withLock { dma.mappings } }

    // MARK: Dirty-page logging (DMA_LOGGING_START / STOP / REPORT)
    //
    // The log itself is the core's: the server asks for it through these calls.

    /// Starts logging device writes at `pageSize` (a power of two, at least 4 KiB)
    /// over `ranges` (empty: everything) for `session`; logging stops when that
    /// session leaves. EBUSY while logging already runs.
    @_spi(Server) public func startDirtyLogging(pageSize: UInt64, ranges: [DMALoggingRange], by session: SessionID? = nil) throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in try dma.startLogging(pageSize: pageSize, ranges: ranges, by: session) }
    }

    /// Stops dirty-page logging; EINVAL if it was not running.
    @_spi(Server) public func stopDirtyLogging() throws(VFIOErrno) {
        try lock.withLock { () throws(VFIOErrno) in
            guard dma.dirtyLog != nil else { throw .EINVAL }
            dma.stopLogging()
        }
    }

    /// Whether dirty-page logging runs.
    @_spi(Server) public var isDirtyLogging: Bool { lock.withLock { dma.dirtyLog != nil } }

    /// The dirty bitmap of [iova, iova + length) at `pageSize` (one bit per page,
    /// dirty if the device wrote any byte of it since the last report), clearing what
    /// it reports. EINVAL if logging is not running. `iova + length` must not pass 2^64.
    @_spi(Server) public func reportDirtyPages(iova: UInt64, length: UInt64, pageSize: UInt64) throws(VFIOErrno) -> [UInt64] {
        try lock.withLock { () throws(VFIOErrno) -> [UInt64] in
            try dma.reportDirty(iova: iova, length: length, reportPageSize: pageSize)
        }
    }

    /// Returns the function to its power-on state: config registers, interrupt
    /// state (eventfd wiring survives), registers, MSI-X table; RAM BARs keep their
    /// contents unless the spec says otherwise; DMA mappings belong to the client
    /// and survive; device models stop through their reset hooks.
    @_spi(Server) public func reset(_ reason: ResetReason) {
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
            // Jobs started before now are cancelled (DeviceJob).
            dma.resetGeneration &+= 1
            _resetCount += 1
            for h in resetHooks { h(reason) }
        }
    }
}
