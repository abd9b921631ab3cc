@_spi(Server) import PCICore
import VFIOUserProtocol

/// A request refused: its error code (docs/control.md) and reason.
struct Refusal: Error {
    var code: String
    var reason: String
    init(_ code: String, _ reason: String) {
        self.code = code
        self.reason = reason
    }
}

/// The requests that act on one device.
extension ControlledDevice {
    static let maxAccess = 1 << 16

    func handle(_ q: ControlRequest) throws(Refusal) -> ControlReply {
        var r = ControlReply(id: q.id, ok: true)
        r.device = name
        switch q.op {
        case "info": r.devices = [summary()]
        case "peek": try peek(q, &r)
        case "poke": try poke(q, &r)
        case "irq": r.delivered = try interrupt(q)
        case "reset":
            device.reset(.deviceReset)
        case "disconnect": r.dropped = dropOwner(all: q.all ?? false)
        case "fault-add":
            guard let spec = q.fault else { throw Refusal("bad-request", "fault-add needs a fault object") }
            r.fault = try addFault(spec)
        case "fault-list": r.faults = faultList()
        case "fault-remove":
            guard let id = q.faultId else { throw Refusal("bad-request", "fault-remove needs faultId") }
            guard removeFault(id) else { throw Refusal("not-found", "no fault \(id) is armed or pending (it may have expired or been removed by a reset)") }
        case "fault-clear": r.faults = clearFaults()
        case "stats": r.stats = stats()
        case "unmodeled": r.unmodeled = unmodeledReport()
        case "polls":
            if let t = q.threshold {
                guard t >= 1 else { throw Refusal("bad-request", "threshold must be at least 1") }
                withState { $0.pollThreshold = t }
            }
            (r.polls, r.threshold) = pollReport()
        default:
            throw Refusal("unknown-op", "unknown op '\(q.op)'")
        }
        return r
    }

    func summary() -> DeviceSummary {
        var regions: [RegionSummary] = []
        for i in 0..<device.regionCount {
            guard let reg = device.region(UInt32(i)), reg.size > 0 else { continue }
            let backing: String
            switch reg.backing {
            case .memory: backing = "ram"
            case .composite: backing = device.registerFiles[i] != nil ? "registers" : "handler"
            case .handler: backing = UInt32(i) == RegionIndex.config.rawValue ? "config" : "handler"
            }
            regions.append(RegionSummary(region: RegionRef(UInt32(i)), size: Num(reg.size), backing: backing))
        }
        var irqs: [String: Int] = [:]
        device.lock.withLock {
            for (k, n) in ["intx", "msi", "msix", "err", "req"].enumerated() { irqs[n] = device.interrupts.indices[k].count }
        }
        let held = withState { $0.workHeld }
        return DeviceSummary(name: name, vendor: Num(UInt64(device.configuration.identity.vendor)),
                             deviceID: Num(UInt64(device.configuration.identity.device)), regions: regions, irqs: irqs,
                             owner: device.owner, resets: device.resetCount, workHeld: held)
    }

    // MARK: Peek and poke

    private func range(_ q: ControlRequest, count: Int) throws(Refusal) -> (Region, UInt64) {
        guard let ref = q.region else { throw Refusal("bad-request", "\(q.op) needs a region") }
        guard let reg = device.region(ref.index), reg.size > 0 else {
            throw Refusal("unknown-region", "the device has no region \(ref)")
        }
        guard let off = q.offset?.value else { throw Refusal("bad-request", "\(q.op) needs an offset") }
        guard count >= 1, count <= Self.maxAccess else {
            throw Refusal("out-of-range", "length \(count) is not in 1...\(Self.maxAccess)")
        }
        guard off < reg.size, UInt64(count) <= reg.size - off else {
            throw Refusal("out-of-range", "\(ref) is \(reg.size) bytes (\(Num(reg.size))): [\(Num(off)), \(Num(off &+ UInt64(count)))) is past its end")
        }
        return (reg, off)
    }

