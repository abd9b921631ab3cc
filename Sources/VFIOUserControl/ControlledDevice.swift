import Glibc
import Synchronization
@_spi(Server) import PCICore
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// A device under the control plane: it watches every command its server handles
/// (``ServerHooks``) and every DMA and interrupt of the device (``DeviceProbe``),
/// keeps the counters and reports, feeds watchers and applies faults.
///
/// Attach it before the server starts: `options.hooks = controlled` for the server,
/// then ``attach(server:)``. Without watchers or faults the hot path is a clock
/// read, one uncontended lock and a few counters per command.
///
/// Locks: the device lock may be held when this takes its own (DMA, interrupts,
/// resets); this never takes the device lock while holding its own.
public final class ControlledDevice: ServerHooks, DeviceProbe, Sendable {
    /// The spec's name: how control requests address the device.
    public let name: String
    /// The device followed.
    public let device: PCIDevice
    /// Indexed by region.
    let modeled: [ModeledMap]
    let limits: FaultLimits
    private let serverBox = Locked<VFIOUserServer?>(nil)

    struct State {
        var seq: UInt64 = 0
        /// Indexed by command (the last slot counts any command past 30): no hashing per command.
        var stats = [LatencyLog](repeating: LatencyLog(), count: 32)
        var accesses: UInt64 = 0
        var unmodeled: [AccessKey: UnmodeledEntry] = [:]
        var pollThreshold = 64
        var pollKey: AccessKey?
        var pollRun = 0
        var polls: [AccessKey: PollEntry] = [:]
        /// The run of `pollKey` passed the threshold (its entry is in `polls`).
        var pollInLoop = false
        var pollLast: UInt64 = 0
        var faults: [ActiveFault] = []
        var nextFaultID = 1
        var watchers: [ObjectIdentifier: Watcher] = [:]
        /// Work held by a stopWork hang fault.
        var workHeld = false
    }
    private let stateLock = Locked(State())
    /// A watcher listens or a fault is armed or waiting: the server must hand over every
    /// command with its bytes. Refreshed whenever the state changes (``withState(_:)``).
    private let everyCommand = Atomic<Bool>(false)

    /// The state under its lock; afterwards ``needsEveryCommand`` says again whether
    /// anything needs each command in full.
    func withState<R, E: Error>(_ body: (inout State) throws(E) -> R) throws(E) -> R {
        try stateLock.withLock { (s: inout State) throws(E) -> R in
            defer {
                let every = !s.watchers.isEmpty || !s.faults.isEmpty
                if everyCommand.load(ordering: .relaxed) != every { everyCommand.store(every, ordering: .relaxed) }
            }
            return try body(&s)
        }
    }

    /// Follows `device` under `name` (the spec's name, how control requests address it).
    public init(name: String, device: PCIDevice) {
        self.name = name
        self.device = device
        var maps: [UInt32: ModeledMap] = [:]
        var sizes: [UInt32: UInt64] = [:]
        let barHandlers = device.barHandlers
        for i in 0..<device.regionCount {
            guard let r = device.region(UInt32(i)), r.size > 0 else { continue }
            sizes[UInt32(i)] = r.size
            // Register BARs: modeled where the spec defines a register or a model maps a handler.
            if let mux = barHandlers[i], device.registerFiles[i] != nil, r.size <= 1 << 24 {
                var m = ModeledMap(size: Int(r.size))
                for reg in device.configuration.registers where reg.bar == i {
                    m.mark(reg.offset..<(reg.offset + UInt64(reg.width)))
                }
                for e in mux.entries { m.mark(e.range) }
                maps[UInt32(i)] = m
            } else {
                maps[UInt32(i)] = .all
            }
        }
        modeled = (0..<device.regionCount).map { maps[UInt32($0)] ?? .all }
        limits = FaultLimits(regionSizes: sizes, configSize: device.config.size)
        device.probe = self
        // Strong: the device already holds this object as its probe, so this adds no cycle
        // of its own. A weak reference would give this object a side table, and every
        // retain and release of it on the connection's hot path would take the runtime's
        // slow path (~260 instructions a region access, issue #12 item 7).
        device.onReset { reason in self.deviceWasReset(reason) }
    }

    /// The server whose connections `disconnect` drops.
    public func attach(server: VFIOUserServer) { serverBox.withLock { $0 = server } }

    var server: VFIOUserServer? { serverBox.withLock { $0 } }

    // MARK: Events

    private func emit(_ s: inout State, _ e: RawEvent) {
        var e = e
        s.seq &+= 1
        e.seq = s.seq
        for w in s.watchers.values where w.kinds.contains(e.kind) { w.push(e) }
    }

