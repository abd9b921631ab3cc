import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// Protocol conformance checks that run against any vfio-user server over its
/// socket: negotiation, information, regions, config space, interrupts, commands,
/// message framing, DMA, large transfers, reset and migration, judged against the
/// specification and what QEMU 11.1 needs (docs/conformance.md lists them).
///
/// Checks that send bad input use their own connection, so one server mistake
/// does not hide the next; with `serverCommand` the suite runs the server itself and
/// relaunches it for them. Unless `disruptive` or `serverCommand`, nothing here writes
/// device registers other than config space scratch fields (interrupt line), so it
/// is safe against a live device.
public struct ConformanceSuite: Sendable {
    /// The server's socket.
    public var socketPath: String
    /// Milliseconds to wait for each reply.
    public var timeoutMs: Int32
    /// nil: find out (a second client while the first stays connected).
    public var connectionModel: ConnectionModel?
    /// Also run checks that change the device's state (migration arcs, a stop-copy
    /// stream). The device ends RUNNING again, but never run them on a device in use.
    public var disruptive: Bool
    /// `CMD {sock}`: the suite runs the server itself, relaunching it whenever a check
    /// needs a fresh one or it has gone, and records how each launch ended. The server
    /// is then the suite's own, so the state-changing checks run too.
    public var serverCommand: String?
    /// How long a launched server may take to create its socket.
    public var launchTimeoutMs: Int
    /// Where the launched server's output goes (nil: a temporary file, removed).
    public var serverLogPath: String?

    /// A suite against `socketPath` with the given options; nothing runs until `run()`.
    public init(socketPath: String, timeoutMs: Int32 = 3000, connectionModel: ConnectionModel? = nil, disruptive: Bool = false,
                serverCommand: String? = nil, launchTimeoutMs: Int = 10_000, serverLogPath: String? = nil) {
        self.socketPath = socketPath
        self.timeoutMs = timeoutMs
        self.connectionModel = connectionModel
        self.disruptive = disruptive
        self.serverCommand = serverCommand
        self.launchTimeoutMs = launchTimeoutMs
        self.serverLogPath = serverLogPath
    }

    /// Checks that change device state (command register, BARs, reset, migration
    /// states) run: asked for, or the server is the suite's own.
    var mutating: Bool { disruptive || serverCommand != nil }

    /// Runs every check and returns the results; failures are results, never thrown.
    public func run() -> ConformanceReport {
        var r = Recorder()
        let server = serverCommand.map { ServerProcess(template: $0, launchTimeoutMs: launchTimeoutMs, logPath: serverLogPath) }
        let links = Connections(socketPath: socketPath, timeoutMs: timeoutMs, model: connectionModel, server: server)
        let name = serverCommand ?? socketPath
        if let server, links.first == nil {
            r.fail("server.launch", "`\(server.template)` \(server.reap(during: "start").map { "\($0)" } ?? "made no socket within \(launchTimeoutMs) ms")"
                   + { let t = server.logTail(); return t.isEmpty ? "" : " (it said: \(t))" }(), "transport")
            lifecycle(&r, links)
            return ConformanceReport(server: name, results: r.results)
        }
        if links.first != nil {
            r.pass("connection.model", links.model == .concurrent
                   ? "serves several clients at once: each check has a connection of its own"
                   : server != nil
                   ? "serves one client at a time (libvfio-user's model): the checks share one connection; the suite relaunches the server for those that need their own"
                   : "serves one client at a time (libvfio-user's model): the checks share one connection", "§1.1")
        }
        // A server that dies is found out by the group during which it did.
        func group(_ name: String, _ body: (inout Recorder) -> Void) {
            body(&r)
            server?.reap(during: name)
        }
        group("version") { negotiation(&$0, links) }
        var found: DeviceInfo?
        group("info") { found = deviceInfo(&$0, links) }
        guard let info = found else {
            lifecycle(&r, links)
            return ConformanceReport(server: name, results: r.results)
        }
        group("region") { regions(&$0, info, links) }
        group("config") { config(&$0, links); configStructure(&$0, info, links) }
        group("irq") { interrupts(&$0, info, links) }
        // With one connection and no relaunch, the message-handling checks go last: some may end it.
        let messagesLast = links.model == .oneAtATime && server == nil
        if !messagesLast { group("message") { messages(&$0, links); framing(&$0, links) } }
        group("command") { commands(&$0, links) }
        group("dma") { dma(&$0, links); deviceDMA(&$0, info, links) }
        group("transfer") { transfers(&$0, info, links) }
        group("reset") { reset(&$0, info, links); resetState(&$0, info, links) }
        group("migration") { migration(&$0, links) }
        if messagesLast { group("message") { messages(&$0, links); framing(&$0, links) } }
        lifecycle(&r, links)
        return ConformanceReport(server: name, results: r.results)
    }

