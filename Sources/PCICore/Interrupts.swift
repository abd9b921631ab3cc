import VFIOUserProtocol
import VFIOUserTransport

/// Identifies the client connection that registered a resource, so its eventfds
/// and DMA mappings can be dropped when it goes away.
public typealias SessionID = UInt64

/// The five vfio-pci interrupt indices and their state: eventfds registered by
/// clients, per-vector masks, pending bits and the INTx level.
///
/// Delivery rules (PCI and vfio semantics):
/// - INTx is level-triggered: while asserted, unmasked and not disabled by the
///   command register, the eventfd is signalled once and the line automasks until
///   the client UNMASKs it.
/// - MSI and MSI-X are edge-triggered: a vector that is masked (SET_IRQS MASK, the
///   MSI mask bits or the MSI-X vector control / function mask) or has no eventfd yet
///   becomes pending and is delivered as soon as it is unmasked and has one.
/// - ERR and REQ just signal.
///
/// The core's own: variants raise interrupts through ``PCIDevice/raiseInterrupt(vector:)``
/// and ``PCIDevice/triggerInterrupt(_:vector:)``. Behind the device lock: every method
/// expects it held (checked in debug builds); only the irqfd watcher's thread takes it.
@_spi(Server) public final class InterruptController: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with `lock` held.

    /// One vector of an index.
    public struct Vector: Sendable {
        /// The eventfd a client bound with SET_IRQS, if any.
        public var eventFD: OwnedFD?
        /// The session that bound it.
        public var owner: SessionID = 0
        /// Masked by SET_IRQS MASK (or INTx automasked).
        public var masked = false
        /// Raised while masked or unbound: delivered on unmask.
        public var pending = false
    }

    /// One interrupt index (INTx, MSI, MSI-X, ERR, REQ).
    public struct IndexState: Sendable {
        /// What GET_IRQ_INFO reports for it.
        public var flags: IRQInfoFlags
        /// Its vectors (none when the device lacks the index).
        public var vectors: [Vector]
        /// How many vectors it has.
        public var count: Int { vectors.count }
    }

    /// The five indices, by `IRQIndex` raw value.
    public private(set) var indices: [IndexState]
    /// The INTx level.
    public private(set) var intxAsserted = false
    /// Signals delivered per index (for tests and statistics).
    public private(set) var delivered: [UInt64] = [0, 0, 0, 0, 0]

    /// Masks owned by config space / MSI-X table (consulted on every delivery).
    var externalMask: @Sendable (_ index: Int, _ vector: Int) -> Bool = { _, _ in false }
    /// INTx disabled by the command register.
    var intxDisabled: @Sendable () -> Bool = { false }
    /// Called when a pending bit changes, so MSI/MSI-X pending registers can follow.
    var pendingChanged: @Sendable (_ index: Int, _ vector: Int, _ pending: Bool) -> Void = { _, _, _ in }
    /// Whether interrupts may be raised at all (migration STOP / P2P states forbid it).
    var raisingAllowed: @Sendable () -> Bool = { true }
    private var irqfdWatcher: IRQFDWatcher?
    /// A control plane watching deliveries; nil unless one is attached.
    var probe: (any DeviceProbe)?
    private var irqfds: IRQFDWatcher {
        if let w = irqfdWatcher { return w }
        let w = IRQFDWatcher { [weak self] key in
            guard let self else { return }
            self.lock.withLock {
                guard key.index < self.indices.count, key.vector < self.indices[key.index].count else { return }
                self.indices[key.index].vectors[key.vector].masked = !key.unmask
                self.reevaluate()
            }
        }
        irqfdWatcher = w
        return w
    }

    deinit { irqfdWatcher?.stop() }

    /// The owning device's lock: held by every caller.
    let lock: DeviceLock

    init(lock: DeviceLock, intx: Int, msi: Int, msix: Int, err: Int, req: Int) {
        self.lock = lock
        func idx(_ n: Int, _ f: IRQInfoFlags) -> IndexState { IndexState(flags: f, vectors: Array(repeating: Vector(), count: n)) }
        indices = [
            idx(intx, [.eventfd, .maskable, .automasked]),
            idx(msi, [.eventfd, .maskable, .noresize]),
            idx(msix, [.eventfd, .maskable]),
            idx(err, [.eventfd]),
            idx(req, [.eventfd]),
        ]
    }

    /// GET_IRQ_INFO for `index`.
    public func info(index: UInt32) throws(VFIOErrno) -> IRQInfo {
        lock.assertHeld()
        guard index < UInt32(indices.count) else { throw .EINVAL }
        let s = indices[Int(index)]
        return IRQInfo(argsz: 16, flags: s.count > 0 ? s.flags : [], index: index, count: UInt32(s.count))
    }

    /// True when a client bound at least one eventfd on the index (vfio's notion of "enabled").
    public func isEnabled(_ index: IRQIndex) -> Bool {
        lock.assertHeld()
        return indices[Int(index.rawValue)].vectors.contains { $0.eventFD != nil }
    }

    // MARK: SET_IRQS (reference §3.7)

    /// Applies a SET_IRQS request. Consumes `fds` (each is owned by a vector afterwards,
    /// or closed). Validation follows libvfio-user and Linux; every failure is EINVAL.
    public func setIRQs(_ req: SetIRQs, fds: [OwnedFD], session: SessionID) throws(VFIOErrno) {
        lock.assertHeld()
        do {
            guard req.index < UInt32(indices.count) else { throw .EINVAL }
            let index = Int(req.index)
            guard let data = req.dataType, let action = req.action else { throw .EINVAL }
            let n = indices[index].count
            let start = Int(req.start), count = Int(req.count)
            if !fds.isEmpty && data != .eventfd { throw .EINVAL }
            if index >= 3 && action != .trigger { throw .EINVAL }
            if count == 0 {
                guard start == 0, data == .none, action == .trigger else { throw .EINVAL }
                // Disable the whole index, its (un)mask notifiers included.
                for v in 0..<n { unbind(index, v) }
                irqfdWatcher?.removeAll(index: index)
                if index == 0 { indices[0].vectors.indices.forEach { indices[0].vectors[$0].masked = false } }
                return
            }
            guard start < n, count <= n - start else { throw .EINVAL }
            if action != .trigger && !indices[index].flags.contains(.maskable) { throw .EINVAL }
            switch data {
            case .bool:
                guard req.data.count == count else { throw .EINVAL }
            case .eventfd:
                guard fds.isEmpty || fds.count == count else { throw .EINVAL }
            case .none:
                break
            }
            let range = start..<(start + count)
            func selected(_ i: Int) -> Bool { data != .bool || req.data[req.data.startIndex + (i - start)] != 0 }
            switch action {
            case .trigger:
                switch data {
                case .eventfd:
                    for (k, v) in range.enumerated() {
                        unbind(index, v)
                        if !fds.isEmpty {
                            indices[index].vectors[v].eventFD = fds[k]
                            indices[index].vectors[v].owner = session
                        }
                    }
                    reevaluate()
                case .none, .bool:
                    // Loopback: the client asks us to fire the interrupt.
                    for v in range where selected(v) { trigger(index: index, vector: v) }
                }
            case .mask, .unmask:
                if data == .eventfd {
                    // The fds are notifications into the device: signalling one (un)masks its vector.
                    for (k, v) in range.enumerated() {
                        irqfds.set(.init(index: index, vector: v, unmask: action == .unmask),
                                   fd: fds.isEmpty ? nil : fds[k], owner: session)
                    }
                    return
                }
                for v in range where selected(v) { indices[index].vectors[v].masked = (action == .mask) }
                reevaluate()
            }
        }
    }

    private func unbind(_ index: Int, _ v: Int) {
        indices[index].vectors[v].eventFD?.close()
        indices[index].vectors[v].eventFD = nil
        indices[index].vectors[v].owner = 0
    }

    // MARK: Raising interrupts (device side)

    /// Raises vector `vector` of an edge-triggered index (MSI, MSI-X, ERR, REQ),
    /// or asserts INTx for index 0.
    public func trigger(index: Int, vector: Int = 0) {
        lock.assertHeld()
        guard index < indices.count, vector >= 0, vector < indices[index].count else { return }
        if index == 0 { assertINTx(); return }
        guard raisingAllowed() else { return }
        if isMasked(index, vector) || indices[index].vectors[vector].eventFD == nil {
            setPending(index, vector, true)
            return
        }
        signal(index, vector)
    }

    /// Raises vector `vector` of `index` (asserts INTx for `.intx`).
    public func trigger(_ index: IRQIndex, vector: Int = 0) { trigger(index: Int(index.rawValue), vector: vector) }

    /// Drives the INTx line high. Delivered (once) when not masked or disabled.
    public func assertINTx() {
        lock.assertHeld()
        guard indices[0].count > 0, raisingAllowed() else { return }
        intxAsserted = true
        reevaluate()
    }

    /// Drives the INTx line low.
    public func deassertINTx() {
        lock.assertHeld()
        intxAsserted = false
    }

    /// Whether a vector is masked, by SET_IRQS or by config space / the MSI-X table.
    public func isMasked(_ index: Int, _ vector: Int) -> Bool {
        lock.assertHeld()
        return indices[index].vectors[vector].masked || externalMask(index, vector)
    }

    /// Whether a vector waits to be delivered.
    public func isPending(_ index: IRQIndex, vector: Int) -> Bool {
        lock.assertHeld()
        return indices[Int(index.rawValue)].vectors[vector].pending
    }

    /// Delivers whatever became deliverable after a mask, enable or eventfd change.
    public func reevaluate() {
        lock.assertHeld()
        guard raisingAllowed() else { return }
        if intxAsserted, indices[0].count > 0, !indices[0].vectors[0].masked, !intxDisabled(),
           indices[0].vectors[0].eventFD != nil {
            signal(0, 0)
            indices[0].vectors[0].masked = true   // automasked until UNMASK
        }
        for index in 1..<indices.count {
            for v in 0..<indices[index].count where indices[index].vectors[v].pending {
                if !isMasked(index, v) && indices[index].vectors[v].eventFD != nil {
                    setPending(index, v, false)
                    signal(index, v)
                }
            }
        }
    }

    private func setPending(_ index: Int, _ v: Int, _ p: Bool) {
        guard indices[index].vectors[v].pending != p else { return }
        indices[index].vectors[v].pending = p
        pendingChanged(index, v, p)
    }

    private func signal(_ index: Int, _ v: Int) {
        guard let fd = indices[index].vectors[v].eventFD else { return }
        EventFD.signal(fd.rawValue)
        delivered[index] &+= 1
        probe?.interruptSignalled(index: index, vector: v)
    }

    // MARK: Lifecycle

    /// Drops every eventfd a session registered (it disconnected).
    public func removeAll(owner: SessionID) {
        lock.assertHeld()
        irqfdWatcher?.removeAll(owner: owner)
        for i in indices.indices {
            for v in indices[i].vectors.indices where indices[i].vectors[v].owner == owner { unbind(i, v) }
        }
    }

    /// Device reset: nothing pending, INTx low and unmasked. Eventfd wiring is the
    /// VMM's and survives, as with vfio-pci.
    public func resetState() {
        lock.assertHeld()
        intxAsserted = false
        for i in indices.indices {
            for v in indices[i].vectors.indices {
                indices[i].vectors[v].masked = false
                if indices[i].vectors[v].pending { setPending(i, v, false) }
            }
        }
    }
}