    func addWatcher(_ kinds: Set<RawEvent.Kind>) -> Watcher {
        let w = Watcher(kinds: kinds)
        withState { $0.watchers[ObjectIdentifier(w)] = w }
        return w
    }

    func removeWatcher(_ w: Watcher) { withState { _ = $0.watchers.removeValue(forKey: ObjectIdentifier(w)) } }

    // MARK: ServerHooks (the connection threads)

    /// Notes the start time; the token returned comes back in `commandDidFinish`.
    public func commandWillStart(_ header: MessageHeader, session: SessionID) -> UInt64 { Clock.monoNs() }

    /// Whether a watcher or a fault needs every command with its bytes (else region accesses take the fast path).
    public var needsEveryCommand: Bool { everyCommand.load(ordering: .relaxed) }

    /// The fast path's report: counters, latency, the unmodeled and polling reports,
    /// as `commandDidFinish` keeps them, without data (nobody is watching for it).
    public func regionAccessServed(_ access: ServedRegionAccess, session: SessionID, token: UInt64) {
        let now = Clock.monoNs()
        withState { s in
            if access.entry == 0 {
                s.stats[min(Int(access.command.rawValue), 31)].record(now &- token, failed: access.error != nil)
            }
            var drop = false
            recordAccess(&s, AccessKey(region: access.region, offset: access.offset, size: access.size), write: access.isWrite,
                         data: [], error: access.error, command: access.command, session: session, now: now, drop: &drop,
                         withData: false)
        }
    }

    /// Counts the command, feeds watchers and applies delay and disconnect faults to its reply.
    public func commandDidFinish(_ header: MessageHeader, request: [UInt8], reply: inout [UInt8]?, error: VFIOErrno?,
                                 session: SessionID, token: UInt64) -> ReplyDisposition {
        let now = Clock.monoNs()
        let cmd = header.command
        var drop = false
        let disposition = withState { s -> ReplyDisposition in
            s.stats[min(Int(cmd.rawValue), 31)].record(now &- token, failed: error != nil)
            var access: AccessKey? = nil
            var write = false
            switch cmd {
            case .regionRead, .regionWrite:
                guard request.count >= 32 else { break }
                let key = AccessKey(region: request.le32(at: 24), offset: request.le64(at: 16), size: Int(request.le32(at: 28)))
                write = cmd == .regionWrite
                var data: ArraySlice<UInt8> = []
                if write, request.count >= 32 + key.size { data = request[32..<(32 + key.size)] }
                if !write, let r = reply, r.count >= 16 + key.size { data = r[16..<(16 + key.size)] }
                access = key
                recordAccess(&s, key, write: write, data: data, error: error, command: cmd, session: session, now: now, drop: &drop)
            case .regionWriteMulti:
                if let m = try? WriteMulti(payload: Array(request.dropFirst(MessageHeader.size))) {
                    for e in m.entries {
                        let key = AccessKey(region: e.region, offset: e.offset, size: Int(e.count))
                        recordAccess(&s, key, write: true, data: e.bytes[...], error: error, command: cmd, session: session,
                                     now: now, drop: &drop)
                    }
                }
            default:
                break
            }
            if s.faults.isEmpty { return .send }
            return applyFaults(&s, cmd, access, write: write, reply: &reply, session: session, now: now)
        }
        if drop { dropOwner() }
        return disposition
    }

    /// Counters, reports, triggers and the event of one guest region access.
    private func recordAccess(_ s: inout State, _ key: AccessKey, write: Bool, data: ArraySlice<UInt8>, error: VFIOErrno?,
                              command: Command, session: SessionID, now: UInt64, drop: inout Bool, withData: Bool = true) {
        s.accesses &+= 1
        if Int(key.region) < modeled.count, !modeled[Int(key.region)].covers(offset: key.offset, size: key.size) {
            s.unmodeled[key, default: UnmodeledEntry(first: now, last: now)].count(write: write, at: now)
        }
        // Polling loops: the same register read again and again, nothing else between.
        // While a loop runs only these counters move; its report entry is written when
        // it starts and when it ends (or a report is asked for).
        if !write, s.pollKey == key {
            s.pollRun += 1
            s.pollLast = now
            if s.pollRun == s.pollThreshold + 1 {
                s.polls[key, default: PollEntry(first: now, last: now)].loops += 1
                s.pollInLoop = true
                if !s.watchers.isEmpty {
                    emit(&s, RawEvent(kind: .poll, timeNs: now, region: key.region, offset: key.offset, size: key.size,
                                      count: s.pollRun))
                }
            }
        } else {
            endPollingLoop(&s)
            s.pollKey = write ? nil : key
            s.pollRun = write ? 0 : 1
            s.pollLast = now
        }
        // Without the data (the fast path, which a fault or watcher added a moment ago may
        // still see once) triggers and events wait for the next access that has it.
        guard withData else { return }
        if !s.faults.isEmpty { checkTriggers(&s, key: key, write: write, data: data, now: now, drop: &drop) }
        if !s.watchers.isEmpty {
            emit(&s, RawEvent(kind: .access, timeNs: now, session: session, write: write, command: command.rawValue,
                              region: key.region, offset: key.offset, size: key.size, bytes: Array(data),
                              errno: error?.rawValue ?? 0))
        }
    }

