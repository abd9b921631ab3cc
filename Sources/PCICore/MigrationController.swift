import VFIOUserProtocol

/// What a migration-capable device model provides: its state as bytes, and the
/// ability to stop, resume and load.
public protocol MigrationHandler: AnyObject, Sendable {
    /// Called for every arc the state machine walks (already validated). Throwing
    /// sends the device to ERROR.
    func transition(from: MigrationState, to: MigrationState) throws(VFIOErrno)
    /// Reads up to `max` bytes of the outgoing stream; fewer (or none) means no more now.
    func readStateData(max: Int) throws(VFIOErrno) -> [UInt8]
    /// Appends incoming stream bytes while RESUMING.
    func writeStateData(_ data: ArraySlice<UInt8>) throws(VFIOErrno)
    /// Bytes still to send: (initial, dirty) for PRE_COPY reporting and MIG_DATA_SIZE.
    func pendingBytes() -> (initial: UInt64, dirty: UInt64)
}

/// The VFIO migration v2 state machine (reference §5, variant-devices §4).
///
/// A requested state is reached by walking direct arcs one at a time, along the
/// path the kernel's `vfio_mig_get_next_state` takes; each arc is handed to the
/// device's handler. A failing arc leaves the device in ERROR, from which only a
/// reset recovers. Guarded by the device lock.
public final class MigrationController: @unchecked Sendable {
    public private(set) var state: MigrationState = .running
    public let supportsPreCopy: Bool
    public let supportsP2P: Bool
    public let handler: any MigrationHandler

    public init(handler: any MigrationHandler, preCopy: Bool = true, p2p: Bool = true) {
        self.handler = handler
        supportsPreCopy = preCopy
        supportsP2P = p2p
    }

    public var featureFlags: MigrationFeatureFlags {
        var f: MigrationFeatureFlags = [.stopCopy]
        if supportsP2P { f.insert(.p2p) }
        if supportsPreCopy { f.insert(.preCopy) }
        return f
    }

    /// The next direct arc from `cur` toward `target`, or nil if `target` cannot be reached.
    public func nextState(from cur: MigrationState, to target: MigrationState) -> MigrationState? {
        if cur == target { return cur }
        if cur == .error || target == .error { return nil }
        if !supportsP2P && (target == .runningP2P || target == .preCopyP2P) { return nil }
        if !supportsPreCopy && (target == .preCopy || target == .preCopyP2P) { return nil }
        let p2p = supportsP2P
        switch (cur, target) {
        case (.stop, .running): return p2p ? .runningP2P : .running
        case (.stop, .runningP2P), (.stop, .preCopy), (.stop, .preCopyP2P): return p2p ? .runningP2P : .running
        case (.stop, .stopCopy): return .stopCopy
        case (.stop, .resuming): return .resuming
        case (.running, .stop), (.running, .stopCopy), (.running, .resuming): return p2p ? .runningP2P : .stop
        case (.running, .runningP2P): return .runningP2P
        case (.running, .preCopy): return .preCopy
        case (.running, .preCopyP2P): return .preCopy
        case (.runningP2P, .running): return .running
        case (.runningP2P, .preCopy): return .running
        case (.runningP2P, .preCopyP2P): return .preCopyP2P
        case (.runningP2P, _): return .stop
        case (.preCopy, .running): return .running
        case (.preCopy, .preCopyP2P): return .preCopyP2P
        case (.preCopy, _): return .running
        case (.preCopyP2P, .preCopy): return .preCopy
        case (.preCopyP2P, .stopCopy): return .stopCopy
        case (.preCopyP2P, _): return .runningP2P
        case (.stopCopy, _): return .stop
        case (.resuming, _): return .stop
        default: return nil
        }
    }

    /// Whether the arc cur→next may be taken as the last hop only (saving states are
    /// never walked through). STOP_COPY → PRE_COPY is never allowed.
    private func legalPath(from cur: MigrationState, to target: MigrationState) -> [MigrationState]? {
        var path: [MigrationState] = []
        var s = cur
        while s != target {
            guard let n = nextState(from: s, to: target), n != s else { return nil }
            if n != target && (n == .stopCopy || n == .preCopy || n == .preCopyP2P || n == .resuming) { return nil }
            path.append(n)
            s = n
            if path.count > 8 { return nil }
        }
        return path
    }

    /// Moves to `target` arc by arc. Illegal requests leave the state unchanged
    /// (EINVAL); a failing arc lands in ERROR and rethrows.
    public func set(_ target: MigrationState) throws(VFIOErrno) {
        guard target != .error, let path = legalPath(from: state, to: target) else { throw .EINVAL }
        for next in path {
            do { try handler.transition(from: state, to: next) } catch {
                state = .error
                throw error
            }
            state = next
        }
    }

    func deviceWasReset() {
        let old = state
        state = .running
        if old != .running { try? handler.transition(from: old == .error ? .stop : old, to: .running) }
    }

    /// STOP_COPY and RESUMING keep the device frozen; ERROR refuses accesses too.
    func regionAccessError(region: UInt32) -> VFIOErrno? {
        switch state {
        case .error: return .EIO
        default: return nil
        }
    }

    /// Interrupts are raised only while RUNNING or PRE_COPY.
    var interruptsAllowed: Bool { state == .running || state == .preCopy }

    /// DMA runs only while RUNNING or PRE_COPY.
    var dmaError: VFIOErrno? { (state == .running || state == .preCopy) ? nil : .EBUSY }
}
