import ArgumentParser
import FoundationEssentials
import Glibc
import VFIOUserControl

/// Options every `vfu ctl` command takes (given before or after the command's name).
struct CtlOptions: ParsableArguments {
    @Option(help: "The control socket (vfu serve --control PATH).")
    var control: String

    @Option(help: "Device name (the spec's name); needed when the process serves several.")
    var device: String?

    @Flag(help: "Print the reply as one JSON object.")
    var json = false
}

struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Drive a running `vfu serve --control` device: peek, poke, interrupts, faults, watch.",
        discussion: """
            Every command sends one JSON request on the control socket and prints the reply \
            (--json: as JSON). A refused request prints its error code and reason and exits 1. \
            The protocol is in docs/control.md.
            """,
        subcommands: [CtlDevices.self, CtlPeek.self, CtlPoke.self, CtlIRQ.self, CtlReset.self, CtlDisconnect.self,
                      CtlFault.self, CtlWatch.self, CtlStats.self, CtlUnmodeled.self, CtlPolls.self])

    @OptionGroup var options: CtlOptions
}

/// Sends `q` and prints the reply with `text` (or as JSON); exits 1 when refused.
func ctlCall(_ o: CtlOptions, _ q: ControlRequest, text: (ControlReply) -> String) throws {
    var q = q
    q.device = q.device ?? o.device
    let client: ControlClient
    do { client = try ControlClient(path: o.control) } catch {
        printError("vfu ctl: error: cannot connect to \(o.control): \(error)")
        throw ExitCode(2)
    }
    defer { client.close() }
    let reply: ControlReply
    do { reply = try client.call(q) } catch {
        printError("vfu ctl: error: \(error)")
        throw ExitCode(2)
    }
    if o.json {
        print(ctlJSON(reply))
    } else if reply.ok {
        let t = text(reply)
        if !t.isEmpty { print(t) }
    }
    if !reply.ok {
        if !o.json { printError("vfu ctl: error: \(reply.error ?? "?"): \(reply.reason ?? "")") }
        throw ExitCode(1)
    }
}

func ctlJSON<T: Encodable>(_ v: T) -> String {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return (try? e.encode(v)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
}

func parseNum(_ s: String, _ what: String) throws -> Num {
    guard let v = Num.parse(s) else { throw ValidationError("\(what) '\(s)' is not a number (decimal or 0x hex)") }
    return Num(v)
}

func parseRegion(_ s: String) throws -> RegionRef {
    guard let r = RegionRef.parse(s) else { throw ValidationError("region '\(s)' is not config, bar0...bar5, rom, vga or an index") }
    return r
}

struct CtlDevices: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "devices", abstract: "List the devices, their regions and interrupts.")
    @OptionGroup var options: CtlOptions
    func run() throws {
        try ctlCall(options, ControlRequest(op: "devices")) { r in
            (r.devices ?? []).map { d in
                let regions = d.regions.map { "\($0.region)=\($0.size)(\($0.backing))" }.joined(separator: " ")
                let irqs = ["intx", "msi", "msix", "err", "req"].map { "\($0):\(d.irqs[$0] ?? 0)" }.joined(separator: " ")
                return "\(d.name) \(d.vendor):\(d.deviceID) owner=\(d.owner.map { "\($0)" } ?? "none") resets=\(d.resets)\n  regions: \(regions)\n  irqs: \(irqs)"
            }.joined(separator: "\n")
        }
    }
}

struct CtlPeek: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "peek", abstract: "Read a register, config-space or RAM range.")
    @OptionGroup var options: CtlOptions
    @Argument(help: "Region: config, bar0...bar5, rom, or an index.") var region: String
    @Argument(help: "Byte offset (decimal or 0x hex).") var offset: String
    @Option(help: "Bytes to read.") var length = 4
    @Flag(help: "Read the stored bytes without the device model (no side effects).") var raw = false
    func run() throws {
        var q = ControlRequest(op: "peek")
        q.region = try parseRegion(region)
        q.offset = try parseNum(offset, "offset")
        q.length = length
        q.raw = raw
        try ctlCall(options, q) { r in r.value.map { "\($0)" } ?? (r.data ?? "") }
    }
}

struct CtlPoke: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "poke", abstract: "Write a register, config-space or RAM range.")
    @OptionGroup var options: CtlOptions
    @Argument(help: "Region: config, bar0...bar5, rom, or an index.") var region: String
    @Argument(help: "Byte offset (decimal or 0x hex).") var offset: String
    @Argument(help: "Value (written little-endian in --length bytes); or use --data.") var value: String?
    @Option(help: "Bytes of the value: 1, 2, 4 or 8.") var length = 4
    @Option(help: "Bytes to write, as hex (instead of a value).") var data: String?
    @Flag(help: "Store the bytes without the device model (no side effects).") var raw = false
    func validate() throws {
        guard (value == nil) != (data == nil) else { throw ValidationError("give a value or --data") }
    }
    func run() throws {
        var q = ControlRequest(op: "poke")
        q.region = try parseRegion(region)
        q.offset = try parseNum(offset, "offset")
        if let value { q.value = try parseNum(value, "value"); q.length = length }
        q.data = data
        q.raw = raw
        try ctlCall(options, q) { _ in "" }
    }
}