    /// Writes the running polling loop's length and end into its report entry.
    func endPollingLoop(_ s: inout State) {
        guard s.pollInLoop, let k = s.pollKey else { return }
        let run = s.pollRun, last = s.pollLast
        if var e = s.polls[k] {
            e.longestRun = max(e.longestRun, run)
            e.last = last
            e.active = false
            s.polls[k] = e
        }
        s.pollInLoop = false
    }

    /// Arms pending faults whose trigger this access (or the time) fired.
    func checkTriggers(_ s: inout State, key: AccessKey?, write: Bool, data: ArraySlice<UInt8>, now: UInt64, drop: inout Bool) {
        for i in s.faults.indices where !s.faults[i].armed {
            guard let t = s.faults[i].spec.trigger else { continue }
            var fire = false
            if let n = t.afterAccesses, s.accesses &- s.faults[i].accessBase >= UInt64(n) { fire = true }
            if let ms = t.afterMs, now >= s.faults[i].addedNs + UInt64(ms) * 1_000_000 { fire = true }
            if let w = t.onWrite, write, let key, key.region == w.region.index, key.offset == w.offset.value,
               leValue(data) == w.value.value { fire = true }
            if fire { arm(&s, i, now: now, drop: &drop) }
        }
        removeExpired(&s, now)
    }

    func arm(_ s: inout State, _ i: Int, now: UInt64, drop: inout Bool) {
        s.faults[i].armed = true
        s.faults[i].armedNs = now
        let spec = s.faults[i].spec
        if spec.kind == .hang, spec.stopWork == true, !s.workHeld {
            s.workHeld = true
            device.work.hold(true)
        }
        // A disconnect that selects nothing happens at once: the VMM's connection drops.
        if spec.kind == .disconnect, spec.command == nil, spec.region == nil {
            s.faults[i].hits += 1
            drop = true
        }
        if !s.watchers.isEmpty {
            emit(&s, RawEvent(kind: .fault, timeNs: now, text: spec.kind.rawValue, count: 1, faultID: s.faults[i].id))
        }
    }

    /// What the armed faults do to this command's reply.
    private func applyFaults(_ s: inout State, _ cmd: Command, _ access: AccessKey?, write: Bool, reply: inout [UInt8]?,
                             session: SessionID, now: UInt64) -> ReplyDisposition {
        var holdMs = 0
        var drop = false
        for i in s.faults.indices where s.faults[i].armed && !s.faults[i].expired(now) {
            let f = s.faults[i]
            func selected() -> Bool {
                if let c = f.command, c != cmd { return false }
                if f.spec.region != nil {
                    guard let a = access, f.covers(region: a.region, offset: a.offset, size: a.size) else { return false }
                }
                return true
            }
            var hit = false
            switch f.spec.kind {
            case .delay:
                if selected() { holdMs = max(holdMs, f.spec.ms ?? 0); hit = true }
            case .disconnect:
                if f.spec.command != nil || f.spec.region != nil, selected() { drop = true; hit = true }
            case .hang:
                guard cmd == .regionRead, let a = access, f.covers(region: a.region, offset: a.offset, size: a.size),
                      var r = reply, r.count >= 16 + a.size, a.region != RegionIndex.config.rawValue || f.spec.region != nil
                else { break }
                if f.spec.mode == "frozen" {
                    if let v = s.faults[i].frozen[a] { r.replaceSubrange(16..<(16 + a.size), with: v) }
                    else { s.faults[i].frozen[a] = Array(r[16..<(16 + a.size)]) }
                } else {
                    for k in 16..<(16 + a.size) { r[k] = 0xFF }
                }
                reply = r
                hit = true
            case .config:
                guard cmd == .regionRead, let a = access, a.region == RegionIndex.config.rawValue, var r = reply,
                      r.count >= 16 + a.size, let off = f.spec.offset?.value, let bytes = f.spec.data.flatMap(Hex.decode)
                else { break }
                for (j, b) in bytes.enumerated() {
                    let at = off + UInt64(j)
                    if at >= a.offset && at < a.offset + UInt64(a.size) { r[16 + Int(at - a.offset)] = b; hit = true }
                }
                reply = r
            case .dma:
                break
            }
            if hit {
                s.faults[i].hits += 1
                if !s.watchers.isEmpty {
                    emit(&s, RawEvent(kind: .fault, timeNs: now, session: session, text: f.spec.kind.rawValue, faultID: f.id))
                }
            }
        }
        removeExpired(&s, now)
        if drop { return .drop }
        return holdMs > 0 ? .hold(ms: holdMs) : .send
    }

