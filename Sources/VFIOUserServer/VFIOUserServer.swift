import Logging
import PCICore
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
    public let device: PCIDevice
    public let options: ServerOptions
    private let logger: Logger
    private let state = Mutex<(listener: UnixListener?, stopped: Bool, connections: Int, active: Int)>((nil, false, 0, 0))

    public init(device: PCIDevice, options: ServerOptions = ServerOptions(), logger: Logger = Logger(label: "vfu")) {
        self.device = device
        self.options = options
        self.logger = logger
    }

    /// Connections accepted so far and currently open.
    public var connectionCounts: (total: Int, active: Int) { state.withLock { ($0.connections, $0.active) } }

    /// Accepts clients until `stop()`; blocks the calling thread.
    public func serve(on listener: UnixListener) {
        let already = state.withLock { s -> Bool in
            if s.stopped { return true }
            s.listener = listener
            return false
        }
        if already { return }
        while true {
            let sock: MessageSocket
            do { sock = try listener.accept() } catch {
                if state.withLock({ $0.stopped }) { break }
                logger.error("accept failed: \(error)")
                continue
            }
            if state.withLock({ $0.stopped }) { sock.fd.close(); break }
            let n = state.withLock { s -> Int in
                s.connections += 1
                s.active += 1
                return s.connections
            }
            let conn = Connection(socket: sock, device: device, options: options, logger: logger, number: n)
            spawnThread(name: "vfu-conn-\(n)") { [self] in
                conn.run()
                state.withLock { $0.active -= 1 }
            }
        }
    }

    /// Starts serving on a background thread and returns at once.
    public func start(on listener: UnixListener) {
        spawnThread(name: "vfu-accept") { [self] in serve(on: listener) }
    }

    /// Stops accepting and removes the socket file. Open connections finish on their own.
    public func stop() {
        let l = state.withLock { s -> UnixListener? in
            s.stopped = true
            return s.listener
        }
        l?.close()
    }
}
