// A protocol validator for one connection: it sees every message of both directions
// in order and reports each rule a message breaks. Pure: bytes and fd counts in,
// deviations out. `vfu proxy --validate`, `vfu serve --validate/--strict` use it.

import VFIOUserProtocol

/// Checks the messages of one connection, in order, against every `ValidationRule`.
public struct ProtocolValidator: Sendable {
    /// What a command said that its reply is checked against.
    struct Outstanding: Sendable {
        var command: Command
        var noReply: Bool
        var argsz: UInt32?
        /// Bytes asked for (REGION_READ, DMA_READ, MIG_DATA_READ).
        var count: UInt64?
        var major: UInt16 = 0
        var minor: UInt16 = 0
    }

    private var versionSeen = false
    private var clientCaps = VersionCapabilities()
    private var serverCaps = VersionCapabilities()
    /// Commands waiting for a reply, by the direction they went and msg_id.
    private var outstanding: [CaptureDirection: [UInt16: Outstanding]] = [.clientToServer: [:], .serverToClient: [:]]
    /// Requests that asked for no reply, remembered briefly to name a reply to one.
    private var noReplyIDs: [CaptureDirection: [UInt16: Command]] = [.clientToServer: [:], .serverToClient: [:]]

    /// A validator for a new connection (nothing seen yet).
    public init() {}

    /// Checks one message. `message` holds the captured bytes (maybe fewer than
    /// `originalLength`); `flags` says whether the capture is whole.
    public mutating func check(message: [UInt8], originalLength: Int, fdCount: Int, direction: CaptureDirection,
                               flags: CaptureRecord.Flags) -> [Deviation] {
        var out: [Deviation] = []
        let shown = traceDescription(message: message)
        func fail(_ rule: ValidationRule, _ detail: String, known: String? = nil) {
            out.append(Deviation(rule: rule, direction: direction, message: shown, detail: detail, knownFrom: known))
        }
        if flags.contains(.raw) {
            fail(.msgSize, "\(originalLength) bytes after the stream lost its framing")
            return out
        }
        guard message.count >= MessageHeader.size, let h = try? MessageHeader.decode(message) else {
            fail(.msgSize, "the stream ended inside a header (\(originalLength) bytes)")
            return out
        }
        if flags.contains(.incomplete) { fail(.msgSize, "the stream ended after \(originalLength) of \(h.messageSize) bytes") }
        if h.messageSize < UInt32(MessageHeader.size) { fail(.msgSize, "msg_size \(h.messageSize) < 16") }
        guard let kind = h.kind else {
            fail(.type, "type bits \(h.flags & MessageHeader.typeMask)")
            return out
        }
        if h.flags & ~UInt32(0x3f) != 0 { fail(.reservedFlags, "flags 0x\(String(h.flags, radix: 16)) set undefined bits") }
        // A truncated capture still shows the header; the payload rules need it whole.
        let whole = !flags.contains(.truncated) && !flags.contains(.incomplete)
        let payload = Array(message.dropFirst(MessageHeader.size))
        let receiverCaps = direction == .clientToServer ? serverCaps : clientCaps
        if fdCount > receiverCaps.effectiveMaxMsgFDs {
            fail(.fdLimit, "\(fdCount) fds, the receiver's max_msg_fds is \(receiverCaps.effectiveMaxMsgFDs)")
        }
        if kind == .command {
            if h.isError { fail(.reservedFlags, "ERROR set on a command") }
            if h.errorNumber != 0 { fail(.commandErrno, "error_no \(h.errorNumber)") }
            checkCommand(h, payload, whole: whole, fdCount: fdCount, direction: direction) { fail($0, $1, known: $2) }
        } else {
            if h.noReply { fail(.reservedFlags, "NO_REPLY set on a reply") }
            checkReply(h, payload, whole: whole, fdCount: fdCount, direction: direction) { fail($0, $1, known: $2) }
        }
        return out
    }

    // MARK: Commands

