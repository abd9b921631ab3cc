import Glibc
import Logging
import VFIOUserCapture
import VFIOUserTransport

/// A transparent vfio-user proxy: every client that connects to the listening socket
/// gets its own connection to the upstream server, and every byte and fd goes through
/// unchanged and in order, in both directions, including server-to-client requests
/// and NO_REPLY messages. One OS thread per direction; when either side closes, the
/// other sees it close too, and both are closed.
public final class VFIOUserProxy: Sendable {
    /// The real server's socket, connected to once per client.
    public let upstreamPath: String
    /// What is done with every message forwarded.
    public let recorder: MessageRecorder
    private let logger: Logger
    private let state = Locked<(listener: UnixListener?, stopped: Bool, sessions: Int, active: Int)>((nil, false, 0, 0))

    /// A proxy to the server at `upstreamPath`; nothing listens until it is started.
    public init(upstreamPath: String, recorder: MessageRecorder, logger: Logger) {
        self.upstreamPath = upstreamPath
        self.recorder = recorder
        self.logger = logger
    }

    /// Sessions accepted so far and currently open.
    public var sessionCounts: (total: Int, active: Int) { state.withLock { ($0.sessions, $0.active) } }

    /// Accepts clients until `stop()`; blocks the calling thread.
    public func serve(on listener: UnixListener) {
        let already = state.withLock { s -> Bool in
            if s.stopped { return true }
            s.listener = listener
            return false
        }
        if already { return }
        while true {
            let client: MessageSocket
            do { client = try listener.accept() } catch {
                if state.withLock({ $0.stopped }) { break }
                logger.error("accept failed: \(error)")
                continue
            }
            if state.withLock({ $0.stopped }) { client.fd.close(); break }
            let upstream: MessageSocket
            do { upstream = try MessageSocket.connect(path: upstreamPath) } catch {
                // The client sees the same thing as a server that is not there: a closed socket.
                logger.error("cannot connect to \(upstreamPath): \(error); closing the client")
                client.fd.close()
                continue
            }
            let n = state.withLock { s -> Int in
                s.sessions += 1
                s.active += 1
                return s.sessions
            }
            let session = ProxySession(client: client.fd, server: upstream.fd, number: n,
                                       recorder: recorder.isActive ? recorder.connection(UInt32(n)) : nil, logger: logger)
            session.start { [self] in state.withLock { $0.active -= 1 } }
        }
    }

    /// Serves on a background thread and returns at once.
    public func start(on listener: UnixListener) {
        spawnThread(name: "vfu-proxy") { [self] in serve(on: listener) }
    }

    /// Stops accepting and removes the socket file. Open sessions run on until either side closes.
    public func stop() {
        let l = state.withLock { s -> UnixListener? in
            s.stopped = true
            return s.listener
        }
        l?.close()
    }
}

/// One proxied connection: two pumps, and whichever ends last closes both sockets.
///
/// When one side closes, the other gets end of file after everything already sent
/// to it (a server's last error reply is not lost); peers close on end of file, so
/// both connections close. A failed read or send shuts both down at once.
final class ProxySession: Sendable {
    let client: OwnedFD
    let server: OwnedFD
    let number: Int
    let recorder: ConnectionRecorder?
    let logger: Logger
    private let running = Locked(2)

    init(client: OwnedFD, server: OwnedFD, number: Int, recorder: ConnectionRecorder?, logger: Logger) {
        self.client = client
        self.server = server
        self.number = number
        self.recorder = recorder
        var l = logger
        l[metadataKey: "conn"] = "\(number)"
        self.logger = l
    }

    func start(onEnd: @escaping @Sendable () -> Void) {
        logger.info("client connected")
        let c = client.rawValue, s = server.rawValue
        for (from, to, direction) in [(c, s, CaptureDirection.clientToServer), (s, c, .serverToClient)] {
            spawnThread(name: "vfu-proxy-\(number)\(direction == .clientToServer ? "c" : "s")") { [self] in
                var pump = Pump(from: from, to: to, direction: direction, recorder: recorder, logger: logger)
                switch pump.run() {
                case .endOfStream:
                    // Pass the end on, as the peer would have seen it: the other side reads
                    // what is still on its way, then end of file, and closes in turn.
                    _ = shutdown(to, Int32(SHUT_WR))
                case .failed:
                    _ = shutdown(c, Int32(SHUT_RDWR))
                    _ = shutdown(s, Int32(SHUT_RDWR))
                }
                if running.withLock({ n -> Int in n -= 1; return n }) == 0 {
                    client.close()
                    server.close()
                    logger.info("client disconnected")
                    onEnd()
                }
            }
        }
    }
}
