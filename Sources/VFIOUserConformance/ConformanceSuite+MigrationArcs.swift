import VFIOUserProtocol
import VFIOUserTransport

// The checks `disruptive` adds: they move the device through migration states and read
// its stop-copy stream, then return it to RUNNING.
extension ConformanceSuite {
    func migrationArcs(_ r: inout Recorder, _ p: RawPeer) {
        func set(_ s: MigrationState) -> RawPeer.Received {
            p.call(.deviceFeature, DeviceFeature(argsz: 16, flags: UInt32(DeviceFeature.migDeviceState) | DeviceFeature.set,
                                                 data: MigDeviceState(state: s).encoded).encoded)
        }
        func state() -> MigrationState? {
            let get = DeviceFeature(argsz: 16, flags: UInt32(DeviceFeature.migDeviceState) | DeviceFeature.get)
            guard case .message(let m) = p.call(.deviceFeature, get.encoded), !m.header.isError,
                  let f = try? DeviceFeature(payload: Array(m.payload)), let s = try? MigDeviceState(payload: f.data) else { return nil }
            return s.state
        }
        func name(_ s: MigrationState?) -> String { s.map { "\($0)" } ?? "unreadable" }

        guard state() == .running else {
            r.skip("migration.arcs", "the device is in \(name(state())), not RUNNING", "§5.1"); return
        }
        let a = set(.stop), sa = state(), b = set(.running), sb = state()
        r.check(!isError(a) && sa == .stop && !isError(b) && sb == .running, "migration.arcs",
                "RUNNING→STOP: \(show(a)), reads \(name(sa)); STOP→RUNNING: \(show(b)), reads \(name(sb))", "§5.1")

        let early = p.call(.migDataRead, MigDataRead(argsz: 8 + 4096, size: 4096).encoded)
        r.check(isError(early, .EINVAL), "migration.data-read-not-saving", "MIG_DATA_READ while RUNNING: \(show(early))", "§5.3")

        let sc = set(.stopCopy)
        guard !isError(sc), state() == .stopCopy else {
            r.fail("migration.stop-copy-stream", "RUNNING→STOP_COPY: \(show(sc)), reads \(name(state()))", "§5.1")
            _ = set(.running)
            return
        }
        // The whole stream, 64 KiB at a time; an empty read ends it.
        let chunk: UInt32 = 64 << 10
        var total = 0, reads = 0, problem: String?
        let deadline = monotonicMs() + 60_000
        while problem == nil {
            let x = p.call(.migDataRead, MigDataRead(argsz: 8 + chunk, size: chunk).encoded)
            reads += 1
            guard case .message(let m) = x, !m.header.isError, let reply = try? MigDataReadReply(payload: Array(m.payload)) else {
                problem = "read \(reads): \(show(x))"; break
            }
            if reply.size > chunk { problem = "read \(reads) returned \(reply.size) bytes, more than the \(chunk) asked" }
            if reply.size == 0 { break }
            total += Int(reply.size)
            if reads > 1 << 16 || monotonicMs() > deadline { problem = "no end after \(total) bytes in \(reads) reads" }
        }
        r.check(problem == nil && total > 0, "migration.stop-copy-stream",
                problem ?? "\(total) bytes in \(reads) reads, then an empty read", "§5.3")

        guard p.isOpen else {
            for id in ["migration.illegal-arc", "migration.back-to-running"] {
                r.skip(id, "the server closed the connection during the stop-copy stream (migration.stop-copy-stream)", "§5.1")
            }
            return
        }
        let illegal = set(.preCopy), after = state()
        r.check(isError(illegal, .EINVAL) && after == .stopCopy, "migration.illegal-arc",
                "STOP_COPY→PRE_COPY: \(show(illegal)); the state reads \(name(after))", "§5.1")

        let s1 = set(.stop), s2 = set(.running), end = state()
        r.check(!isError(s1) && !isError(s2) && end == .running, "migration.back-to-running",
                "STOP_COPY→STOP: \(show(s1)); STOP→RUNNING: \(show(s2)); reads \(name(end))", "§5.1")
    }
}
