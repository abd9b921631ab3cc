import Glibc
import VFIOUserProtocol
import VFIOUserTransport

// Adversarial framing (§1.2, §6), judged by whether the stream stays in step: after
// each bad message the server either closes the connection (with or without an error
// reply first) or answers the next request and nothing else. A server that reads a
// message's body as headers, or leaves part of a body unread, answers requests we
// never made, or none.
extension ConformanceSuite {
    func framing(_ r: inout Recorder, _ links: Connections) {
        let getInfoB = Self.message(id: 0xB0B0, .deviceGetInfo, DeviceInfo(argsz: 16).encoded)

        // msg_size above any limit, with a well-formed request as its first body bytes:
        // those bytes are body, never a request of their own.
        if let p = freshNegotiated(&r, links, "message.oversize-body") {
            var h = MessageHeader(messageID: 0xA0A0, command: .regionWrite, messageSize: 0x0800_0000).bytes
            h += getInfoB
            p.sendRaw(h)
            let step = awaitStep(p, id: 0xB0B0, ignoringErrorsFor: [0xA0A0])
            let detail = "msg_size 128 MiB whose body starts with a DEVICE_GET_INFO request"
            switch step {
            case .inStep:
                r.fail("message.oversize-body", detail + ": the body was answered as a request of its own (the stream is out of step)", "§1.2, §6")
            case .closed:
                r.pass("message.oversize-body", detail + ": connection closed", "§1.2, §6")
            case .noAnswer:
                r.warn("message.oversize-body", detail + ": neither refused nor closed within \(timeoutMs) ms (the server may be waiting for 128 MiB; closing is safer)", "§6")
            case .outOfStep(let why):
                r.fail("message.oversize-body", detail + ": \(why)", "§1.2, §6")
            }
            nextClientServed(&r, links, after: "message.oversize-body", p)
        }

        // The reply flag on a request with a body: refusing it must still skip the body.
        if let p = freshNegotiated(&r, links, "message.reply-flag-body") {
            var h = MessageHeader(messageID: 0xA1A1, command: .deviceGetInfo, messageSize: UInt32(16 + getInfoB.count), flags: 1).bytes
            h += getInfoB
            p.sendRaw(h)
            judgeInStep(&r, p, "message.reply-flag-body", "a request flagged as a reply, its body a DEVICE_GET_INFO request",
                        bodyID: 0xB0B0, badID: 0xA1A1, source: "§1.2, §6")
            nextClientServed(&r, links, after: "message.reply-flag-body", p)
        }

        // A body too short for its command, in the same write as the next request.
        if let p = freshNegotiated(&r, links, "message.short-body-pipelined") {
            var bytes = Self.message(id: 0xA2A2, .regionRead, [0, 0, 0, 0, 0, 0, 0, 0])   // 8 of the 16 access bytes
            bytes += Self.message(id: 0xA3A3, .deviceGetRegionInfo, [32, 0, 0, 0])           // 4 of 16
            bytes += getInfoB
            p.sendRaw(bytes)
            var got: [String] = []
            var ok = true
            for want in [UInt16(0xA2A2), 0xA3A3] {
                let x = p.receive()
                if case .message(let m) = x, m.header.messageID == want, m.header.isError { got.append("\(want): \(show(x))"); continue }
                ok = false; got.append("expected an error reply to \(want), got \(show(x))"); break
            }
            let step = ok ? awaitStep(p, id: 0xB0B0, ignoringErrorsFor: []) : .noAnswer
            r.check(ok && step == .inStep, "message.short-body-pipelined",
                    "REGION_READ with 8 payload bytes and GET_REGION_INFO with 4, then DEVICE_GET_INFO, in one write: "
                    + got.joined(separator: "; ") + (ok ? "; then \(describe(step))" : ""), "§3.8, §6")
        }

        // A body that arrives in two writes, its rest in the same write as the next
        // request: the server must wait for the whole body, then answer both.
        if let p = freshNegotiated(&r, links, "message.split-body-pipelined") {
            let first = Self.message(id: 0xA8A8, .regionRead, RegionAccess(offset: 0, region: 7, count: 4).encoded)
            p.sendRaw(Array(first[..<24]))
            _ = poll(nil, 0, 20)   // let the server see the first piece on its own
            p.sendRaw(Array(first[24...]) + getInfoB)
            let x = p.receive()
            var ok = false
            var detail = "REGION_READ whose last 8 body bytes come with the next request: \(show(x))"
            if case .message(let m) = x, m.header.messageID == 0xA8A8, !m.header.isError {
                let step = awaitStep(p, id: 0xB0B0, ignoringErrorsFor: [])
                ok = step == .inStep
                detail += "; then \(describe(step))"
            }
            r.check(ok, "message.split-body-pipelined", detail, "§1.2")
            nextClientServed(&r, links, after: "message.split-body-pipelined", p)
        }

        // Every split of a request across two writes.
        if let p = freshNegotiated(&r, links, "message.split-every-byte") {
            var bad: String?
            let payload = RegionAccess(offset: 0, region: 7, count: 4).encoded
            for k in 1..<(16 + payload.count) where bad == nil {
                let id = UInt16(0x1000 + k)
                let bytes = Self.message(id: id, .regionRead, payload)
                p.sendRaw(Array(bytes[..<k]))
                _ = poll(nil, 0, 3)   // let the server see the first piece on its own
                p.sendRaw(Array(bytes[k...]))
                let x = p.receive()
                if case .message(let m) = x, m.header.messageID == id, !m.header.isError, m.header.messageSize == 36 { continue }
                bad = "split after byte \(k): \(show(x))"
            }
            r.check(bad == nil, "message.split-every-byte",
                    bad ?? "a 32-byte REGION_READ split at each of its 31 inner bytes: every one answered", "§1.2")
            nextClientServed(&r, links, after: "message.split-every-byte", p)
        }

        // Headers that cannot be framed: refused or closed, never misread, never fatal.
        let garbage: [(String, [UInt8])] = [
            ("type bits 0xF", MessageHeader(messageID: 0xA4A4, command: .deviceGetInfo, messageSize: 16, flags: 0xF).bytes),
            ("msg_size 0", MessageHeader(messageID: 0xA5A5, command: .deviceGetInfo, messageSize: 0).bytes),
            ("msg_size 0xFFFFFFFF", MessageHeader(messageID: 0xA6A6, command: .regionWrite, messageSize: 0xFFFF_FFFF).bytes),
            ("random bytes", [0x9C, 0x3F, 0xEE, 0x71, 0x05, 0x00, 0x00, 0x00, 0x3B, 0xD2, 0x44, 0x19, 0x88, 0x6A, 0x01, 0xF7]),
        ]
        if let p = freshNegotiated(&r, links, "message.garbage-header") {
            var seen: [String] = []
            var bad: String?
            var live: RawPeer? = p
            var lost: NextClient?
            for (what, bytes) in garbage where bad == nil {
                guard let q = live else { break }
                q.sendRaw(bytes)
                let step = probeStep(q, ignoring: [bytes.le16(at: 0)])
                seen.append("\(what): \(describe(step))")
                switch step {
                case .inStep: continue
                case .closed:
                    // Closing is right; the next garbage goes to the server's next client.
                    live = nil
                    let next = nextClient(links, after: "message.garbage-header", q)
                    if case .served(let n) = next { live = n } else { lost = next }
                case .noAnswer, .outOfStep: bad = seen.last
                }
            }
            r.check(bad == nil, "message.garbage-header", seen.joined(separator: "; "), "§1.2, §6")
            record(&r, "server.next-client.message.garbage-header", "message.garbage-header",
                   lost ?? nextClient(links, after: "message.garbage-header", live))
        }

        // fds by the hundred on a message that takes none.
        if let p = freshNegotiated(&r, links, "message.fd-flood") {
            let fdsBefore = links.server.map { openFDs($0.pid) } ?? -1
            var efds: [OwnedFD] = []
            for _ in 0..<253 { if let e = try? EventFD.create() { efds.append(e) } }
            let id: UInt16 = 0xA7A7
            let sent = (try? p.socket.send(header: MessageHeader(messageID: id, command: .deviceGetInfo, messageSize: 0),
                                           payload: DeviceInfo(argsz: 16).encoded, fds: efds.map(\.rawValue))) != nil
            efds.forEach { $0.close() }
            let x = p.receive()
            var detail = "DEVICE_GET_INFO with \(efds.count) fds (sent: \(sent)): \(show(x))"
            var ok: Bool
            switch x {
            case .message(let m) where m.header.messageID == id:
                m.closeFDs()
                let step = probeStep(p)
                detail += "; then \(describe(step))"
                ok = step == .inStep || step == .closed
            case .closed: ok = true
            default: ok = false
            }
            nextClientServed(&r, links, after: "message.fd-flood", p)
            if let server = links.server, fdsBefore >= 0, server.isRunning {
                let after = openFDs(server.pid)
                detail += "; the server holds \(after) fds (\(fdsBefore) before)"
                if after >= fdsBefore + 200 { ok = false; detail += ": the fds leaked" }
            }
            r.check(ok, "message.fd-flood", detail, "§1.4")
        }
    }