    /// Refuses raw access where a device model serves the bytes (its state is its own).
    private func rawTarget(_ reg: Region, _ off: UInt64, _ n: Int) throws(Refusal) -> RawTarget {
        let i = Int(reg.index)
        if reg.index == RegionIndex.config.rawValue { return .config }
        if case .memory(let m) = reg.backing { return .memory(m) }
        if let rf = device.registerFiles[i], let mux = device.barHandlers[i] {
            if let e = mux.entries.first(where: { $0.range.overlaps(off..<(off + UInt64(n))) }) {
                throw Refusal("raw-unsupported", "\(RegionRef(reg.index)) [\(Num(e.range.lowerBound)), \(Num(e.range.upperBound))) is served by a device model; raw access reaches only the register file, config store and RAM: leave out raw")
            }
            return .registers(rf)
        }
        throw Refusal("raw-unsupported", "\(RegionRef(reg.index)) is served by a device model only; leave out raw")
    }

    enum RawTarget { case config, memory(SharedMemory), registers(RegisterFile) }

    func peek(_ q: ControlRequest, _ r: inout ControlReply) throws(Refusal) {
        let n = q.length ?? 4
        let (reg, off) = try range(q, count: n)
        var bytes: [UInt8]
        if q.raw == true {
            let t = try rawTarget(reg, off, n)
            bytes = device.lock.withLock { () -> [UInt8] in
                switch t {
                case .config: return Array(device.config.bytes[Int(off)..<(Int(off) + n)])
                case .memory(let m): return (try? m.read(offset: off, count: n)) ?? []
                case .registers(let rf): return Array(rf.bytes[Int(off)..<(Int(off) + n)])
                }
            }
        } else {
            do { bytes = try device.readRegion(index: reg.index, offset: off, count: n) } catch {
                throw Refusal("device-error", "the device refused the read: \(error)\(hint(error, reg))")
            }
        }
        r.region = RegionRef(reg.index)
        r.offset = Num(off)
        r.data = Hex.encode(bytes)
        if bytes.count <= 8 { r.value = Num(leValue(bytes)) }
    }

