import FoundationEssentials
import VFIOUserProtocol

// The control socket's messages (docs/control.md): one JSON object per line each way.

/// A number in a request: a JSON integer, or a string in decimal or "0x" hex.
/// Replies always write it as a "0x" hex string.
public struct Num: Codable, Sendable, Hashable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    /// The number.
    public var value: UInt64
    /// Wraps `v`.
    public init(_ v: UInt64) { value = v }
    /// Wraps an integer literal.
    public init(integerLiteral v: UInt64) { value = v }

    /// Parses "0x1f", "31" or "0b11111".
    public static func parse(_ s: String) -> UInt64? {
        let t = String(s.lowercased().filter { $0 != "_" })
        if t.hasPrefix("0x") { return UInt64(t.dropFirst(2), radix: 16) }
        if t.hasPrefix("0b") { return UInt64(t.dropFirst(2), radix: 2) }
        return UInt64(t)
    }

    /// Decodes a JSON integer, or a decimal or "0x" hex string; throws `DecodingError` for anything else.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(UInt64.self) { value = v; return }
        if let s = try? c.decode(String.self), let v = Num.parse(s) { value = v; return }
        throw DecodingError.dataCorruptedError(in: c, debugDescription: "expected a non-negative integer or a \"0x...\" string")
    }

    /// Encodes the "0x" hex string.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    /// The "0x" hex form (`0x1f`).
    public var description: String { "0x" + String(value, radix: 16) }
}

/// A region by name ("config", "bar0"..."bar5", "rom", "vga") or index (a JSON
/// integer or a decimal string); device-specific regions are "region9", ...
public struct RegionRef: Codable, Sendable, Hashable, CustomStringConvertible {
    /// The region index (`RegionIndex`).
    public var index: UInt32
    /// The region with index `index`.
    public init(_ index: UInt32) { self.index = index }

    /// The region a name or number stands for (case-insensitive; "cfg" too), or nil.
    public static func parse(_ s: String) -> RegionRef? {
        let t = s.lowercased()
        switch t {
        case "config", "cfg": return RegionRef(RegionIndex.config.rawValue)
        case "rom": return RegionRef(RegionIndex.rom.rawValue)
        case "vga": return RegionRef(RegionIndex.vga.rawValue)
        default: break
        }
        if t.hasPrefix("bar"), let n = UInt32(t.dropFirst(3)), n <= 5 { return RegionRef(n) }
        if t.hasPrefix("region"), let n = UInt32(t.dropFirst(6)) { return RegionRef(n) }
        if let n = UInt32(t) { return RegionRef(n) }
        return nil
    }

    /// Decodes a JSON integer or a name `parse(_:)` knows; throws `DecodingError` for anything else.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(UInt32.self) { index = v; return }
        if let s = try? c.decode(String.self), let r = RegionRef.parse(s) { index = r.index; return }
        throw DecodingError.dataCorruptedError(in: c, debugDescription: "expected a region: config, bar0...bar5, rom, vga or an index")
    }

    /// Encodes the name (`description`).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    /// "config", "bar0"..."bar5", "rom", "vga" or "regionN".
    public var description: String {
        switch index {
        case 0...5: "bar\(index)"
        case RegionIndex.rom.rawValue: "rom"
        case RegionIndex.config.rawValue: "config"
        case RegionIndex.vga.rawValue: "vga"
        default: "region\(index)"
        }
    }
}

/// What arms a fault later instead of at once (the spec's `faults` section, or `fault-add`).
public struct FaultTrigger: Codable, Sendable, Equatable {
    /// After this many guest region accesses (reads and writes, any region) since the fault was added.
    public var afterAccesses: Int?
    /// This long after the fault was added.
    public var afterMs: Int?
    /// When a guest writes `value` to `region` + `offset` (any width, value compared in full).
    public var onWrite: WriteMatch?

    /// A guest write to watch for.
    public struct WriteMatch: Codable, Sendable, Equatable {
        /// The region written.
        public var region: RegionRef
        /// The offset written.
        public var offset: Num
        /// The value that arms the fault.
        public var value: Num
        /// A match for `value` written at `region` + `offset`.
        public init(region: RegionRef, offset: Num, value: Num) {
            self.region = region
            self.offset = offset
            self.value = value
        }
    }