    struct Recorder {
        var results: [ConformanceResult] = []
        mutating func pass(_ id: String, _ detail: String, _ src: String) { results.append(.init(id: id, outcome: .pass, detail: detail, source: src)) }
        mutating func fail(_ id: String, _ detail: String, _ src: String) { results.append(.init(id: id, outcome: .fail, detail: detail, source: src)) }
        mutating func warn(_ id: String, _ detail: String, _ src: String) { results.append(.init(id: id, outcome: .warn, detail: detail, source: src)) }
        mutating func skip(_ id: String, _ detail: String, _ src: String) { results.append(.init(id: id, outcome: .skip, detail: detail, source: src)) }
        mutating func check(_ ok: Bool, _ id: String, _ detail: String, _ src: String) {
            ok ? pass(id, detail, src) : fail(id, detail, src)
        }
    }

    /// Describes an outcome for messages.
    func show(_ x: RawPeer.Received) -> String {
        switch x {
        case .message(let m):
            if m.header.isError { return "error reply \(VFIOErrno(m.header.errorNumber))" }
            return "\(m.header.isReply ? "reply" : "command") \(m.header.command), \(m.header.messageSize) bytes"
        case .closed: return "connection closed"
        case .timeout: return "no answer"
        case .broken(let why): return "broken stream (\(why))"
        }
    }

    func isError(_ x: RawPeer.Received, _ e: VFIOErrno? = nil) -> Bool {
        guard case .message(let m) = x, m.header.isReply, m.header.isError else { return false }
        return e == nil || m.header.errorNumber == e!.rawValue
    }

    // MARK: Negotiation (§2)