    private mutating func checkCommand(_ h: MessageHeader, _ p: [UInt8], whole: Bool, fdCount: Int, direction: CaptureDirection,
                                       report: (ValidationRule, String, String?) -> Void) {
        func fail(_ r: ValidationRule, _ d: String) { report(r, d, nil) }
        let c = h.command
        if let waiting = outstanding[direction]![h.messageID] {
            fail(.idInUse, "#\(h.messageID) still waits for the reply to \(waiting.command)")
        }
        guard (1...18).contains(c.rawValue), c != .dirtyPages else {
            fail(.unknownCommand, "command \(c.rawValue)")
            remember(h, direction, Outstanding(command: c, noReply: h.noReply))
            return
        }
        let serverToClient = c == .dmaRead || c == .dmaWrite
        if serverToClient != (direction == .serverToClient) { fail(.direction, "\(c) sent \(direction)") }
        if direction == .clientToServer {
            if !versionSeen && c != .version { fail(.versionFirst, "\(c) before VERSION") }
            if versionSeen && c == .version { fail(.versionFirst, "a second VERSION") }
        }
        var o = Outstanding(command: c, noReply: h.noReply)
        let maxXfer = UInt64((direction == .clientToServer ? serverCaps : clientCaps).effectiveMaxDataXferSize)
        func size(_ ok: Bool, _ what: String) { if whole && !ok { fail(.payloadSize, "\(c) payload \(p.count) bytes, \(what)") } }
        func fds(_ allowed: Bool, _ what: String) { if !allowed { fail(fdCount > 0 && what.isEmpty ? .fdUnexpected : .fdCount, what.isEmpty ? "\(c) carried \(fdCount) fds" : what) } }
        func u32(_ at: Int) -> UInt32 { p.count >= at + 4 ? p.le32(at: at) : 0 }
        func u64(_ at: Int) -> UInt64 { p.count >= at + 8 ? p.le64(at: at) : 0 }

        switch c {
        case .version:
            versionSeen = true
            fds(fdCount == 0, "")
            do {
                let v = try VersionPayload(payload: p)
                clientCaps = v.effectiveCapabilities
                o.major = v.major
                o.minor = v.minor
            } catch { if whole { fail(.versionLayout, "\(error)") } }
        case .dmaMap:
            size(p.count == DMAMapRequest.size, "expected 32")
            if p.count >= 8 && u32(0) != 32 { fail(.argsz, "DMA_MAP argsz \(u32(0)), expected 32") }
            if u32(4) & ~UInt32(0x3) != 0 { fail(.dmaMapFlags, "flags 0x\(String(u32(4), radix: 16))") }
            fds(fdCount <= 1, "DMA_MAP carried \(fdCount) fds")
        case .dmaUnmap:
            let flags = u32(4)
            size(p.count == (flags & 0x1 != 0 ? 40 : 24), "expected \(flags & 0x1 != 0 ? 40 : 24)")
            if p.count >= 4 && u32(0) < 24 { fail(.argsz, "DMA_UNMAP argsz \(u32(0)) < 24") }
            if flags > 2 || (flags == 2 && (u64(8) != 0 || u64(16) != 0)) {
                fail(.dmaUnmapFlags, "flags 0x\(String(flags, radix: 16)) address 0x\(String(u64(8), radix: 16)) size 0x\(String(u64(16), radix: 16))")
            }
            fds(fdCount == 0, "")
            o.argsz = u32(0)
        case .deviceGetInfo, .deviceGetIRQInfo, .deviceGetRegionIOFDs:
            size(p.count == 16, "expected 16")
            if p.count >= 4 && u32(0) < 16 { fail(.argsz, "\(c) argsz \(u32(0)) < 16") }
            if c == .deviceGetRegionIOFDs && (u32(4) != 0 || u32(12) != 0) { fail(.ioFDsRequest, "flags \(u32(4)) count \(u32(12))") }
            fds(fdCount == 0, "")
            o.argsz = u32(0)
        case .deviceGetRegionInfo:
            size(p.count == 32, "expected 32")
            if p.count >= 4 && u32(0) < 32 { fail(.argsz, "argsz \(u32(0)) < 32") }
            fds(fdCount == 0, "")
            o.argsz = u32(0)
        case .deviceSetIRQs:
            let flags = u32(4), count = u32(16)
            let data = flags & 0x7, action = flags & 0x38
            if data.nonzeroBitCount != 1 || action.nonzeroBitCount != 1 || flags & ~UInt32(0x3f) != 0 {
                fail(.setIRQsFlags, "flags 0x\(String(flags, radix: 16))")
            }
            let expected = 20 + (data == 0x2 ? Int(count) : 0)
            size(p.count == expected, "expected \(expected)")
            if p.count >= 20 && Int(u32(0)) != p.count { fail(.argsz, "SET_IRQS argsz \(u32(0)) but payload \(p.count)") }
            if data == 0x4 { fds(fdCount == 0 || fdCount == Int(count), "SET_IRQS EVENTFD count \(count) carried \(fdCount) fds") }
            else { fds(fdCount == 0, "") }
        case .regionRead:
            size(p.count == 16, "expected 16")
            if UInt64(u32(12)) > maxXfer { fail(.maxTransfer, "count \(u32(12)) > \(maxXfer)") }
            fds(fdCount == 0, "")
            o.count = UInt64(u32(12))
        case .regionWrite:
            size(p.count >= 16 && p.count == 16 + Int(u32(12)), "expected 16 + count \(u32(12))")
            if UInt64(u32(12)) > maxXfer { fail(.maxTransfer, "count \(u32(12)) > \(maxXfer)") }
            fds(fdCount == 0, "")
        case .dmaRead:
            size(p.count == 16, "expected 16")
            if u64(8) > maxXfer { fail(.maxTransfer, "count \(u64(8)) > \(maxXfer)") }
            fds(fdCount == 0, "")
            o.count = u64(8)
        case .dmaWrite:
            size(p.count >= 16 && UInt64(p.count - 16) == u64(8), "expected 16 + count \(u64(8))")
            if u64(8) > maxXfer { fail(.maxTransfer, "count \(u64(8)) > \(maxXfer)") }
            fds(fdCount == 0, "")
        case .deviceReset:
            size(p.isEmpty, "expected 0")
            fds(fdCount == 0, "")
        case .regionWriteMulti:
            if !serverCaps.effectiveWriteMultiple || !clientCaps.effectiveWriteMultiple {
                fail(.writeMulti, "write_multiple was not agreed in VERSION")
            }
            let n = u64(0)
            size(p.count >= 8 && UInt64(p.count - 8) == n &* 24, "expected 8 + 24 × \(n)")
            var i = 8
            while i + 24 <= p.count {
                let count = p.le32(at: i + 12)
                if !(1...8).contains(count) { fail(.writeMulti, "entry at \(i) has count \(count)"); break }
                i += 24
            }
            fds(fdCount == 0, "")
        case .deviceFeature:
            size(p.count >= 8, "expected at least 8")
            let flags = u32(4)
            let get = flags & 0x10000 != 0, set = flags & 0x20000 != 0, probe = flags & 0x40000 != 0
            if (!get && !set) || (get && set && !probe) || flags & ~UInt32(0x7ffff) != 0 {
                fail(.featureFlags, "flags 0x\(String(flags, radix: 16))")
            }
            fds(fdCount == 0, "")
            o.argsz = u32(0)
        case .migDataRead:
            size(p.count == 8, "expected 8")
            if UInt64(u32(4)) > maxXfer { fail(.maxTransfer, "size \(u32(4)) > \(maxXfer)") }
            if p.count >= 8 && UInt64(u32(0)) < 8 + UInt64(u32(4)) { fail(.argsz, "argsz \(u32(0)) < 8 + size \(u32(4))") }
            fds(fdCount == 0, "")
            o.count = UInt64(u32(4))
            o.argsz = u32(0)
        case .migDataWrite:
            size(p.count >= 8 && p.count == 8 + Int(u32(4)), "expected 8 + size \(u32(4))")
            if UInt64(u32(4)) > maxXfer { fail(.maxTransfer, "size \(u32(4)) > \(maxXfer)") }
            fds(fdCount == 0, "")
        default:
            break
        }
        remember(h, direction, o)
    }

