import VFIOUserProtocol

/// What a migration-capable device model provides: its state as bytes, and the
/// ability to stop, resume and load.
///
/// Every method is called with the device lock held.
public protocol MigrationHandler: AnyObject, Sendable {
    /// Called for every direct arc the state machine walks (already validated).
    /// Throwing sends the device to ERROR.
    func transition(from: MigrationState, to: MigrationState) throws(VFIOErrno)
    /// Appends up to `max` bytes of the outgoing stream to `out`; fewer (or none)
    /// means no more now (PRE_COPY) or the end of the stream (STOP_COPY).
    func readStateData(into out: inout [UInt8], max: Int) throws(VFIOErrno)
    /// Saving fast path: hands up to `max` bytes of the outgoing stream to `sink` in
    /// pieces that may point into device memory (no copy). `sink` consumes each piece
    /// before returning, or returns false to stop. Returns the bytes handed out; 0 means
    /// no more now. The default goes through `readStateData(into:max:)`.
    func readStateData(max: Int, to sink: (MigrationDataPiece) -> Bool) throws(VFIOErrno) -> Int
    /// Takes incoming stream bytes while RESUMING.
    func writeStateData(_ data: ArraySlice<UInt8>) throws(VFIOErrno)
    /// Loading fast path: where up to `max` of the next incoming bytes may be read
    /// directly (e.g. into device memory), or nil to use `writeStateData`.
    func directWriteTarget(max: Int) -> UnsafeMutableRawBufferPointer?
    /// `bytes` were read into the last `directWriteTarget`.
    func directWriteCommitted(_ bytes: UnsafeRawBufferPointer) throws(VFIOErrno)
    /// When there is no direct target: the most bytes to hand to `writeStateData`
    /// before asking for one again (nil: no limit).
    func indirectWriteLimit() -> Int?
    /// Bytes still to send while saving: `initial` (first pass not yet read) and
    /// `dirty` (changed since it was read), as VFIO_MIG_GET_PRECOPY_INFO reports.
    func pendingBytes() -> (initial: UInt64, dirty: UInt64)
    /// Estimated STOP_COPY stream length (MIG_DATA_SIZE).
    func stopCopySize() -> UInt64
    /// The device was reset (DEVICE_RESET, FLR, last client gone): drop any save or
    /// load session; the controller is back in RUNNING.
    func deviceReset()
    /// Called after each arc, once the controller's state is `state` (the device may
    /// act again: deliver pending interrupts, wake its engine).
    func didEnter(_ state: MigrationState)
    /// Why the last arc failed, for logs and clients' error messages.
    var failureReason: String? { get }
}

extension MigrationHandler {
    /// No direct target: every byte goes through `writeStateData`.
    public func directWriteTarget(max: Int) -> UnsafeMutableRawBufferPointer? { nil }
    /// Never called without a direct target.
    public func directWriteCommitted(_ bytes: UnsafeRawBufferPointer) throws(VFIOErrno) { throw .EINVAL }
    /// No limit.
    public func indirectWriteLimit() -> Int? { nil }
    /// Copies through `readStateData(into:max:)`.
    public func readStateData(max: Int, to sink: (MigrationDataPiece) -> Bool) throws(VFIOErrno) -> Int {
        var buf = [UInt8]()
        try readStateData(into: &buf, max: max)
        if buf.isEmpty { return 0 }
        return buf.withUnsafeBytes { sink(MigrationDataPiece($0)) } ? buf.count : 0
    }
    /// What `pendingBytes` reports.
    public func stopCopySize() -> UInt64 { let p = pendingBytes(); return p.initial + p.dirty }
    /// Nothing to drop.
    public func deviceReset() {}
    /// Nothing to do.
    public func didEnter(_ state: MigrationState) {}
    /// No reason recorded.
    public var failureReason: String? { nil }
}

/// A piece of the outgoing migration stream, as a handler hands it to the core.
public struct MigrationDataPiece {
    /// The bytes, valid until the sink returns.
    public var bytes: UnsafeRawBufferPointer
    /// The bytes are device memory that will not change before the stream has been
    /// read to its end (memory of a stopped device, in STOP_COPY), so the core may hand
    /// the kernel references to its pages instead of copying them (vmsplice). A buffer
    /// the handler reuses, or memory a running device writes, is never stable: the
    /// reader would see it as it is when it reads, not as it was when it was handed out.
    public var isStable: Bool

    /// A piece of `bytes`; `isStable` only for memory that cannot change before the stream ends.
    public init(_ bytes: UnsafeRawBufferPointer, isStable: Bool = false) {
        self.bytes = bytes
        self.isStable = isStable
    }
}


