import ArgumentParser
import FoundationEssentials
import VFIOUserControl

struct CtlFault: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fault", abstract: "Add, list and remove injected faults.",
        subcommands: [CtlFaultAdd.self, CtlFaultList.self, CtlFaultRemove.self, CtlFaultClear.self])
}

func faultLine(_ f: FaultStatus) -> String {
    var parts = ["fault \(f.id)", f.state, f.spec.kind.rawValue, "hits=\(f.hits)"]
    if let r = f.remaining { parts.append("remaining=\(r)") }
    if let e = f.expiresInMs { parts.append("expires-in=\(e)ms") }
    if f.spec.survivesReset == true { parts.append("survives-reset") }
    return parts.joined(separator: " ")
}

struct CtlFaultAdd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Arm a fault: dma, delay, hang, disconnect or config (docs/control.md).")
    @OptionGroup var options: CtlOptions
    @Argument(help: "dma, delay, hang, disconnect or config.") var kind: String
    @Option(help: "Expire after this many hits.") var count: Int?
    @Option(help: "Expire this long after arming (ms).") var durationMs: Int?
    @Flag(help: "Stay armed across device resets.") var survivesReset = false
    @Option(help: "Only this command (delay, disconnect), e.g. REGION_READ.") var command: String?
    @Option(help: "Only accesses to this region (delay, disconnect, hang).") var region: String?
    @Option(help: "Offset of the range (with --region; config: of the corrupted bytes).") var offset: String?
    @Option(help: "Length of the range in bytes.") var length: String?
    @Option(help: "dma: only DMA overlapping this address ...") var address: String?
    @Option(help: "dma: ... and this many bytes.") var size: String?
    @Option(help: "dma: read or write only.") var direction: String?
    @Option(help: "dma: EFAULT (default) or EIO.") var errno: String?
    @Option(help: "delay: how long each reply is held (ms).") var ms: Int?
    @Option(help: "hang: all-ones (default) or frozen.") var mode: String?
    @Flag(help: "hang: the device's engine stops completing work.") var stopWork = false
    @Option(help: "config: the bytes (hex) guest reads see.") var data: String?
    @Option(help: "Arm after this many guest accesses.") var afterAccesses: Int?
    @Option(help: "Arm after this long (ms).") var afterMs: Int?
    @Option(help: "Arm when the guest writes VALUE to REGION:OFFSET, given as REGION:OFFSET=VALUE.") var onWrite: String?

    func run() throws {
        guard let k = FaultSpec.Kind(rawValue: kind) else {
            throw ValidationError("kind must be one of \(FaultSpec.Kind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var f = FaultSpec(kind: k)
        f.count = count
        f.durationMs = durationMs
        f.survivesReset = survivesReset ? true : nil
        f.command = command
        f.region = try region.map(parseRegion)
        f.offset = try offset.map { try parseNum($0, "offset") }
        f.length = try length.map { try parseNum($0, "length") }
        f.address = try address.map { try parseNum($0, "address") }
        f.size = try size.map { try parseNum($0, "size") }
        f.direction = direction
        f.errno = errno
        f.ms = ms
        f.mode = mode
        f.stopWork = stopWork ? true : nil
        f.data = data
        if afterAccesses != nil || afterMs != nil || onWrite != nil {
            var t = FaultTrigger(afterAccesses: afterAccesses, afterMs: afterMs)
            if let w = onWrite {
                let parts = w.split(separator: "=", maxSplits: 1).map(String.init)
                let loc = parts.first?.split(separator: ":").map(String.init) ?? []
                guard parts.count == 2, loc.count == 2 else { throw ValidationError("--on-write wants REGION:OFFSET=VALUE, e.g. bar0:0x8=0x1") }
                t.onWrite = .init(region: try parseRegion(loc[0]), offset: try parseNum(loc[1], "offset"), value: try parseNum(parts[1], "value"))
            }
            f.trigger = t
        }
        var q = ControlRequest(op: "fault-add")
        q.fault = f
        try ctlCall(options, q) { r in r.fault.map(faultLine) ?? "" }
    }
}

struct CtlFaultList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List armed and pending faults.")
    @OptionGroup var options: CtlOptions
    func run() throws {
        try ctlCall(options, ControlRequest(op: "fault-list")) { r in (r.faults ?? []).map(faultLine).joined(separator: "\n") }
    }
}

struct CtlFaultRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove a fault by id.")
    @OptionGroup var options: CtlOptions
    @Argument var id: Int
    func run() throws {
        var q = ControlRequest(op: "fault-remove")
        q.faultId = id
        try ctlCall(options, q) { _ in "removed fault \(id)" }
    }
}

struct CtlFaultClear: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "clear", abstract: "Remove every fault.")
    @OptionGroup var options: CtlOptions
    func run() throws {
        try ctlCall(options, ControlRequest(op: "fault-clear")) { r in "removed \(r.faults?.count ?? 0) fault(s)" }
    }
}
