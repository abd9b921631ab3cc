import FoundationEssentials
import Glibc
import Logging
import VFIOUserProtocol
import VFIOUserTransport

/// The control socket (`vfu serve --control PATH`, docs/control.md): newline-delimited
/// JSON requests and replies, one OS thread per control client, devices addressed by name.
///
/// The socket is created mode 0600 and every client's uid is checked with SO_PEERCRED:
/// a client running as another user is refused even if the file's mode was changed.
public final class ControlServer: Sendable {
    /// The devices requests can address, by name.
    public let devices: [ControlledDevice]
    private let listener: UnixListener
    private let logger: Logger
    private struct State {
        var stopped = false
        var clients: [Int: LineSocket] = [:]
        /// Live clients' threads, and those of clients that ended (joined by the accept loop).
        var threads: [Int: pthread_t] = [:]
        var finished: [pthread_t] = []
        var ended: Set<Int> = []
        var next = 0
    }
    private let state = Locked(State())

    /// Listens on `path` for clients that control `devices` (their names must differ).
    public init(path: String, devices: [ControlledDevice], logger: Logger = Logger(label: "vfu-ctl")) throws(TransportError) {
        precondition(Set(devices.map(\.name)).count == devices.count, "control device names must be unique")
        self.devices = devices
        self.logger = logger
        listener = try UnixListener(path: path)
    }

    /// Starts the accept thread and the ticker (time-based triggers and scopes).
    public func start() {
        spawnThread(name: "vfu-ctl-accept") { [self] in acceptLoop() }
        spawnThread(name: "vfu-ctl-tick") { [self] in
            while !state.withLock({ $0.stopped }) {
                for d in devices { d.tick() }
                sleepMs(20)
            }
        }
    }

    /// Stops accepting, closes every control client and joins their threads.
    public func stop() {
        let (clients, threads) = state.withLock { s -> ([LineSocket], [pthread_t]) in
            s.stopped = true
            defer { s.threads.removeAll(); s.finished.removeAll() }
            return (Array(s.clients.values), Array(s.threads.values) + s.finished)
        }
        listener.close()
        for c in clients { c.shutdown() }
        for t in threads { pthread_join(t, nil) }
    }

    private func acceptLoop() {
        while true {
            // Threads of clients that have gone are joined here, so they do not pile up.
            for t in state.withLock({ s -> [pthread_t] in defer { s.finished.removeAll() }; return s.finished }) {
                pthread_join(t, nil)
            }
            let sock: MessageSocket
            do { sock = try listener.accept() } catch {
                if state.withLock({ $0.stopped }) { return }
                if case .closed = error { return }
                logger.error("control: accept failed: \(error)")
                sleepMs(50)
                continue
            }
            let client = LineSocket(fd: sock.fd)
            if let why = Self.refusal(client.fd.rawValue) {
                logger.warning("control: refused a client: \(why)")
                client.write(LineJSON.encode(ControlReply.failure(nil, "permission-denied", why)))
                client.close()
                continue
            }
            let n = state.withLock { s -> Int? in
                if s.stopped { return nil }
                s.next += 1
                s.clients[s.next] = client
                return s.next
            }
            guard let n else { client.close(); return }
            let t = startThread(name: "vfu-ctl-\(n)") { [self] in
                serve(client)
                state.withLock { s in
                    _ = s.clients.removeValue(forKey: n)
                    if let t = s.threads.removeValue(forKey: n) { s.finished.append(t) } else { s.ended.insert(n) }
                }
                client.close()
            }
            state.withLock { s in
                if s.ended.remove(n) != nil { s.finished.append(t) } else { s.threads[n] = t }
            }
        }
    }

    /// Why the peer on `fd` may not control the devices (another uid), or nil.
    static func refusal(_ fd: Int32) -> String? {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
        var cred = (Int32(0), UInt32(0), UInt32(0))
        var len = socklen_t(MemoryLayout.size(ofValue: cred))
        guard getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else {
            return "cannot read the peer's credentials (errno \(errno))"
        }
        let me = getuid()
        return cred.1 == me ? nil : "uid \(cred.1) (pid \(cred.0)) is not the server's uid \(me)"
    }

    // MARK: One client