    private mutating func remember(_ h: MessageHeader, _ direction: CaptureDirection, _ o: Outstanding) {
        if h.noReply {
            noReplyIDs[direction]![h.messageID] = h.command
            if noReplyIDs[direction]!.count > 4096 { noReplyIDs[direction]!.removeAll() }
            return
        }
        outstanding[direction]![h.messageID] = o
    }

    // MARK: Replies

    private mutating func checkReply(_ h: MessageHeader, _ p: [UInt8], whole: Bool, fdCount: Int, direction: CaptureDirection,
                                     report: (ValidationRule, String, String?) -> Void) {
        func fail(_ r: ValidationRule, _ d: String, known: String? = nil) { report(r, d, known) }
        let requestDirection = direction.reversed
        guard let req = outstanding[requestDirection]!.removeValue(forKey: h.messageID) else {
            if let c = noReplyIDs[requestDirection]!.removeValue(forKey: h.messageID) {
                fail(.replyToNoReply, "reply #\(h.messageID) to \(c) sent with NO_REPLY")
            } else {
                fail(.replyUnmatched, "no outstanding command #\(h.messageID) from the other side")
            }
            return
        }
        if h.command != req.command { fail(.replyCommand, "reply says \(h.command) to a \(req.command)") }
        if h.isError {
            if !p.isEmpty { fail(.errorReply, "error reply with \(p.count) payload bytes") }
            if h.errorNumber == 0 || h.errorNumber > 4096 { fail(.errnoRange, "errno \(h.errorNumber)") }
            if fdCount > 0 { fail(.fdUnexpected, "error reply carried \(fdCount) fds") }
            return
        }
        let c = req.command
        func size(_ ok: Bool, _ what: String) { if whole && !ok { fail(.payloadSize, "\(c) reply payload \(p.count) bytes, \(what)") } }
        func noFDs() { if fdCount > 0 { fail(.fdUnexpected, "\(c) reply carried \(fdCount) fds") } }
        func u32(_ at: Int) -> UInt32 { p.count >= at + 4 ? p.le32(at: at) : 0 }
        func u64(_ at: Int) -> UInt64 { p.count >= at + 8 ? p.le64(at: at) : 0 }
        func withinArgsz() {
            if let a = req.argsz, whole, p.count > Int(a) { fail(.argsz, "reply payload \(p.count) > the request's argsz \(a)") }
        }

        switch c {
        case .version:
            if fdCount > 1 { fail(.fdCount, "VERSION reply carried \(fdCount) fds") }
            do {
                let v = try VersionPayload(payload: p)
                serverCaps = v.effectiveCapabilities
                if v.major != req.major || v.minor > req.minor {
                    fail(.versionReply, "reply \(v.major).\(v.minor) to a proposal of \(req.major).\(req.minor)")
                }
            } catch { if whole { fail(.versionLayout, "\(error)") } }
        case .dmaMap, .deviceSetIRQs, .deviceReset, .migDataWrite:
            size(p.isEmpty, "expected 0")
            noFDs()
        case .dmaUnmap:
            size(p.isEmpty || p.count == 24, "expected 24 (or 0)")
            noFDs()
        case .deviceGetInfo:
            size(p.count >= 16, "expected at least 16")
            withinArgsz()
            noFDs()
        case .deviceGetIRQInfo:
            size(p.count == 16, "expected 16")
            noFDs()
        case .deviceGetRegionInfo:
            size(p.count >= 32, "expected at least 32")
            withinArgsz()
            let flags = u32(4), capOffset = u32(12)
            if flags & 0x8 != 0 && (capOffset < 32 || capOffset >= max(UInt32(p.count), 32)) {
                fail(.regionInfoCaps, "CAPS with cap_offset \(capOffset) in a \(p.count)-byte reply")
            }
            if fdCount > 1 { fail(.fdCount, "REGION_INFO reply carried \(fdCount) fds") }
            if flags & 0x4 != 0 && fdCount == 0 && whole && p.count >= Int(u32(0)) {
                fail(.fdCount, "MMAP region without its fd")
            }
        case .deviceGetRegionIOFDs:
            size(p.count >= 16, "expected at least 16")
            withinArgsz()
        case .regionRead:
            let count = UInt64(u32(12))
            size(p.count >= 16 && UInt64(p.count - 16) == count, "expected 16 + count \(count)")
            if let asked = req.count, count > asked { fail(.replyCount, "returned \(count) of \(asked) bytes asked") }
            noFDs()
        case .regionWrite:
            size(p.count == 16, "expected 16")
            noFDs()
        case .dmaRead:
            let asked = req.count ?? 0
            size(p.count >= 16 && UInt64(p.count - 16) == asked, "expected 16 + count \(asked)")
            if p.count >= 16 && u64(8) != asked && UInt64(u32(8)) == asked {
                fail(.dmaLayout, "count is a u32 at offset 24 and the data starts at offset 28", known: "QEMU 10.1")
            }
            noFDs()
        case .dmaWrite:
            if p.isEmpty { fail(.dmaLayout, "header-only DMA_WRITE reply", known: "QEMU 10.1") }
            else { size(p.count == 16, "expected 16") }
            noFDs()
        case .regionWriteMulti:
            size(p.count == 8, "expected 8")
            noFDs()
        case .deviceFeature:
            size(p.count >= 8, "expected at least 8")
            withinArgsz()
            noFDs()
        case .migDataRead:
            let returned = UInt64(u32(4))
            size(p.count >= 8 && UInt64(p.count - 8) >= returned, "expected 8 + size \(returned)")
            if let asked = req.count, returned > asked { fail(.replyCount, "returned \(returned) of \(asked) bytes asked") }
            noFDs()
        default:
            break
        }
    }
}