    func poke(_ q: ControlRequest, _ r: inout ControlReply) throws(Refusal) {
        let bytes: [UInt8]
        if let d = q.data {
            guard let b = Hex.decode(d), !b.isEmpty else { throw Refusal("bad-request", "data must be hex bytes, e.g. \"0df0feca\"") }
            bytes = b
        } else if let v = q.value?.value {
            let n = q.length ?? 4
            guard [1, 2, 4, 8].contains(n) else { throw Refusal("bad-request", "a value is written as 1, 2, 4 or 8 bytes (use data for others)") }
            guard n == 8 || v >> (8 * UInt64(n)) == 0 else { throw Refusal("bad-request", "\(Num(v)) does not fit in \(n) byte(s)") }
            bytes = (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) }
        } else {
            throw Refusal("bad-request", "poke needs value (with length) or data")
        }
        let (reg, off) = try range(q, count: bytes.count)
        if q.raw == true {
            let t = try rawTarget(reg, off, bytes.count)
            device.lock.withLock {
                switch t {
                case .config: for (k, b) in bytes.enumerated() { device.config.store8(b, Int(off) + k) }
                case .memory(let m): try? m.write(offset: off, data: bytes[...])
                case .registers(let rf): rf.storeRaw(offset: Int(off), bytes)
                }
            }
        } else {
            do { try device.writeRegion(index: reg.index, offset: off, data: bytes[...]) } catch {
                throw Refusal("device-error", "the device refused the write: \(error)\(hint(error, reg))")
            }
        }
        r.region = RegionRef(reg.index)
        r.offset = Num(off)
    }

    private func hint(_ e: VFIOErrno, _ reg: Region) -> String {
        e == .EIO && reg.index <= 5 ? " (the BAR does not decode: the guest has not set Memory/IO Space Enable; raw reaches it anyway)" : ""
    }

    // MARK: Interrupts

    func interrupt(_ q: ControlRequest) throws(Refusal) -> Bool {
        guard let name = q.irq else { throw Refusal("bad-request", "irq needs irq: intx, msi, msix, err or req") }
        let indices: [String: IRQIndex] = ["intx": .intx, "msi": .msi, "msix": .msix, "err": .err, "req": .req]
        guard let index = indices[name.lowercased()] else { throw Refusal("bad-request", "unknown interrupt '\(name)' (intx, msi, msix, err, req)") }
        let vector = q.vector ?? 0
        if q.deassert == true {
            guard index == .intx else { throw Refusal("bad-request", "only INTx is a level; \(index) is an edge") }
            guard device.lock.withLock({ device.interrupts.indices[0].count }) > 0 else { throw Refusal("not-enabled", "the device has no INTx") }
            device.deassertINTx()
            return false
        }
        if let why = device.interruptUnavailable(index, vector: vector) { throw Refusal("not-enabled", why) }
        return device.lock.withLock { () -> Bool in
            let before = device.interrupts.delivered[Int(index.rawValue)]
            if index == .intx { device.interrupts.assertINTx() } else { device.interrupts.trigger(index, vector: vector) }
            return device.interrupts.delivered[Int(index.rawValue)] != before
        }
    }

    // MARK: Faults

    func addFault(_ spec: FaultSpec) throws(Refusal) -> FaultStatus {
        do { try spec.validate(limits) } catch { throw Refusal("bad-fault", "fault.\(error.field): \(error.reason)") }
        var drop = false
        let st = withState { s -> FaultStatus in
            let now = Clock.monoNs()
            let f = ActiveFault(id: s.nextFaultID, spec: spec, nowNs: now, accesses: s.accesses)
            s.nextFaultID += 1
            s.faults.append(f)
            let status = f.status(now)
            if f.armed {
                s.faults[s.faults.count - 1].armed = false
                arm(&s, s.faults.count - 1, now: now, drop: &drop)
                removeExpired(&s, now)
            }
            return status
        }
        if drop { dropOwner() }
        return st
    }

    func faultList() -> [FaultStatus] {
        withState { s in
            let now = Clock.monoNs()
            removeExpired(&s, now)
            return s.faults.map { $0.status(now) }
        }
    }

    func removeFault(_ id: Int) -> Bool {
        withState { s in
            guard s.faults.contains(where: { $0.id == id }) else { return false }
            s.faults.removeAll { $0.id == id }
            releaseWorkIfUnheld(&s)
            return true
        }
    }

    func clearFaults() -> [FaultStatus] {
        withState { s in
            let now = Clock.monoNs()
            let all = s.faults.map { $0.status(now) }
            s.faults.removeAll()
            releaseWorkIfUnheld(&s)
            return all
        }
    }

    // MARK: Reports

    func stats() -> [CommandStats] {
        withState { s in
            s.stats.indices.filter { s.stats[$0].count > 0 }.map { s.stats[$0].stats($0 == 31 ? "OTHER" : Command(UInt16($0)).description) }
        }
    }

    func unmodeledReport() -> [UnmodeledAccess] {
        withState { s in
            s.unmodeled.sorted { ($0.key.region, $0.key.offset, $0.key.size) < ($1.key.region, $1.key.offset, $1.key.size) }.map {
                UnmodeledAccess(region: RegionRef($0.key.region), offset: Num($0.key.offset), size: $0.key.size,
                                reads: $0.value.reads, writes: $0.value.writes, first: Clock.seconds($0.value.first),
                                last: Clock.seconds($0.value.last))
            }
        }
    }

    func pollReport() -> ([PollingLoop], Int) {
        withState { s in
            var polls = s.polls
            // The loop the guest is in right now, as it stands.
            if s.pollInLoop, let k = s.pollKey {
                if var e = polls[k] {
                    e.longestRun = max(e.longestRun, s.pollRun)
                    e.last = s.pollLast
                    e.active = true
                    polls[k] = e
                }
            }
            let loops = polls.sorted { ($0.key.region, $0.key.offset) < ($1.key.region, $1.key.offset) }.map {
                PollingLoop(region: RegionRef($0.key.region), offset: Num($0.key.offset), size: $0.key.size,
                            longestRun: $0.value.longestRun, loops: $0.value.loops, first: Clock.seconds($0.value.first),
                            last: Clock.seconds($0.value.last), active: $0.value.active)
            }
            return (loops, s.pollThreshold)
        }
    }
}