    func negotiation(_ r: inout Recorder, _ links: Connections) {
        // The first connection sent QEMU's VERSION when it was opened.
        guard let p = links.first, let x = links.firstVersion else {
            r.fail("version.connect", "cannot connect to \(socketPath)", "transport"); return
        }
        let request = Connections.qemuVersionRequest
        let requestSize = 16 + request.count
        guard case .message(let m) = x, !m.header.isError else {
            r.fail("version.accepts-qemu", "QEMU's VERSION got \(show(x))", "QEMU")
            return
        }
        r.pass("version.accepts-qemu", "QEMU's 214-byte VERSION accepted", "QEMU")
        r.check(Int(m.header.messageSize) <= requestSize, "version.reply-not-longer",
                "reply \(m.header.messageSize) bytes, request \(requestSize)", "QEMU reply-buffer rule, §1.5")
        let payload = Array(m.payload)
        guard let v = try? VersionPayload(payload: payload) else {
            r.fail("version.reply-decodes", "reply payload does not decode (JSON object, NUL-terminated)", "§2.1")
            return
        }
        r.check(v.major == 0 && v.minor == 0, "version.major-minor", "reply \(v.major).\(v.minor); QEMU needs 0.0", "QEMU")
        r.check(payload.last == 0 && payload.count > 4, "version.json-nul", "JSON present and NUL-terminated", "§2.2")
        let caps = v.effectiveCapabilities
        r.check(caps.effectiveMaxMsgFDs <= 16, "version.max-msg-fds", "max_msg_fds \(caps.effectiveMaxMsgFDs) (QEMU accepts <= 16)", "QEMU")
        r.check((4096...(64 << 20)).contains(caps.effectiveMaxDataXferSize), "version.max-data-xfer-size",
                "max_data_xfer_size \(caps.effectiveMaxDataXferSize) (QEMU accepts <= 64 MiB; config reads need >= 4096)", "QEMU")
        // A second VERSION is refused, the connection stays usable.
        let again = p.call(.version, request)
        if isError(again) {
            let after = p.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded)
            r.check(!isError(after) && { if case .message = after { return true }; return false }(),
                    "version.second-refused", "second VERSION: \(show(again)); then GET_INFO: \(show(after))", "§2.2")
        } else {
            r.fail("version.second-refused", "second VERSION got \(show(again))", "§2.2")
        }
        // A first message that is not VERSION: refused, and the next client is served.
        if !links.skipUnlessFresh(&r, "version.required-first"), let q = links.fresh("version.required-first") {
            let x = q.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded)
            r.check(isError(x) || { if case .closed = x { return true }; return false }(), "version.required-first",
                    "GET_INFO before VERSION: \(show(x))", "§2.2")
            nextClientServed(&r, links, after: "version.required-first", q)
        }
        // A tiny request: the reply must still fit.
        if !links.skipUnlessFresh(&r, "version.reply-fits-small-request"), let q = links.fresh("version.reply-fits-small-request") {
            let json = Array(#"{"capabilities":{"max_msg_fds":8}}"#.utf8)
            var w = WireWriter(); w.u16(0); w.u16(0); w.append(json); w.u8(0)
            let x = q.call(.version, w.bytes)
            if case .message(let m) = x, !m.header.isError {
                // Only QEMU's own request size binds (version.reply-not-longer); a longer
                // reply to a smaller request breaks clients that size buffers as QEMU does.
                let detail = "reply \(m.header.messageSize) bytes to a \(16 + w.bytes.count)-byte request"
                if Int(m.header.messageSize) <= 16 + w.bytes.count {
                    r.pass("version.reply-fits-small-request", detail, "§1.5")
                } else {
                    r.warn("version.reply-fits-small-request", detail + " (a client that sizes its reply buffer by its request, as QEMU does, would fail)", "§1.5")
                }
            } else {
                r.fail("version.reply-fits-small-request", "small VERSION got \(show(x))", "§2")
            }
        }
    }

    // MARK: Device info (§3.3)

    func deviceInfo(_ r: inout Recorder, _ links: Connections) -> DeviceInfo? {
        guard let p = links.negotiated(&r, "info.get") else { return nil }
        let x = p.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded)
        guard case .message(let m) = x, !m.header.isError, let info = try? DeviceInfo(payload: Array(m.payload)) else {
            r.fail("info.get", "DEVICE_GET_INFO got \(show(x))", "§3.3")
            return nil
        }
        r.check(m.header.messageSize == 32, "info.reply-size", "reply \(m.header.messageSize) bytes (QEMU accepts 32)", "QEMU")
        r.check(info.flags.contains(.pci), "info.pci-flag", "flags 0x\(String(info.flags.rawValue, radix: 16))", "QEMU")
        r.check(!info.flags.contains(.caps) || m.header.messageSize > 32, "info.no-caps-flag",
                "CAPS without room for cap_offset in the 16-byte reply", "§3.3")
        r.check((9...100).contains(info.numRegions), "info.num-regions", "\(info.numRegions) (QEMU: 8...100, PCI needs 9)", "QEMU")
        r.check((3...50).contains(info.numIRQs), "info.num-irqs", "\(info.numIRQs) (QEMU: 3...50)", "QEMU")
        let short = p.call(.deviceGetInfo, DeviceInfo(argsz: 8).encoded)
        r.check(isError(short, .EINVAL), "info.short-argsz", "argsz 8: \(show(short))", "§3.3, libvfio-user")
        return info
    }

    // MARK: Regions (§3.4, §3.8)

    func regions(_ r: inout Recorder, _ info: DeviceInfo, _ links: Connections) {
        guard let p = links.negotiated(&r, "region.info") else { return }
        var bad: [String] = []
        var fdIssues: [String] = []
        // At most the 100 regions QEMU accepts (info.num-regions judges the count), and
        // not past a connection the server closed.
        for i in 0..<min(info.numRegions, 100) {
            let x = p.call(.deviceGetRegionInfo, RegionInfoRequest(argsz: 32, index: i).encoded)
            if x.isClosed { bad.append("\(i): connection closed"); break }
            guard case .message(let m) = x, !m.header.isError, let ri = try? RegionInfo(payload: Array(m.payload)) else {
                bad.append("\(i): \(show(x))"); continue
            }
            defer { m.closeFDs() }
            if ri.index != i { bad.append("\(i): index echoed as \(ri.index)") }
            if ri.flags.contains(.caps) && (ri.capOffset < 32 || ri.capOffset > 32) && ri.argsz > 32 {
                bad.append("\(i): CAPS with cap_offset \(ri.capOffset) in a truncated reply (QEMU rejects it)")
            }
            if m.fds.count > 1 { fdIssues.append("\(i): \(m.fds.count) fds (QEMU takes at most one)") }
            if i >= 9 && ri.size > 0 {
                // Device-specific regions must carry a TYPE capability.
                let full = ri.argsz > 32 ? p.call(.deviceGetRegionInfo, RegionInfoRequest(argsz: ri.argsz, index: i).encoded) : x
                if case .message(let fm) = full, let fri = try? RegionInfo(payload: Array(fm.payload)) {
                    fm.closeFDs()
                    if !fri.capabilities.contains(where: { if case .type = $0 { return true }; return false }) {
                        bad.append("\(i): device-specific region without a TYPE capability")
                    }
                }
            }
            if ri.argsz > 32 {
                let y = p.call(.deviceGetRegionInfo, RegionInfoRequest(argsz: ri.argsz, index: i).encoded)
                if case .message(let fm) = y, !fm.header.isError, let fri = try? RegionInfo(payload: Array(fm.payload)) {
                    fm.closeFDs()
                    if fri.argsz != ri.argsz { bad.append("\(i): argsz \(ri.argsz) then \(fri.argsz) on retry") }
                    if fri.flags.contains(.mmap) && fm.fds.count != 1 { fdIssues.append("\(i): MMAP but \(fm.fds.count) fds (the specification says one; QEMU takes at most one)") }
                } else {
                    bad.append("\(i): retry with argsz \(ri.argsz) got \(show(y))")
                }
            } else if ri.flags.contains(.mmap) && m.fds.count != 1 {
                fdIssues.append("\(i): MMAP but \(m.fds.count) fds (the specification says one; QEMU takes at most one)")
            }
        }
        r.check(bad.isEmpty, "region.info", bad.isEmpty ? "all \(info.numRegions) regions answer coherently" : bad.joined(separator: "; "), "§3.4")
        r.check(fdIssues.isEmpty, "region.mmap-fd", fdIssues.isEmpty ? "exactly one fd with every MMAP region" : fdIssues.joined(separator: "; "), "§3.4")
        let badIndex = p.call(.deviceGetRegionInfo, RegionInfoRequest(argsz: 32, index: info.numRegions + 10).encoded)
        r.check(isError(badIndex, .EINVAL), "region.info-bad-index", "index \(info.numRegions + 10): \(show(badIndex))", "§3.4")
        let shortArgsz = p.call(.deviceGetRegionInfo, RegionInfoRequest(argsz: 16, index: 7).encoded)
        r.check(isError(shortArgsz), "region.info-short-argsz", "argsz 16: \(show(shortArgsz))", "§3.4")
    }

    // MARK: Config space (§3.8, PCI)

    func config(_ r: inout Recorder, _ links: Connections) {
        guard let p = links.negotiated(&r, "config.read") else { return }
        let ci = p.call(.deviceGetRegionInfo, RegionInfoRequest(argsz: 32, index: 7).encoded)
        guard case .message(let cm) = ci, let cinfo = try? RegionInfo(payload: Array(cm.payload)) else {
            r.fail("config.size", "config region info: \(show(ci))", "§4.1"); return
        }
        r.check(cinfo.size == 256 || cinfo.size == 4096, "config.size", "config region \(cinfo.size) bytes", "§4.1")
        let size = Int(min(cinfo.size, 4096))
        guard size >= 64 else { return }   // no header to look at (config.size failed)
        let x = p.call(.regionRead, RegionAccess(offset: 0, region: 7, count: UInt32(size)).encoded)
        guard case .message(let m) = x, !m.header.isError, let a = try? RegionAccess(payload: Array(m.payload)) else {
            r.fail("config.read", "whole-config read (as QEMU does at realize): \(show(x))", "QEMU"); return
        }
        r.check(Int(a.count) == size && a.data.count >= size, "config.read", "read \(a.count) of \(size) bytes in one message", "QEMU")
        let cfg = Array(a.data.prefix(Int(a.count)))
        guard cfg.count >= 64 else { return }
        r.check(cfg.le16(at: 0) != 0xFFFF && cfg.le16(at: 0) != 0, "config.vendor", "vendor 0x\(String(cfg.le16(at: 0), radix: 16))", "PCI")
        r.check(cfg[0x0E] & 0x7F == 0, "config.header-type", "header type 0x\(String(cfg[0x0E], radix: 16))", "PCI")
        let caps = ConfigSpaceReport.capabilityList(cfg)
        let ptrOK = caps.allSatisfy { $0.offset >= 0x40 && $0.offset % 4 == 0 }
        r.check(ptrOK && caps.count < 48, "config.capability-list", "\(caps.count) capabilities: \(caps.map { "0x\(String($0.id, radix: 16))@0x\(String($0.offset, radix: 16))" }.joined(separator: " "))", "PCI")
        // Read-only ID register ignores writes; interrupt line is writable.
        _ = p.call(.regionWrite, RegionAccess(offset: 0, region: 7, data: [0xEF, 0xBE]).encoded)
        if case .message(let rm) = p.call(.regionRead, RegionAccess(offset: 0, region: 7, count: 2).encoded),
           let ra = try? RegionAccess(payload: Array(rm.payload)), ra.data.count >= 2 {
            r.check(ra.data.le16(at: 0) == cfg.le16(at: 0), "config.vendor-read-only", "vendor after a write: 0x\(String(ra.data.le16(at: 0), radix: 16))", "PCI")
        }
        // Past the end and overflowing offsets.
        let past = p.call(.regionRead, RegionAccess(offset: UInt64(size) - 2, region: 7, count: 4).encoded)
        r.check(isError(past), "region.read-past-end", "4 bytes at \(size - 2): \(show(past))", "§3.8")
        let overflow = p.call(.regionRead, RegionAccess(offset: 0xFFFF_FFFF_FFFF_FFF0, region: 7, count: 32).encoded)
        r.check(isError(overflow), "region.read-offset-overflow", "offset 0xFFFFFFFFFFFFFFF0 count 32: \(show(overflow))", "§3.8")
        var bad = RegionAccess(offset: 0x3C, region: 7, data: [1]).encoded
        bad[12] = 4  // claims 4 bytes, carries 1
        let mismatch = p.call(.regionWrite, bad)
        r.check(isError(mismatch, .EINVAL), "region.write-count-mismatch", "count 4 with 1 data byte: \(show(mismatch))", "§3.8")
        let after = p.call(.regionRead, RegionAccess(offset: 0, region: 7, count: 4).encoded)
        r.check(!isError(after) && { if case .message = after { return true }; return false }(), "region.stream-in-sync", "a valid read after the errors: \(show(after))", "§6")
    }

    // MARK: Interrupts (§3.6, §3.7)

    func interrupts(_ r: inout Recorder, _ info: DeviceInfo, _ links: Connections) {
        guard let p = links.negotiated(&r, "irq.info") else { return }
        var counts: [UInt32] = []
        var bad: [String] = []
        for i in 0..<min(info.numIRQs, 5) {
            let x = p.call(.deviceGetIRQInfo, IRQInfo(argsz: 16, index: i).encoded)
            guard case .message(let m) = x, !m.header.isError, let irq = try? IRQInfo(payload: Array(m.payload)) else {
                bad.append("\(IRQIndex(i)): \(show(x))"); counts.append(0); continue
            }
            counts.append(irq.count)
            if irq.index != i { bad.append("\(IRQIndex(i)): index echoed as \(irq.index)") }
            if irq.count > 0 && !irq.flags.contains(.eventfd) { bad.append("\(IRQIndex(i)): no EVENTFD flag") }
        }
        r.check(bad.isEmpty, "irq.info", bad.isEmpty ? "counts \(counts.map(String.init).joined(separator: "/")) for INTx/MSI/MSI-X/ERR/REQ" : bad.joined(separator: "; "), "§3.6")
        let badIndex = p.call(.deviceGetIRQInfo, IRQInfo(argsz: 16, index: info.numIRQs + 3).encoded)
        r.check(isError(badIndex, .EINVAL), "irq.info-bad-index", "index \(info.numIRQs + 3): \(show(badIndex))", "§3.6")
        // Past the vector count.
        let msixCount = counts.count > 2 ? counts[2] : 0
        let past = SetIRQs(argsz: 20, flags: [.dataNone, .actionTrigger], index: 2, start: msixCount, count: 1)
        let x = p.call(.deviceSetIRQs, past.encoded)
        r.check(isError(x, .EINVAL), "irq.set-past-count", "MSI-X vector \(msixCount) of \(msixCount): \(show(x))", "§3.7")
        // Bind, then disable, an eventfd on the first index that has vectors (as QEMU does for INTx).
        if let idx = counts.firstIndex(where: { $0 > 0 }), let efd = try? EventFD.create(nonBlocking: true) {
            let bind = p.call(.deviceSetIRQs, SetIRQs(argsz: 20, flags: [.dataEventFD, .actionTrigger], index: UInt32(idx), start: 0, count: 1).encoded,
                              fds: [efd.rawValue])
            let off = p.call(.deviceSetIRQs, SetIRQs(argsz: 20, flags: [.dataNone, .actionTrigger], index: UInt32(idx), start: 0, count: 0).encoded)
            r.check(!isError(bind) && !isError(off), "irq.set-eventfd", "\(IRQIndex(UInt32(idx))): bind \(show(bind)); disable \(show(off))", "§3.7, QEMU")
        } else {
            r.skip("irq.set-eventfd", "no interrupt index has vectors", "§3.7")
        }
        let twoActions = p.call(.deviceSetIRQs, SetIRQs(argsz: 20, flags: [.dataNone, .actionMask, .actionTrigger], index: 0, start: 0, count: 1).encoded)
        r.check(isError(twoActions, .EINVAL), "irq.set-two-actions", "MASK|TRIGGER: \(show(twoActions))", "§3.7")
    }

    // MARK: Message handling (§1.2, §6)

    func messages(_ r: inout Recorder, _ links: Connections) {
        if let p = links.negotiated(&r, "message.unknown-command") {
            let x = p.call(Command(99), [])
            r.check(isError(x), "message.unknown-command", "command 99: \(show(x))", "§6")
            let after = p.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded)
            r.check(!isError(after) && { if case .message = after { return true }; return false }(), "message.unknown-keeps-connection",
                    "GET_INFO after it: \(show(after))", "§6")
        }
        // NO_REPLY: a posted config write must not be answered.
        if let p = links.negotiated(&r, "message.no-reply") {
            let posted = p.send(.regionWrite, RegionAccess(offset: 0x3C, region: 7, data: [0x0A]).encoded, flags: MessageHeader.noReplyFlag)
            let readID = p.send(.regionRead, RegionAccess(offset: 0x3C, region: 7, count: 1).encoded)
            let x = p.receive()
            if case .message(let m) = x {
                r.check(m.header.messageID == readID, "message.no-reply",
                        m.header.messageID == posted ? "the NO_REPLY write #\(posted) was answered (breaks QEMU's stream)" : "next message is the read's reply", "§1.2, QEMU")
            } else {
                r.fail("message.no-reply", "after a posted write and a read: \(show(x))", "§1.2")
            }
        }
        // Pipelined commands are answered in order.
        if let p = links.negotiated(&r, "message.pipelined-order") {
            let ids = (0..<4).map { _ in p.send(.regionRead, RegionAccess(offset: 0, region: 7, count: 4).encoded) }
            var got: [UInt16] = []
            for _ in ids { if case .message(let m) = p.receive() { got.append(m.header.messageID) } }
            r.check(got == ids, "message.pipelined-order", "sent \(ids), replies \(got)", "§1.2")
        }
        // fds where none belong.
        if let p = links.negotiated(&r, "message.unexpected-fds"), let efd = try? EventFD.create() {
            let x = p.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded, fds: [efd.rawValue])
            r.check(isError(x, .EINVAL) || { if case .message = x { return true }; return false }(), "message.unexpected-fds",
                    "GET_INFO with an fd: \(show(x))", "§1.4")
            if case .message(let m) = x, !m.header.isError {
                r.warn("message.unexpected-fds-accepted", "the fd was accepted silently (libvfio-user closes it; EINVAL is clearer)", "§1.4")
            }
        }
        // From here on a check may end its connection.
        // A request with the reply bit set.
        if let p = links.negotiated(&r, "message.reply-flag") {
            let x = p.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded, flags: 1)
            let detail = "GET_INFO flagged as a reply: \(show(x))"
            switch x {
            case .message(let m) where m.header.isError: r.pass("message.reply-flag", detail, "§6")
            case .closed: r.pass("message.reply-flag", detail, "§6")
            default: r.fail("message.reply-flag", detail, "§6")
            }
        }
        // Framing: msg_size below 16 must end the connection (or be refused), and the server must live on.
        if let p = links.negotiated(&r, "message.size-below-16") {
            p.sendRaw(MessageHeader(messageID: 9, command: .deviceGetInfo, messageSize: 8).bytes)
            let x = p.receive()
            switch x {
            case .closed:
                r.pass("message.size-below-16", "msg_size 8: \(show(x))", "§6")
            case .message(let m) where m.header.isError:
                if p.receive(timeoutMs: 1000).isClosed {
                    r.pass("message.size-below-16", "msg_size 8: \(show(x)), then closed", "§6")
                } else {
                    // libvfio-user does this; the framing cannot be trusted after it.
                    r.warn("message.size-below-16", "msg_size 8: \(show(x)), connection kept (closing is safer: the framing is lost)", "§6")
                }
            default:
                r.fail("message.size-below-16", "msg_size 8: \(show(x))", "§6")
            }
        }
        if !links.skipUnlessFresh(&r, "message.short-body"), let p = links.fresh("message.short-body"), p.negotiate() != nil {
            var h = MessageHeader(messageID: 9, command: .regionRead, messageSize: 32).bytes
            h += [0, 0, 0, 0]  // 4 of 16 payload bytes, then close
            p.sendRaw(h)
            p.socket.shutdown()
            nextClientServed(&r, links, after: "message.short-body", p)
        }
    }

    // MARK: DMA (§3.1, §3.2)

    func dma(_ r: inout Recorder, _ links: Connections) {
        guard let p = links.negotiated(&r, "dma.map") else { return }
        guard let mem = try? ClientMemory(size: 1 << 16) else { r.skip("dma.map", "cannot create a memfd", "§3.1"); return }
        let base: UInt64 = 0x7000_0000
        let map = p.call(.dmaMap, DMAMapRequest(flags: [.read, .write], offset: 0, address: base, size: 1 << 16).encoded, fds: [mem.fd.rawValue])
        r.check(!isError(map) && { if case .message = map { return true }; return false }(), "dma.map", "64 KiB memfd at 0x\(String(base, radix: 16)): \(show(map))", "§3.1")
        let overlap = p.call(.dmaMap, DMAMapRequest(flags: [.read], offset: 0, address: base + 0x1000, size: 0x1000).encoded)
        if isError(overlap, .EEXIST) {
            r.pass("dma.map-overlap", "overlapping map: EEXIST", "§3.1")
        } else if isError(overlap, .EINVAL) {
            r.warn("dma.map-overlap", "overlapping map: EINVAL (libvfio-user's choice; the specification says EEXIST)", "§3.1")
        } else {
            r.fail("dma.map-overlap", "overlapping map: \(show(overlap))", "§3.1")
        }
        let unknown = p.call(.dmaUnmap, DMAUnmapRequest(address: base + 0x100000, size: 0x1000).encoded)
        r.check(isError(unknown, .ENOENT), "dma.unmap-unknown", "unmap of an unmapped range: \(show(unknown))", "§3.2")
        let unmap = p.call(.dmaUnmap, DMAUnmapRequest(address: base, size: 1 << 16).encoded)
        if case .message(let m) = unmap, !m.header.isError {
            r.check(m.header.messageSize == 16 || m.header.messageSize == 40, "dma.unmap", "reply \(m.header.messageSize) bytes (QEMU accepts 16 or 40)", "§3.2, QEMU")
        } else {
            r.fail("dma.unmap", "unmap: \(show(unmap))", "§3.2")
        }
        let all = p.call(.dmaUnmap, DMAUnmapRequest(flags: .all, address: 0, size: 0).encoded)
        r.check(!isError(all) && { if case .message = all { return true }; return false }(), "dma.unmap-all", "flags ALL: \(show(all)) (QEMU sends it)", "QEMU")
    }

    // MARK: Reset (§3.10)

    func reset(_ r: inout Recorder, _ info: DeviceInfo, _ links: Connections) {
        guard info.flags.contains(.reset) else { r.skip("reset", "RESET flag not set", "§3.10"); return }
        guard let p = links.negotiated(&r, "reset") else { return }
        let x = p.call(.deviceReset, [])
        if case .message(let m) = x, !m.header.isError {
            r.check(m.header.messageSize == 16, "reset", "reply \(m.header.messageSize) bytes", "§3.10")
        } else {
            r.fail("reset", "DEVICE_RESET: \(show(x))", "§3.10")
        }
    }

    // MARK: Migration (§5), optional

    func migration(_ r: inout Recorder, _ links: Connections) {
        guard let p = links.negotiated(&r, "migration.probe") else { return }
        let probe = DeviceFeature(argsz: 16, flags: UInt32(DeviceFeature.migration) | DeviceFeature.get | DeviceFeature.probe)
        let x = p.call(.deviceFeature, probe.encoded)
        guard case .message(let m) = x, !m.header.isError else {
            r.skip("migration.state", "no migration support (\(show(x)))", "§5")
            return
        }
        let get = DeviceFeature(argsz: 16, flags: UInt32(DeviceFeature.migDeviceState) | DeviceFeature.get)
        let y = p.call(.deviceFeature, get.encoded)
        if case .message(let gm) = y, !gm.header.isError, let f = try? DeviceFeature(payload: Array(gm.payload)),
           let s = try? MigDeviceState(payload: f.data) {
            r.check(s.state != nil, "migration.state", "state \(s.state.map { "\($0)" } ?? "invalid \(s.deviceState)")", "§5.1")
        } else {
            r.fail("migration.state", "MIG_DEVICE_STATE get: \(show(y))", "§5.2")
        }
        let illegal = DeviceFeature(argsz: 16, flags: UInt32(DeviceFeature.migDeviceState) | DeviceFeature.set,
                                    data: MigDeviceState(state: .error).encoded)
        let z = p.call(.deviceFeature, illegal.encoded)
        r.check(isError(z, .EINVAL), "migration.error-not-settable", "SET ERROR: \(show(z))", "§5.1")
        if mutating {
            migrationArcs(&r, p)
            // On a connection of its own if the stream checks ended this one.
            if let q = p.isOpen ? p : links.negotiated(&r, "migration.state-table") {
                let get = DeviceFeature(argsz: 16, flags: UInt32(DeviceFeature.migration) | DeviceFeature.get)
                var flags = MigrationFeatureFlags(rawValue: 0)
                if case .message(let fm) = q.call(.deviceFeature, get.encoded), !fm.header.isError,
                   let f = try? DeviceFeature(payload: Array(fm.payload)), let v = try? MigrationFeatureFlags(payload: f.data) { flags = v }
                migrationTable(&r, q, preCopy: flags.contains(.preCopy), p2p: flags.contains(.p2p))
            }
        }
    }
}

extension RawPeer.Received {
    var isClosed: Bool { if case .closed = self { return true }; return false }
}
