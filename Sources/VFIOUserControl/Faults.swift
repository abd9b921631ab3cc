import VFIOUserProtocol

/// A fault spec that failed validation: the field (inside the fault) and why.
public struct FaultSpecError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The field inside the fault (`trigger.onWrite.offset`).
    public var field: String
    /// Why the value is refused.
    public var reason: String
    /// `field: reason`.
    public var description: String { "\(field): \(reason)" }
}

/// The limits a fault is checked against: the device's regions (index → size).
public struct FaultLimits: Sendable {
    /// Size of each region the device has, by index.
    public var regionSizes: [UInt32: UInt64]
    /// Bytes of config space.
    public var configSize: Int
    /// Limits from the device's region sizes and config size.
    public init(regionSizes: [UInt32: UInt64], configSize: Int) {
        self.regionSizes = regionSizes
        self.configSize = configSize
    }
}

/// Names of the commands a fault may select, in the wire's spelling.
func commandNamed(_ s: String) -> Command? {
    (1...18).map { Command(UInt16($0)) }.first { $0.description == s.uppercased() }
}

func errnoNamed(_ s: String) -> VFIOErrno? {
    (1...125).map { VFIOErrno(UInt32($0)) }.first { $0.description == s.uppercased() }
}

extension FaultSpec {
    /// Checks that the fault makes sense for a device with `limits`; the error names
    /// the field of the fault and the reason (the spec loader prefixes its path).
    public func validate(_ limits: FaultLimits) throws(FaultSpecError) {
        func fail(_ f: String, _ r: String) -> FaultSpecError { FaultSpecError(field: f, reason: r) }
        if let c = count, c < 1 { throw fail("count", "must be at least 1 (omit it for no limit)") }
        if let d = durationMs, d < 1 { throw fail("durationMs", "must be at least 1 ms (omit it for no limit)") }
        if let t = trigger {
            let n = [t.afterAccesses != nil, t.afterMs != nil, t.onWrite != nil].filter { $0 }.count
            guard n == 1 else { throw fail("trigger", "give exactly one of afterAccesses, afterMs, onWrite") }
            if let a = t.afterAccesses, a < 1 { throw fail("trigger.afterAccesses", "must be at least 1") }
            if let a = t.afterMs, a < 1 { throw fail("trigger.afterMs", "must be at least 1") }
            if let w = t.onWrite {
                guard let size = limits.regionSizes[w.region.index] else {
                    throw fail("trigger.onWrite.region", "the device has no region \(w.region)")
                }
                guard w.offset.value < size else { throw fail("trigger.onWrite.offset", "\(w.offset) is past the end of \(w.region) (\(size) bytes)") }
            }
        }
        if let c = command, commandNamed(c) == nil { throw fail("command", "unknown command '\(c)' (e.g. REGION_READ, DMA_MAP)") }
        if let r = region {
            guard let size = limits.regionSizes[r.index] else { throw fail("region", "the device has no region \(r)") }
            let off = offset?.value ?? 0, len = length?.value ?? 1
            guard len >= 1 else { throw fail("length", "must be at least 1") }
            guard off < size, len <= size - off else {
                throw fail(offset == nil ? "length" : "offset", "[\(Num(off)), \(Num(off &+ len))) is outside \(r) (\(size) bytes)")
            }
        } else if offset != nil || length != nil, kind != .config {
            throw fail("region", "offset and length need a region")
        }
        let unused: [(String, Bool)]
        switch kind {
        case .dma:
            if let d = direction, d != "read" && d != "write" { throw fail("direction", "must be \"read\" or \"write\"") }
            if let e = errno, errnoNamed(e) == nil { throw fail("errno", "unknown errno '\(e)' (EFAULT or EIO)") }
            if let s = size, s.value == 0 { throw fail("size", "must be at least 1") }
            if size != nil, address == nil { throw fail("address", "size needs an address") }
            unused = [("ms", ms != nil), ("mode", mode != nil), ("data", data != nil), ("command", command != nil), ("region", region != nil)]
        case .delay:
            guard let ms, (1...60_000).contains(ms) else { throw fail("ms", "a delay needs ms, 1...60000") }
            unused = [("address", address != nil), ("mode", mode != nil), ("data", data != nil)]
        case .hang:
            if let m = mode, m != "all-ones" && m != "frozen" { throw fail("mode", "must be \"all-ones\" or \"frozen\"") }
            unused = [("address", address != nil), ("ms", ms != nil), ("data", data != nil), ("command", command != nil)]
        case .disconnect:
            unused = [("address", address != nil), ("ms", ms != nil), ("data", data != nil), ("mode", mode != nil)]
        case .config:
            guard let off = offset else { throw fail("offset", "a config fault needs the offset of the bytes it corrupts") }
            guard let d = data, let bytes = Hex.decode(d), !bytes.isEmpty else { throw fail("data", "a config fault needs data: the bytes (hex) guest reads see") }
            guard off.value < UInt64(limits.configSize), UInt64(bytes.count) <= UInt64(limits.configSize) - off.value else {
                throw fail("data", "\(bytes.count) byte(s) at \(off) pass the end of config space (\(limits.configSize) bytes)")
            }
            if let r = region, r.index != RegionIndex.config.rawValue { throw fail("region", "a config fault is in config space") }
            unused = [("address", address != nil), ("ms", ms != nil), ("mode", mode != nil), ("command", command != nil), ("length", length != nil)]
        }
        if let (f, _) = unused.first(where: { $0.1 }) { throw fail(f, "a \(kind.rawValue) fault does not use \(f)") }
    }
}