    /// A trigger; with none of the three set the fault is armed at once.
    public init(afterAccesses: Int? = nil, afterMs: Int? = nil, onWrite: WriteMatch? = nil) {
        self.afterAccesses = afterAccesses
        self.afterMs = afterMs
        self.onWrite = onWrite
    }
}

/// One fault to inject (docs/control.md lists what each kind uses).
public struct FaultSpec: Codable, Sendable, Equatable {
    /// What the fault does (docs/control.md, "Faults").
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// The device's DMA fails as a bus error.
        case dma
        /// Replies to matching commands are held for `ms`.
        case delay
        /// Matching guest reads return all-ones or a frozen value; `stopWork` stalls the device's jobs.
        case hang
        /// The VMM's connection is dropped, at once or at a matching command.
        case disconnect
        /// Guest reads of config space see `data` at `offset`.
        case config
    }
    /// The fault's kind; the other fields select and shape it.
    public var kind: Kind
    /// Scope: expires after this many hits ...
    public var count: Int?
    /// ... or this long after it was armed; neither: until removed.
    public var durationMs: Int?
    /// Stays armed across device resets (default: a reset removes it).
    public var survivesReset: Bool?
    /// Fires only when this happens first.
    public var trigger: FaultTrigger?
    /// delay / disconnect: only replies to this command (e.g. "REGION_READ").
    public var command: String?
    /// delay / disconnect / hang: only accesses to this region ...
    public var region: RegionRef?
    /// ... that overlap [offset, offset + length) (length default 1).
    public var offset: Num?
    /// Bytes from `offset` that select accesses (default 1).
    public var length: Num?
    /// dma: only DMA overlapping [address, address + size) (default: any).
    public var address: Num?
    /// Bytes from `address` that select DMA.
    public var size: Num?
    /// dma: "read" or "write" (default both).
    public var direction: String?
    /// dma: the errno the device sees, "EFAULT" (default) or "EIO".
    public var errno: String?
    /// delay: how long each reply is held (ms).
    public var ms: Int?
    /// hang: "all-ones" (default) or "frozen" (reads return the value of the first read after arming).
    public var mode: String?
    /// hang: the device's work queue stops running jobs while the fault is armed.
    public var stopWork: Bool?
    /// config: the bytes (hex) guest reads see at `offset` instead of the real ones.
    public var data: String?

    /// A fault of `kind` with every selector at its default.
    public init(kind: Kind) { self.kind = kind }
}

/// A request on the control socket.
public struct ControlRequest: Codable, Sendable {
    /// Echoed in the reply.
    public var id: Int?
    /// The operation: `devices`, `info`, `peek`, `poke`, `irq`, `reset`, `disconnect`, `fault-*`, `stats`, `unmodeled`, `polls`, `watch`.
    public var op: String
    /// Device name (the spec's `name`); optional while the process serves one device.
    public var device: String?
    /// peek / poke: the region.
    public var region: RegionRef?
    /// peek / poke: the offset in the region.
    public var offset: Num?
    /// peek / poke: bytes (peek: default 4, at most 65536; poke with `value`: 1, 2, 4 or 8).
    public var length: Int?
    /// poke: the value to write (little-endian, `length` bytes).
    public var value: Num?
    /// Bytes as hex ("0df0feca").
    public var data: String?
    /// Bypass the device model (no side effects).
    public var raw: Bool?
    /// "intx", "msi", "msix", "err", "req".
    public var irq: String?
    /// irq: the vector within the index.
    public var vector: Int?
    /// irq: lower INTx instead of raising it.
    public var deassert: Bool?
    /// fault-add: the fault.
    public var fault: FaultSpec?
    /// fault-remove: the fault's id.
    public var faultId: Int?
    /// watch: event kinds wanted (default all).
    public var kinds: [String]?
    /// watch: end after this many events; polls: new detection threshold.
    public var limit: Int?
    /// polls: the new detection threshold (reads of one register in a row).
    public var threshold: Int?
    /// disconnect: every connection, not just the owner's.
    public var all: Bool?

    /// A request for `op`, optionally addressed to `device`.
    public init(op: String, device: String? = nil) {
        self.op = op
        self.device = device
    }
}