    /// Judges the stream after one bad message `badID` whose body held request `bodyID`.
    func judgeInStep(_ r: inout Recorder, _ p: RawPeer, _ id: String, _ what: String, bodyID: UInt16, badID: UInt16, source: String) {
        let x = p.receive()
        switch x {
        case .closed:
            r.pass(id, what + ": connection closed", source)
        case .message(let m) where m.header.messageID == bodyID:
            r.fail(id, what + ": the body was answered as a request of its own (\(show(x))): the stream is out of step", source)
        case .message(let m) where m.header.messageID == badID && m.header.isError:
            let step = probeStep(p)
            r.check(step == .inStep || step == .closed, id, what + ": \(show(x)), then \(describe(step))", source)
        default:
            // Nothing for the bad message itself: the next request must still be answered.
            let step = x.isTimeout ? probeStep(p) : .outOfStep(show(x))
            r.check(step == .inStep || step == .closed, id, what + ": \(show(x)) for it, then \(describe(step))", source)
        }
    }

    func describe(_ s: Step) -> String {
        switch s {
        case .inStep: return "the next request was answered in step"
        case .closed: return "connection closed"
        case .noAnswer: return "no answer to the next request within \(timeoutMs) ms"
        case .outOfStep(let why): return "out of step: \(why)"
        }
    }

    /// One whole message's bytes.
    static func message(id: UInt16, _ command: Command, _ payload: [UInt8], flags: UInt32 = 0) -> [UInt8] {
        MessageHeader(messageID: id, command: command, messageSize: UInt32(16 + payload.count), flags: flags).bytes + payload
    }

    /// How many fds process `pid` holds (-1 if unknown).
    func openFDs(_ pid: pid_t) -> Int {
        guard pid > 0, let d = opendir("/proc/\(pid)/fd") else { return -1 }
        defer { closedir(d) }
        var n = 0
        while readdir(d) != nil { n += 1 }
        return n - 2
    }
}

extension RawPeer.Received {
    var isTimeout: Bool { if case .timeout = self { return true }; return false }
}