/// A fault the monitor holds: its spec and its progress. Guarded by the monitor's lock.
struct ActiveFault {
    let id: Int
    let spec: FaultSpec
    var armed: Bool
    let addedNs: UInt64
    var armedNs: UInt64
    var hits = 0
    /// Guest accesses counted when it was added (afterAccesses triggers).
    let accessBase: UInt64
    /// hang/frozen: what each register read first after arming.
    var frozen: [AccessKey: [UInt8]] = [:]
    let command: Command?
    let errnoValue: VFIOErrno

    init(id: Int, spec: FaultSpec, nowNs: UInt64, accesses: UInt64) {
        self.id = id
        self.spec = spec
        armed = spec.trigger == nil
        addedNs = nowNs
        armedNs = nowNs
        accessBase = accesses
        command = spec.command.flatMap(commandNamed)
        errnoValue = spec.errno.flatMap(errnoNamed) ?? .EFAULT
    }

    /// Whether its scope is used up at `nowNs`.
    func expired(_ nowNs: UInt64) -> Bool {
        if let c = spec.count, hits >= c { return true }
        // A disconnect that selects nothing is done once it has dropped the connection.
        if spec.kind == .disconnect, spec.command == nil, spec.region == nil, hits > 0 { return true }
        if armed, let d = spec.durationMs, nowNs >= armedNs + UInt64(d) * 1_000_000 { return true }
        return false
    }

    /// Whether an access of `region` [offset, offset + size) is inside the fault's range.
    func covers(region: UInt32, offset: UInt64, size: Int) -> Bool {
        guard let r = spec.region else { return true }
        guard r.index == region else { return false }
        let lo = spec.offset?.value ?? 0
        let hi = spec.offset == nil && spec.length == nil ? UInt64.max : lo &+ (spec.length?.value ?? 1)
        return offset < hi && lo < offset &+ UInt64(size)
    }

    func coversDMA(address: UInt64, count: Int, write: Bool) -> Bool {
        if let d = spec.direction, (d == "write") != write { return false }
        guard let a = spec.address?.value else { return true }
        let end = spec.size.map { a &+ $0.value } ?? a &+ 1
        return address < end && a < address &+ UInt64(max(count, 1))
    }

    func status(_ nowNs: UInt64) -> FaultStatus {
        var left: Int? = nil
        if armed, let d = spec.durationMs {
            let end = armedNs + UInt64(d) * 1_000_000
            left = nowNs >= end ? 0 : Int((end - nowNs) / 1_000_000)
        }
        return FaultStatus(id: id, spec: spec, state: armed ? "armed" : "pending", hits: hits,
                           remaining: spec.count.map { max($0 - hits, 0) }, expiresInMs: left)
    }
}

/// A register access, as the statistics and faults key it.
struct AccessKey: Hashable, Sendable {
    var region: UInt32
    var offset: UInt64
    var size: Int
}