/// One region of a device, in a `devices` reply.
public struct RegionSummary: Codable, Sendable, Equatable {
    /// The region.
    public var region: RegionRef
    /// Its size in bytes.
    public var size: Num
    /// "registers", "ram", "config", "handler".
    public var backing: String
}

/// One served device, in a `devices` or `info` reply.
public struct DeviceSummary: Codable, Sendable, Equatable {
    /// The spec's name (how requests address it).
    public var name: String
    /// PCI vendor ID.
    public var vendor: Num
    /// PCI device ID.
    public var deviceID: Num
    /// Its non-empty regions.
    public var regions: [RegionSummary]
    /// Vectors per interrupt index (intx, msi, msix, err, req).
    public var irqs: [String: Int]
    /// The session that owns the device, if any.
    public var owner: UInt64?
    /// Device resets so far.
    public var resets: Int
    /// Whether a stopWork hang fault holds the device's work queue.
    public var workHeld: Bool
}

/// One fault, in `fault-add` and `fault-list` replies.
public struct FaultStatus: Codable, Sendable, Equatable {
    /// The id to remove it by.
    public var id: Int
    /// The fault as added.
    public var spec: FaultSpec
    /// "pending" (waiting for its trigger) or "armed".
    public var state: String
    /// Times it fired.
    public var hits: Int
    /// Hits left before it expires (with `count`).
    public var remaining: Int?
    /// Milliseconds left before it expires (with `durationMs`).
    public var expiresInMs: Int?
}

/// Handling statistics of one command, in a `stats` reply.
public struct CommandStats: Codable, Sendable, Equatable {
    /// The command's protocol name (`REGION_READ`).
    public var command: String
    /// How many were handled.
    public var count: UInt64
    /// How many got an error reply.
    public var errors: UInt64
    /// Median server-side handling time (dispatch to reply ready) over the last 4096, microseconds.
    public var p50Us: Double
    /// 90th percentile handling time, microseconds.
    public var p90Us: Double
    /// 99th percentile handling time, microseconds.
    public var p99Us: Double
    /// Longest handling time, microseconds.
    public var maxUs: Double
}

/// Guest accesses to register-BAR bytes no spec register or model handler covers, in an `unmodeled` reply.
public struct UnmodeledAccess: Codable, Sendable, Equatable {
    /// The region.
    public var region: RegionRef
    /// The offset accessed.
    public var offset: Num
    /// Access width in bytes.
    public var size: Int
    /// Reads seen.
    public var reads: UInt64
    /// Writes seen.
    public var writes: UInt64
    /// Seconds since the epoch.
    public var first: Double
    /// Last access, seconds since the epoch.
    public var last: Double
}

/// A polling loop the guest ran, in a `polls` reply.
public struct PollingLoop: Codable, Sendable, Equatable {
    /// The region polled.
    public var region: RegionRef
    /// The register's offset.
    public var offset: Num
    /// Read width in bytes.
    public var size: Int
    /// Reads in the longest unbroken run seen.
    public var longestRun: Int
    /// Runs that passed the threshold.
    public var loops: Int
    /// First detection, seconds since the epoch.
    public var first: Double
    /// Last read, seconds since the epoch.
    public var last: Double
    /// The guest is still in this loop (nothing else was accessed since).
    public var active: Bool
}

/// The reply to a request: `ok` and the fields the request's op fills in.
public struct ControlReply: Codable, Sendable {
    /// The request's `id`, echoed.
    public var id: Int?
    /// Whether the request succeeded; `error` and `reason` say why not.
    public var ok: Bool
    /// Machine-readable error code (docs/control.md) and a sentence for people.
    public var error: String?
    /// A sentence for people.
    public var reason: String?
    /// The device the request went to.
    public var device: String?
    /// peek / poke: the region.
    public var region: RegionRef?
    /// peek / poke: the offset.
    public var offset: Num?
    /// peek: the bytes read, hex.
    public var data: String?
    /// peek: the bytes as a little-endian number (up to 8 bytes).
    public var value: Num?
    /// devices / info: the devices.
    public var devices: [DeviceSummary]?
    /// fault-add: the fault added.
    public var fault: FaultStatus?
    /// fault-list / fault-clear: the faults.
    public var faults: [FaultStatus]?
    /// irq: signalled to the eventfd now (false: pending behind a mask).
    public var delivered: Bool?
    /// stats: one entry per command seen.
    public var stats: [CommandStats]?
    /// unmodeled: the accesses.
    public var unmodeled: [UnmodeledAccess]?
    /// polls: the loops.
    public var polls: [PollingLoop]?
    /// polls: the threshold in force.
    public var threshold: Int?
    /// disconnect: connections dropped.
    public var dropped: Int?
    /// watch: the stream of events follows.
    public var watching: Bool?