    private func serve(_ client: LineSocket) {
        while true {
            let line: [UInt8]
            do { line = try client.readLine() } catch {
                if error == .tooLong {
                    client.write(LineJSON.encode(ControlReply.failure(nil, "line-too-long", "a request line may be at most \(LineSocket.maxLine) bytes")))
                }
                return
            }
            if line.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) { continue }
            let request: ControlRequest
            do { request = try JSONDecoder().decode(ControlRequest.self, from: Data(line)) } catch {
                client.write(LineJSON.encode(ControlReply.failure(Self.salvageID(line), "bad-json", Self.describe(error))))
                continue
            }
            if request.op == "watch" {
                switch target(request) {
                case .failure(let r): client.write(LineJSON.encode(ControlReply.failure(request.id, r.code, r.reason)))
                case .success(let d): if !watch(request, d, client) { return }
                }
                continue
            }
            let reply = handle(request)
            if !client.write(LineJSON.encode(reply)) { return }
        }
    }

    /// Handles one request (everything but `watch`).
    public func handle(_ q: ControlRequest) -> ControlReply {
        if q.op == "devices" {
            var r = ControlReply(id: q.id, ok: true)
            r.devices = devices.map { $0.summary() }
            return r
        }
        switch target(q) {
        case .failure(let e): return .failure(q.id, e.code, e.reason)
        case .success(let d):
            do { return try d.handle(q) } catch { return .failure(q.id, error.code, error.reason) }
        }
    }

    private func target(_ q: ControlRequest) -> Result<ControlledDevice, Refusal> {
        if let name = q.device {
            guard let d = devices.first(where: { $0.name == name }) else {
                return .failure(Refusal("unknown-device", "no device named '\(name)' (devices: \(devices.map(\.name).joined(separator: ", ")))"))
            }
            return .success(d)
        }
        guard devices.count == 1 else {
            return .failure(Refusal("device-required", "this process serves \(devices.count) devices; name one with device"))
        }
        return .success(devices[0])
    }

    /// Streams events to `client` until it hangs up or `limit` events went out;
    /// returns false when the client is gone.
    private func watch(_ q: ControlRequest, _ d: ControlledDevice, _ client: LineSocket) -> Bool {
        var kinds = Set(RawEvent.Kind.allCases)
        if let k = q.kinds {
            let wanted = k.map { RawEvent.Kind(rawValue: $0) }
            if wanted.contains(where: { $0 == nil }) {
                let names = RawEvent.Kind.allCases.map(\.rawValue).joined(separator: ", ")
                return client.write(LineJSON.encode(ControlReply.failure(q.id, "bad-request", "unknown event kind in \(k) (kinds: \(names))")))
            }
            kinds = Set(wanted.compactMap { $0 })
        }
        if let l = q.limit, l < 1 { return client.write(LineJSON.encode(ControlReply.failure(q.id, "bad-request", "limit must be at least 1"))) }
        let w = d.addWatcher(kinds)
        defer { d.removeWatcher(w) }
        var ok = ControlReply(id: q.id, ok: true)
        ok.device = d.name
        ok.watching = true
        guard client.write(LineJSON.encode(ok)) else { return false }
        var sent = 0
        while !state.withLock({ $0.stopped }) {
            let (events, dropped) = w.take(timeoutMs: 100)
            var out: [UInt8] = []
            if dropped > 0 {
                let ev = ControlEvent(event: "overflow", seq: 0, time: Clock.seconds(Clock.monoNs()), device: d.name, count: dropped)
                out += LineJSON.encode(ev)
            }
            for raw in events {
                if let l = q.limit, sent >= l { break }
                out += raw.jsonLine(device: d.name)
                sent += 1
            }
            if !out.isEmpty, !client.write(out) { return false }
            if let l = q.limit, sent >= l { return true }
            if client.peerHungUp() { return false }
        }
        return false
    }

    /// The request's id, if the line is JSON with a numeric "id" after all.
    static func salvageID(_ line: [UInt8]) -> Int? {
        struct IDOnly: Decodable { var id: Int? }
        return (try? JSONDecoder().decode(IDOnly.self, from: Data(line)))?.id
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let k, _): return "missing field '\(k.stringValue)'"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "field '\(c.codingPath.map(\.stringValue).joined(separator: "."))': \(c.debugDescription)"
        case DecodingError.dataCorrupted(let c):
            let path = c.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? "not a JSON object: \(c.debugDescription)" : "field '\(path)': \(c.debugDescription)"
        default: return "not a request: \(error)"
        }
    }
}
