import VFIOUserProtocol
import VFIOUserTransport

// The migration state machine as a table (§5.1, §5.2): from every state the device
// supports, every requested state gives what the specification's arcs (direct or
// chained) give, the forbidden ones are refused and change nothing, and ERROR is left
// by DEVICE_RESET alone.
extension ConformanceSuite {
    struct Migration {
        let suite: ConformanceSuite
        let p: RawPeer

        @discardableResult
        func set(_ raw: UInt32) -> RawPeer.Received {
            p.call(.deviceFeature, DeviceFeature(argsz: 16, flags: UInt32(DeviceFeature.migDeviceState) | DeviceFeature.set,
                                                 data: MigDeviceState(deviceState: raw).encoded).encoded)
        }
        @discardableResult
        func set(_ s: MigrationState) -> RawPeer.Received { set(s.rawValue) }

        func state() -> MigrationState? {
            let get = DeviceFeature(argsz: 16, flags: UInt32(DeviceFeature.migDeviceState) | DeviceFeature.get)
            guard case .message(let m) = p.call(.deviceFeature, get.encoded), !m.header.isError,
                  let f = try? DeviceFeature(payload: Array(m.payload)), let s = try? MigDeviceState(payload: f.data) else { return nil }
            return s.state
        }

        /// Back to RUNNING by the gentlest means that works; false if none does.
        func home() -> Bool {
            if state() == .running { return true }
            set(.running)
            if state() == .running { return true }
            set(.stop); set(.running)
            if state() == .running { return true }
            _ = p.call(.deviceReset, [])
            return state() == .running
        }

        /// From RUNNING to `s` by direct arcs.
        func reach(_ s: MigrationState) -> Bool {
            let path: [MigrationState] = switch s {
            case .running: []
            case .stop: [.stop]
            case .stopCopy: [.stop, .stopCopy]
            case .resuming: [.stop, .resuming]
            case .preCopy: [.preCopy]
            default: [s]
            }
            for step in path where suite.isError(set(step)) { return false }
            return state() == s
        }
    }

    func name(_ s: MigrationState?) -> String { s.map { "\($0)" } ?? "unreadable" }

    func migrationTable(_ r: inout Recorder, _ p: RawPeer, preCopy: Bool, p2p: Bool) {
        let m = Migration(suite: self, p: p)
        var states: [MigrationState] = [.stop, .running, .stopCopy, .resuming]
        if preCopy { states.append(.preCopy) }
        var bad: [String] = []
        var cells = 0
        for from in states {
            for to in states + (preCopy ? [] : [.preCopy]) {
                guard m.home(), m.reach(from) else { bad.append("cannot bring the device to \(from)"); break }
                cells += 1
                let x = m.set(to)
                let now = m.state()
                let refusedUnchanged = isError(x, .EINVAL) && now == from
                switch (from, to) {
                case (.stopCopy, .preCopy):
                    if !refusedUnchanged { bad.append("\(from)→\(to): \(show(x)), reads \(name(now)) (forbidden: EINVAL, state unchanged)") }
                case (_, .preCopy) where !preCopy:
                    if !refusedUnchanged { bad.append("\(from)→\(to) without PRE_COPY support: \(show(x)), reads \(name(now)) (EINVAL, unchanged)") }
                case (.resuming, _) where to != .resuming:
                    // Leaving RESUMING ends the load; with no stream written the device may refuse.
                    let ok = (!isError(x) && now == to) || (isError(x) && (now == .resuming || now == .error))
                    if !ok { bad.append("\(from)→\(to): \(show(x)), reads \(name(now))") }
                default:
                    if isError(x) || now != to { bad.append("\(from)→\(to): \(show(x)), reads \(name(now))") }
                }
            }
            // Targets that may never be requested: ERROR, the P2P states (unless P2P is
            // advertised), beyond the enum.
            for raw: UInt32 in p2p ? [0, 9] : [0, 5, 7, 9] {
                guard m.home(), m.reach(from) else { break }
                let x = m.set(raw)
                let now = m.state()
                cells += 1
                if !isError(x, .EINVAL) || now != from { bad.append("\(from)→\(raw): \(show(x)), reads \(name(now)) (EINVAL, unchanged)") }
            }
        }
        let home = m.home()
        if !home { bad.append("the device does not return to RUNNING") }
        r.check(bad.isEmpty, "migration.state-table",
                bad.isEmpty ? "\(cells) requests from \(states.map { "\($0)" }.joined(separator: ", ")) give the specified state or EINVAL with the state unchanged"
                    : bad.prefix(8).joined(separator: "; ") + (bad.count > 8 ? "; and \(bad.count - 8) more" : ""), "§5.1, §5.2")
        migrationErrorRecovery(&r, m)
    }

    /// A load of garbage drives the device to ERROR (where it may fail the arc out of
    /// RESUMING); from there only DEVICE_RESET leads out, to RUNNING.
    func migrationErrorRecovery(_ r: inout Recorder, _ m: Migration) {
        guard m.home(), m.reach(.resuming) else {
            r.skip("migration.error-recovery", "cannot bring the device to RESUMING", "§5.1"); return
        }
        let garbage = (0..<256).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        let w = m.p.call(.migDataWrite, MigDataWrite(data: garbage).encoded)
        let out = m.set(.stop)
        var now = m.state()
        if now != .error && !isError(w) && !isError(out) {
            m.set(.running)
            now = m.state()
        }
        guard m.p.isOpen else {
            r.fail("migration.error-recovery", "the server closed the connection on a 256-byte MIG_DATA_WRITE in RESUMING (write: \(show(w)))", "§5.3")
            return
        }
        guard now == .error else {
            _ = m.home()
            r.skip("migration.error-recovery", "256 bytes of garbage loaded without the device entering ERROR (write: \(show(w)); RESUMING→STOP: \(show(out)); reads \(name(now)))", "§5.1")
            return
        }
        let stuck = m.set(.running)
        let still = m.state()
        let reset = m.p.call(.deviceReset, [])
        let after = m.state()
        r.check(isError(stuck) && still == .error && !isError(reset) && after == .running, "migration.error-recovery",
                "garbage load left the device in ERROR; SET RUNNING: \(show(stuck)), reads \(name(still)); DEVICE_RESET: \(show(reset)); reads \(name(after))"
                    + (after == .running ? "" : " (a reset returns the device from ERROR to RUNNING)"), "§5.1, §3.10")
        _ = m.home()
    }
}
