import Glibc
import Logging
@_spi(Server) import PCICore
import Synchronization
import VFIOUserProtocol
import VFIOUserTransport

/// A vfio-user server: listens on a Unix socket and serves one device to every
/// client that connects, each on its own OS thread.
///
/// Several clients may be connected at once; commands from each are applied in
/// its own order and the device lock serializes them against each other. What
/// one client registered (DMA mappings, eventfds) is dropped when it leaves, and
/// the device resets when the last one leaves.
public final class VFIOUserServer: Sendable {
    /// The device every connection drives.
    public let device: PCIDevice
    /// Limits and behaviour, fixed at init.
    public let options: ServerOptions
    private let logger: Logger
    private struct State {
        var listener: UnixListener?
        var stopped = false
        var connections = 0
        /// Open connections and their (joinable) threads.
        var live: [Int: (connection: Connection, thread: pthread_t?)] = [:]
        /// Threads of connections that ended, to be joined.
        var finished: [pthread_t] = []
    }
    private let state = Locked(State())

    /// A server for `device`; nothing listens until it is started.
    public init(device: PCIDevice, options: ServerOptions = ServerOptions(), logger: Logger = Logger(label: "vfu")) {
        self.device = device
        self.options = options
        self.logger = logger
    }

    /// Whether `stop()` was called (serve() also returns when its listener fails).
    public var isStopped: Bool { state.withLock { $0.stopped } }

    /// Connections accepted so far and currently open.
    public var connectionCounts: (total: Int, active: Int) { state.withLock { ($0.connections, $0.live.count) } }

    /// Accepts clients until `stop()`; blocks the calling thread.
    ///
    /// When accept fails for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) the
    /// loop backs off, from 10 ms up to a second, instead of spinning; the pending
    /// client is accepted once an fd is free again.
    public func serve(on listener: UnixListener) {
        let already = state.withLock { s -> Bool in
            if s.stopped { return true }
            s.listener = listener
            return false
        }
        if already { return }
        var backoffMs = 0
        while true {
            joinFinished()
            let sock: MessageSocket
            do { sock = try listener.accept() } catch {
                if state.withLock({ $0.stopped }) { break }
                if case .closed = error {
                    logger.error("the listening socket is no longer usable; not accepting clients")
                    break
                }
                backoffMs = backoffMs == 0 ? 10 : min(backoffMs * 2, 1000)
                if backoffMs <= 10 || backoffMs == 1000 {
                    logger.error("accept failed: \(error); retrying in \(backoffMs) ms")
                }
                sleepMs(backoffMs)
                continue
            }
            backoffMs = 0
            // Registered in the same critical section that checks `stopped`, so `stop()`
            // sees (and closes) every connection it did not refuse.
            let registered = state.withLock { s -> (Int, Connection, Int)? in
                if s.stopped { return nil }
                s.connections += 1
                let n = s.connections
                let conn = Connection(socket: sock, device: device, options: options, logger: logger, number: n)
                s.live[n] = (conn, nil)
                return (n, conn, s.live.count - 1)
            }
            guard let (n, conn, others) = registered else { sock.fd.close(); break }
            if others > 0 {
                let owner = device.owner
                logger.notice("client \(n) connected while \(others) other client(s) are: \(owner == nil ? "nobody owns the device yet, the first to map DMA, wire interrupts, write or reset it will" : "another client owns the device; this one may inspect it and drive migration, nothing else")")
            }
            let thread = startThread(name: "vfu-conn-\(n)") { [self] in
                conn.run()
                state.withLock { s in
                    if let t = s.live.removeValue(forKey: n)?.thread { s.finished.append(t) }
                }
            }
            state.withLock { s in
                if s.live[n] != nil { s.live[n]!.thread = thread } else { s.finished.append(thread) }
            }
        }
    }

    /// Joins the threads of connections that have ended.
    private func joinFinished() {
        let done = state.withLock { s -> [pthread_t] in
            defer { s.finished.removeAll() }
            return s.finished
        }
        for t in done { pthread_join(t, nil) }
    }

    /// Drops (shuts down) every live connection whose session `matches`, as a
    /// surprise removal would; returns how many. For a control plane (docs/control.md).
    @discardableResult
    public func dropConnections(where matches: (SessionID) -> Bool) -> Int {
        let live = state.withLock { s in s.live.values.map(\.connection) }
        let hit = live.filter { matches($0.session) }
        for c in hit {
            logger.notice("dropping connection \(c.number) (control plane)")
            c.socket.shutdown()
        }
        return hit.count
    }

    /// Starts serving on a background thread and returns at once.
    public func start(on listener: UnixListener) {
        spawnThread(name: "vfu-accept") { [self] in serve(on: listener) }
    }

    /// Stops accepting, removes the socket file, closes every live connection (each is
    /// logged) and joins their threads. Safe to call more than once, from any thread
    /// but a connection's own.
    public func stop() {
        let (l, live) = state.withLock { s -> (UnixListener?, [(Int, Connection)]) in
            // A second caller only waits: the first one closes.
            defer { s.stopped = true }
            return s.stopped ? (nil, []) : (s.listener, s.live.map { ($0.key, $0.value.connection) })
        }
        l?.close()
        if !live.isEmpty { logger.notice("shutting down: closing \(live.count) live connection(s)") }
        for (n, c) in live.sorted(by: { $0.0 < $1.0 }) {
            logger.info("closing connection \(n) for shutdown")
            c.socket.shutdown()
        }
        // Their threads end once they see the shutdown; then join every one.
        while true {
            let remaining = state.withLock { s -> [pthread_t] in
                let t = s.finished
                s.finished.removeAll()
                return t
            }
            for t in remaining { pthread_join(t, nil) }
            let open = state.withLock { s in !s.live.isEmpty || !s.finished.isEmpty }
            if !open { break }
            sleepMs(1)
        }
    }
}