struct CtlIRQ: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "irq", abstract: "Raise an interrupt: assert INTx, trigger an MSI/MSI-X vector, ERR or REQ.",
        discussion: "Refused (not-enabled) when the guest has not enabled that interrupt.")
    @OptionGroup var options: CtlOptions
    @Argument(help: "intx, msi, msix, err or req.") var irq: String
    @Option(help: "Vector (MSI, MSI-X).") var vector = 0
    @Flag(help: "Deassert INTx instead.") var deassert = false
    func run() throws {
        var q = ControlRequest(op: "irq")
        q.irq = irq
        q.vector = vector
        q.deassert = deassert
        try ctlCall(options, q) { r in
            deassert ? "intx deasserted" : "\(irq) vector \(vector): \(r.delivered == true ? "delivered" : "pending (masked or automasked)")"
        }
    }
}

struct CtlReset: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reset", abstract: "Reset the device (as DEVICE_RESET); faults without survivesReset end.")
    @OptionGroup var options: CtlOptions
    func run() throws { try ctlCall(options, ControlRequest(op: "reset")) { _ in "reset" } }
}

struct CtlDisconnect: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "disconnect", abstract: "Drop the VMM's connection (surprise removal).")
    @OptionGroup var options: CtlOptions
    @Flag(help: "Drop every client connection, not just the owner's.") var all = false
    func run() throws {
        var q = ControlRequest(op: "disconnect")
        q.all = all
        try ctlCall(options, q) { r in "dropped \(r.dropped ?? 0) connection(s)" }
    }
}

struct CtlStats: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stats", abstract: "Commands handled, with latency percentiles.")
    @OptionGroup var options: CtlOptions
    func run() throws {
        try ctlCall(options, ControlRequest(op: "stats")) { r in
            (r.stats ?? []).map {
                "\($0.command): count=\($0.count) errors=\($0.errors) p50=\($0.p50Us)us p90=\($0.p90Us)us p99=\($0.p99Us)us max=\($0.maxUs)us"
            }.joined(separator: "\n")
        }
    }
}

struct CtlUnmodeled: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "unmodeled", abstract: "Guest accesses to offsets no register or handler models.")
    @OptionGroup var options: CtlOptions
    func run() throws {
        try ctlCall(options, ControlRequest(op: "unmodeled")) { r in
            (r.unmodeled ?? []).map { "\($0.region)+\($0.offset) size=\($0.size) reads=\($0.reads) writes=\($0.writes) first=\($0.first) last=\($0.last)" }
                .joined(separator: "\n")
        }
    }
}

struct CtlPolls: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "polls", abstract: "Polling loops: one register read more than a threshold of times with nothing between.")
    @OptionGroup var options: CtlOptions
    @Option(help: "Set the detection threshold (reads).") var threshold: Int?
    func run() throws {
        var q = ControlRequest(op: "polls")
        q.threshold = threshold
        try ctlCall(options, q) { r in
            (["threshold \(r.threshold ?? 0)"] + (r.polls ?? []).map {
                "\($0.region)+\($0.offset) size=\($0.size) longest=\($0.longestRun) loops=\($0.loops) active=\($0.active)"
            }).joined(separator: "\n")
        }
    }
}

struct CtlWatch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch", abstract: "Stream events as JSON lines: guest accesses, DMA, interrupts, resets, polls, faults.")
    @OptionGroup var options: CtlOptions
    @Option(help: "Comma-separated kinds: access,dma,irq,reset,poll,fault (default all).") var kinds: String?
    @Option(help: "Stop after this many events.") var count: Int?
    func run() throws {
        var q = ControlRequest(op: "watch", device: options.device)
        q.kinds = kinds.map { $0.split(separator: ",").map(String.init) }
        q.limit = count
        let client: ControlClient
        do { client = try ControlClient(path: options.control) } catch {
            printError("vfu ctl: error: cannot connect to \(options.control): \(error)")
            throw ExitCode(2)
        }
        defer { client.close() }
        let first = try client.call(q)
        guard first.ok else {
            printError("vfu ctl: error: \(first.error ?? "?"): \(first.reason ?? "")")
            throw ExitCode(1)
        }
        var seen = 0
        while count == nil || seen < count! {
            // Lines go out as they come, unbuffered, so a file being written can be read live.
            guard var line = try? client.readLine(timeoutMs: -1) else { break }
            line.append(UInt8(ascii: "\n"))
            _ = line.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            seen += 1
        }
    }
}