    /// A reply with only `id` and `ok` set.
    public init(id: Int?, ok: Bool) {
        self.id = id
        self.ok = ok
    }

    /// An error reply with a machine-readable `code` and a `reason` for people.
    public static func failure(_ id: Int?, _ code: String, _ reason: String) -> ControlReply {
        var r = ControlReply(id: id, ok: false)
        r.error = code
        r.reason = reason
        return r
    }
}

/// One line of a `watch` stream.
public struct ControlEvent: Codable, Sendable, Equatable {
    /// "access", "dma", "irq", "reset", "poll", "fault", "overflow".
    public var event: String
    /// Increases by one per event of the device: the order the device saw them.
    public var seq: UInt64
    /// Seconds since the epoch (microseconds).
    public var time: Double
    /// The device's name.
    public var device: String
    /// The client connection (session) whose command it was.
    public var conn: UInt64?
    /// access, dma: "read" or "write".
    public var op: String?
    /// access: the command that carried it (`REGION_WRITE`, ...).
    public var command: String?
    /// access, poll: the region.
    public var region: RegionRef?
    /// access, poll: the offset.
    public var offset: Num?
    /// access, dma, poll: bytes.
    public var size: Int?
    /// Accesses of 1...8 bytes: the value (little-endian); longer ones: `data`.
    public var value: Num?
    /// access: the bytes, hex, for accesses longer than 8 bytes.
    public var data: String?
    /// The errno the access or DMA failed with.
    public var error: String?
    /// dma: the address in client memory.
    public var address: Num?
    /// irq: the index (`intx`, `msi`, ...).
    public var irq: String?
    /// irq: the vector.
    public var vector: Int?
    /// reset: why (`deviceReset`, `functionLevelReset`, `disconnect`); fault: `armed`, `hit` or `removed`.
    public var reason: String?
    /// poll: reads in the run; overflow: events dropped.
    public var count: Int?
    /// fault: the fault's id.
    public var faultId: Int?
    /// fault: the fault's kind.
    public var kind: String?
}

/// Hex encoding of bytes for requests and replies ("0df0feca").
public enum Hex {
    /// Two lowercase hex digits per byte, no separators.
    public static func encode<C: Collection>(_ b: C) -> String where C.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(b.count * 2)
        for x in b { out.append(digits[Int(x >> 4)]); out.append(digits[Int(x & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes of `s` (an optional "0x", spaces and underscores allowed), or nil for odd lengths and non-hex digits.
    public static func decode(_ s: String) -> [UInt8]? {
        var t = Array(s.utf8.filter { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "_") })
        if t.count >= 2, t[0] == UInt8(ascii: "0"), t[1] | 0x20 == UInt8(ascii: "x") { t.removeFirst(2) }
        guard t.count % 2 == 0 else { return nil }
        func nib(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        var out = [UInt8]()
        var i = 0
        while i < t.count {
            guard let h = nib(t[i]), let l = nib(t[i + 1]) else { return nil }
            out.append(h << 4 | l)
            i += 2
        }
        return out
    }
}

/// The little-endian value of up to 8 bytes.
func leValue<C: Collection>(_ b: C) -> UInt64 where C.Element == UInt8 {
    var v: UInt64 = 0
    for (i, x) in b.prefix(8).enumerated() { v |= UInt64(x) << (8 * UInt64(i)) }
    return v
}

/// JSON for one line: compact, keys sorted so output is stable.
enum LineJSON {
    static func encode<T: Encodable>(_ v: T) -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var bytes = (try? [UInt8](e.encode(v))) ?? Array("{\"ok\":false,\"error\":\"internal\"}".utf8)
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }
}