/// The VFIO migration v2 state machine (reference §5, variant-devices §4).
///
/// A requested state is reached by walking direct arcs one at a time along the
/// path the kernel's `vfio_mig_get_next_state` takes (its table is reproduced in
/// `fsmTable`, including the skipping of optional states the device lacks). The
/// whole path is computed before the first arc runs, so an illegal request is
/// refused with EINVAL and changes nothing. Each arc is handed to the device's
/// handler; a failing arc leaves the device in ERROR, from which only a reset
/// recovers.
///
/// A variant creates one with its handler and attaches it (``PCIDevice/migration``);
/// the server drives it (`set`, `@_spi(Server)`). Behind the device lock: every
/// caller holds it.
public final class MigrationController: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with the owning device's lock held.

    /// The current state (RUNNING at power-on and after every reset).
    public private(set) var state: MigrationState = .running
    /// Whether PRE_COPY (and PRE_COPY_P2P with P2P) is offered.
    public let supportsPreCopy: Bool
    /// Whether RUNNING_P2P is offered.
    public let supportsP2P: Bool
    /// The variant's side: state as bytes, stop, resume and load.
    @_spi(Server) public let handler: any MigrationHandler
    /// The arcs walked by the last `set`, for tests and logs.
    @_spi(Server) public private(set) var lastPath: [MigrationState] = []
    /// Why the last failed arc failed (nil after a success or reset).
    @_spi(Server) public private(set) var lastFailure: String?
    /// Set by the device: runs when an arc lands in RUNNING or PRE_COPY (delivers
    /// interrupts that became deliverable while the device could not raise them).
    var mayRunAgain: (() -> Void)?

    /// A state machine that hands every arc to `handler`, offering PRE_COPY and
    /// RUNNING_P2P as asked.
    public init(handler: any MigrationHandler, preCopy: Bool = true, p2p: Bool = true) {
        self.handler = handler
        supportsPreCopy = preCopy
        supportsP2P = p2p
    }

    /// The VFIO_DEVICE_FEATURE_MIGRATION flags.
    @_spi(Server) public var featureFlags: MigrationFeatureFlags {
        var f: MigrationFeatureFlags = [.stopCopy]
        if supportsP2P { f.insert(.p2p) }
        if supportsPreCopy { f.insert(.preCopy) }
        return f
    }

    /// The kernel's `vfio_from_fsm_table` (drivers/vfio/vfio_main.c): row = current
    /// state, column = requested state, cell = the next direct arc. ERROR means the
    /// request is invalid. Indexed by raw value (ERROR 0 ... PRE_COPY_P2P 7).
    static let fsmTable: [[MigrationState]] = {
        let E = MigrationState.error, S = MigrationState.stop, R = MigrationState.running
        let SC = MigrationState.stopCopy, RS = MigrationState.resuming, RP = MigrationState.runningP2P
        let PC = MigrationState.preCopy, PP = MigrationState.preCopyP2P
        //            to: ERROR STOP RUNNING STOP_COPY RESUMING RUNNING_P2P PRE_COPY PRE_COPY_P2P
        return [
            /* ERROR        */ [E, E, E, E, E, E, E, E],
            /* STOP         */ [E, S, RP, SC, RS, RP, RP, RP],
            /* RUNNING      */ [E, RP, R, RP, RP, RP, PC, RP],
            /* STOP_COPY    */ [E, S, S, SC, S, S, E, E],
            /* RESUMING     */ [E, S, S, S, RS, S, S, S],
            /* RUNNING_P2P  */ [E, S, R, S, S, RP, R, PP],
            /* PRE_COPY     */ [E, R, R, PP, R, R, PC, PP],
            /* PRE_COPY_P2P */ [E, RP, RP, SC, RP, RP, PC, PP],
        ]
    }()

    /// Whether the device offers `s` (the kernel's `state_flags_table` check).
    public func supports(_ s: MigrationState) -> Bool {
        switch s {
        case .error: false
        case .stop, .running, .stopCopy, .resuming: true
        case .runningP2P: supportsP2P
        case .preCopy: supportsPreCopy
        case .preCopyP2P: supportsPreCopy && supportsP2P
        }
    }

    /// The next direct arc from `cur` toward `target`, or nil if `target` cannot be
    /// reached (EINVAL). States the device does not support are skipped over by
    /// looking the table up again from them, as the kernel does; the lookup stops at
    /// ERROR (the kernel's loop needed a fix for that in 2026: ERROR's flags are ~0, so
    /// STOP_COPY→PRE_COPY, whose next step is ERROR, spun forever).
    @_spi(Server) public func nextState(from cur: MigrationState, to target: MigrationState) -> MigrationState? {
        guard supports(cur), supports(target) else { return nil }
        var next = Self.fsmTable[Int(cur.rawValue)][Int(target.rawValue)]
        while next != .error && !supports(next) {
            next = Self.fsmTable[Int(next.rawValue)][Int(target.rawValue)]
        }
        return next == .error ? nil : next
    }

    /// The arcs from `cur` to `target`, or nil if the request is invalid.
    @_spi(Server) public func path(from cur: MigrationState, to target: MigrationState) -> [MigrationState]? {
        var out: [MigrationState] = []
        var s = cur
        while s != target {
            guard let n = nextState(from: s, to: target), n != s, out.count < 8 else { return nil }
            out.append(n)
            s = n
        }
        return out
    }

    /// Moves to `target` arc by arc. An illegal request leaves the state unchanged
    /// (EINVAL); a failing arc lands in ERROR and rethrows its errno.
    @_spi(Server) public func set(_ target: MigrationState) throws(VFIOErrno) {
        // ERROR is never a valid request, not even from ERROR (only a reset leaves it).
        guard target != .error, let arcs = path(from: state, to: target) else { throw .EINVAL }
        lastPath = []
        for next in arcs {
            do { try handler.transition(from: state, to: next) } catch {
                lastFailure = "\(state)→\(next): \(handler.failureReason ?? "\(error)")"
                state = .error
                throw error
            }
            lastPath.append(next)
            state = next
            if deviceMayRun { mayRunAgain?() }
            handler.didEnter(next)
        }
        lastFailure = nil
    }

    func deviceWasReset() {
        state = .running
        lastFailure = nil
        lastPath = []
        handler.deviceReset()
    }

    /// ERROR refuses region accesses. Every other state accepts them: STOP must still
    /// answer config space and MSI-X (reference §4.2); a variant that must keep its
    /// registers still while the stream is read or loaded refuses writes itself.
    func regionAccessError(region: UInt32) -> VFIOErrno? {
        state == .error ? .EIO : nil
    }

    /// Whether the device may act on its own (start DMA, raise interrupts, change
    /// internal state): only RUNNING and PRE_COPY. The P2P states accept accesses but
    /// start no DMA (we cannot tell peer-to-peer DMA apart) and raise no interrupts.
    public var deviceMayRun: Bool { state == .running || state == .preCopy }

    /// Interrupts are raised only while RUNNING or PRE_COPY.
    var interruptsAllowed: Bool { deviceMayRun }

    /// DMA runs only while RUNNING or PRE_COPY.
    var dmaError: VFIOErrno? { deviceMayRun ? nil : .EBUSY }
}

