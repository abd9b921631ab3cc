import Glibc
import VFIOUserProtocol
import VFIOUserTransport

// Whether the server outlives what its clients do: "the next client is served" after
// each check that ends a connection badly, and how every launch of the server ended.
extension ConformanceSuite {
    /// After check `after` is done with `peer`, a new client on the same server (never
    /// a relaunched one) negotiates and gets DEVICE_GET_INFO answered. A server that has
    /// exited instead fails, unless it exited with status 0 (a one-shot server, whose
    /// design leaves a reconnecting client nothing: a warning).
    func nextClientServed(_ r: inout Recorder, _ links: Connections, after: String, _ peer: RawPeer?) {
        let id = "server.next-client.\(after)"
        if links.model == .oneAtATime && links.server == nil {
            r.skip(id, "the server serves one client at a time and the suite does not run it (--server-cmd)", "§1.1"); return
        }
        record(&r, id, after, nextClient(links, after: after, peer))
    }

    func record(_ r: inout Recorder, _ id: String, _ after: String, _ next: NextClient) {
        let source = "§1.1 Client Disconnection, §6"
        switch next {
        case .served(let p):
            p.close()
            r.pass(id, "after \(after), a new client negotiated and got DEVICE_GET_INFO answered", source)
        case .oneShot:
            r.warn(id, "after \(after) the server exited with status 0: it serves one client and exits, so a reconnecting client finds no server", source)
        case .dead(let why):
            r.fail(id, "after \(after) the server \(why), so the next client finds no server", source)
        case .notServed(let why):
            r.fail(id, "after \(after), \(why)", source)
        }
    }

    enum NextClient {
        case served(RawPeer)
        case oneShot
        case dead(String)
        case notServed(String)
    }

    /// Ends `peer`, then connects a new client to the same server and negotiates.
    func nextClient(_ links: Connections, after: String, _ peer: RawPeer?) -> NextClient {
        peer?.close()
        links.dropShared()
        if let p = RawPeer.connect(path: links.socketPath, timeoutMs: timeoutMs, retryMs: links.server == nil ? 0 : 500),
           p.negotiate() != nil,
           case .message(let m) = p.call(.deviceGetInfo, DeviceInfo(argsz: 16).encoded), !m.header.isError {
            return .served(p)
        }
        guard let server = links.server else { return .notServed("a new client is not served") }
        switch server.waitForExit(ms: 1000, during: after) {
        case .exited(0)?: return .oneShot
        case let status?:
            let log = server.logTail()
            return .dead("\(status)" + (log.isEmpty ? "" : " (it said: \(log))"))
        case nil:
            return .notServed("the server is still running but a new client is not served (VERSION, then DEVICE_GET_INFO)")
        }
    }

    /// How each launch of the server ended (only when the suite runs it): a death by a
    /// signal the suite did not send is a crash.
    func lifecycle(_ r: inout Recorder, _ links: Connections) {
        guard let server = links.server else { return }
        server.stop(during: "end of run")
        let ended = server.endings.filter { $0.status != .stoppedBySuite }
        let crashes = ended.filter { $0.status.isCrash }
        let list = ended.map { "launch \($0.launch) \($0.status) (during \($0.during))" }.joined(separator: "; ")
        let detail = "\(server.launches) launches" + (ended.isEmpty ? "; every one was running until the suite stopped it" : "; \(list)")
        if !crashes.isEmpty {
            r.fail("server.no-crash", detail, "§6")
        } else {
            r.pass("server.no-crash", detail, "§6")
        }
    }

    /// A new connection for check `id`, negotiated; nil (recorded) when there is none.
    func freshNegotiated(_ r: inout Recorder, _ links: Connections, _ id: String) -> RawPeer? {
        if links.skipUnlessFresh(&r, id) { return nil }
        guard let p = links.fresh(id) else { r.fail(id, "cannot connect to \(links.socketPath)", "transport"); return nil }
        guard p.negotiate() != nil else { r.fail(id, "VERSION negotiation failed on a new connection", "§2"); return nil }
        return p
    }

    /// Whether the stream is still in step: a DEVICE_GET_INFO sent now is the next
    /// thing answered (a closed connection is in step too: nothing was misread).
    enum Step: Equatable {
        case inStep, closed
        case outOfStep(String)
        case noAnswer
    }

    func probeStep(_ p: RawPeer, ignoring: Set<UInt16> = []) -> Step {
        let id: UInt16 = 0x5EED
        p.send(.deviceGetInfo, DeviceInfo(argsz: 16).encoded, id: id)
        return awaitStep(p, id: id, ignoringErrorsFor: ignoring)
    }

    /// Waits for the reply to `id`; error replies to the ids in `ignoring` (the bad
    /// message's own) may come first. Anything else first means the server read our
    /// bytes at the wrong place.
    func awaitStep(_ p: RawPeer, id: UInt16, ignoringErrorsFor ignoring: Set<UInt16>) -> Step {
        let deadline = monotonicMs() + Int(timeoutMs)
        while true {
            let left = deadline - monotonicMs()
            guard left > 0 else { return .noAnswer }
            switch p.receive(timeoutMs: Int32(left)) {
            case .message(let m):
                m.closeFDs()
                if m.header.isReply && m.header.messageID == id {
                    return m.header.isError && m.header.command == .deviceGetInfo
                        ? .outOfStep("the probe got \(show(.message(m)))") : .inStep
                }
                if m.header.isReply && m.header.isError && ignoring.contains(m.header.messageID) { continue }
                return .outOfStep("\(show(.message(m))) id \(m.header.messageID) arrived before the probe's reply")
            case .closed: return .closed
            case .timeout: return .noAnswer
            case .broken(let why): return .outOfStep("broken stream (\(why))")
            }
        }
    }
}

extension RawPeer {
    /// Ends the connection as far as the server can see (the fd is closed on release).
    func close() { socket.shutdown() }
}