    /// Drops faults whose scope is used up; the engine runs again once no stopWork hang is left.
    func removeExpired(_ s: inout State, _ now: UInt64) {
        let gone = s.faults.filter { $0.expired(now) }
        guard !gone.isEmpty else { return }
        s.faults.removeAll { $0.expired(now) }
        if !s.watchers.isEmpty {
            for f in gone { emit(&s, RawEvent(kind: .fault, timeNs: now, text: f.spec.kind.rawValue, count: 2, faultID: f.id)) }
        }
        releaseWorkIfUnheld(&s)
    }

    func releaseWorkIfUnheld(_ s: inout State) {
        if s.workHeld, !s.faults.contains(where: { $0.armed && $0.spec.kind == .hang && $0.spec.stopWork == true }) {
            s.workHeld = false
            device.work.hold(false)
        }
    }

    /// Drops the VMM's connection (the owner's; every connection if nobody owns the device).
    @discardableResult
    func dropOwner(all: Bool = false) -> Int {
        guard let server else { return 0 }
        let owner = device.owner
        return server.dropConnections { all || owner == nil || $0 == owner }
    }

    // MARK: DeviceProbe (under the device lock)

    /// Applies armed `dma` faults (returning the errno the device then sees) and feeds watchers.
    public func dmaWillStart(address: UInt64, count: Int, write: Bool) -> VFIOErrno? {
        withState { s -> VFIOErrno? in
            if s.faults.isEmpty && s.watchers.isEmpty { return nil }
            let now = Clock.monoNs()
            var err: VFIOErrno? = nil
            for i in s.faults.indices where s.faults[i].armed && s.faults[i].spec.kind == .dma && !s.faults[i].expired(now) {
                guard s.faults[i].coversDMA(address: address, count: count, write: write) else { continue }
                err = s.faults[i].errnoValue
                s.faults[i].hits += 1
                if !s.watchers.isEmpty {
                    emit(&s, RawEvent(kind: .fault, timeNs: now, text: "dma", faultID: s.faults[i].id))
                }
                break
            }
            removeExpired(&s, now)
            if !s.watchers.isEmpty {
                emit(&s, RawEvent(kind: .dma, timeNs: now, write: write, offset: address, size: count, errno: err?.rawValue ?? 0))
            }
            return err
        }
    }

    /// Feeds watchers an `irq` event.
    public func interruptSignalled(index: Int, vector: Int) {
        withState { s in
            guard !s.watchers.isEmpty else { return }
            emit(&s, RawEvent(kind: .irq, timeNs: Clock.monoNs(), region: UInt32(index), offset: UInt64(vector)))
        }
    }

    /// A reset ends every fault that does not say `survivesReset` (its jobs are cancelled too).
    func deviceWasReset(_ reason: ResetReason) {
        withState { s in
            let now = Clock.monoNs()
            let gone = s.faults.filter { $0.spec.survivesReset != true }
            s.faults.removeAll { $0.spec.survivesReset != true }
            for i in s.faults.indices { s.faults[i].frozen.removeAll() }
            endPollingLoop(&s)
            s.pollKey = nil
            s.pollRun = 0
            releaseWorkIfUnheld(&s)
            guard !s.watchers.isEmpty else { return }
            emit(&s, RawEvent(kind: .reset, timeNs: now, text: reason.rawValue))
            for f in gone { emit(&s, RawEvent(kind: .fault, timeNs: now, text: f.spec.kind.rawValue, count: 2, faultID: f.id)) }
        }
    }

    /// Time-based triggers and scopes (called by the control server's ticker).
    func tick() {
        var drop = false
        withState { s in
            guard !s.faults.isEmpty else { return }
            let now = Clock.monoNs()
            checkTriggers(&s, key: nil, write: false, data: [], now: now, drop: &drop)
            removeExpired(&s, now)
        }
        if drop { dropOwner() }
    }
}