// MARK: - Core state in the migration stream

extension PCIDevice {
    /// The core's part of a device's state: config space, the MSI-X table and which
    /// MSI-X entries a client programmed. Variants put it in their stream (our own
    /// client is the VMM, so nobody else restores config space on the destination).
    ///
    /// Layout: u32 config size, config bytes, u32 MSI-X table size, table bytes,
    /// u32 vector count, one byte per vector (1 = programmed by the client).
    public func saveCoreState() -> [UInt8] {
        lock.withLock {
            var w = WireWriter(capacity: config.size + 64)
            w.u32(UInt32(config.size))
            w.append(config.bytes)
            let table = msixTable.map { t in (0..<t.vectors).flatMap { v -> [UInt8] in
                let e = t.entry(v)
                var b = [UInt8](repeating: 0, count: 16)
                b.setLE64(e.address, at: 0); b.setLE32(e.data, at: 8); b[12] = e.masked ? 1 : 0
                return b
            } } ?? []
            w.u32(UInt32(table.count))
            w.append(table)
            w.u32(UInt32(msixTouched.count))
            w.append(msixTouched.map { $0 ? UInt8(1) : 0 })
            return w.bytes
        }
    }

    /// Checks that `bytes` is a core state this device can load; nil if it is, else why not.
    public func coreStateMismatch(_ bytes: [UInt8]) -> String? {
        lock.withLock {
            var r = WireReader(bytes, from: 0)
            guard let n = try? r.u32(), Int(n) == config.size, (try? r.bytes(Int(n))) != nil else {
                return "config space size differs (this device has \(config.size) bytes)"
            }
            guard let t = try? r.u32(), Int(t) == (msixTable?.vectors ?? 0) * 16, (try? r.bytes(Int(t))) != nil,
                  let v = try? r.u32(), Int(v) == msixTouched.count, (try? r.bytes(Int(v))) != nil, r.remaining == 0 else {
                return "MSI-X layout differs (this device has \(msixTable?.vectors ?? 0) vectors)"
            }
            return nil
        }
    }

    /// Loads what `saveCoreState` produced (check it with `coreStateMismatch` first).
    /// Config bytes are restored as stored, bypassing write policy and hooks.
    public func loadCoreState(_ bytes: [UInt8]) {
        lock.withLock {
            guard coreStateMismatch(bytes) == nil else { return }
            var r = WireReader(bytes, from: 0)
            let n = Int((try? r.u32()) ?? 0)
            let cfg = (try? r.bytes(n)).map(Array.init) ?? []
            for (i, b) in cfg.enumerated() { config.store8(b, i) }
            let t = Int((try? r.u32()) ?? 0)
            if let table = msixTable, t > 0, let entries = try? r.bytes(t) {
                try? table.tableHandler.write(offset: 0, data: ArraySlice(entries))
            }
            let v = Int((try? r.u32()) ?? 0)
            if let touched = try? r.bytes(v) {
                for (i, b) in touched.enumerated() where i < msixTouched.count { msixTouched[i] = b != 0 }
            }
            interrupts.reevaluate()
        }
    }
}
