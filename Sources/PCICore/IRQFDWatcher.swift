import Glibc
import Synchronization
import VFIOUserTransport

/// Watches the eventfds a client registered with SET_IRQS EVENTFD|MASK or
/// EVENTFD|UNMASK (the kernel's "irqfd" direction: client → device). When one is
/// signalled, the mask or unmask is applied as if the client had sent it.
///
/// QEMU uses this for the INTx resample path when KVM irqfds are available. One
/// thread per device, started on the first registration; it sleeps in poll(2) and
/// is woken through its own eventfd whenever the set of fds changes.
final class IRQFDWatcher: Sendable {
    struct Key: Hashable, Sendable {
        var index: Int
        var vector: Int
        var unmask: Bool
    }

    private struct State: Sendable {
        var fds: [Key: (fd: OwnedFD, owner: SessionID)] = [:]
        var started = false
        var stopped = false
    }

    private let state = Locked(State())
    private let wake: OwnedFD?
    /// Applies a mask (false) or unmask (true) to a vector; called on the watcher thread.
    private let apply: @Sendable (Key) -> Void

    init(apply: @escaping @Sendable (Key) -> Void) {
        self.apply = apply
        wake = try? EventFD.create(nonBlocking: true)
    }

    /// Binds (or with nil, unbinds) the fd that triggers `key`.
    func set(_ key: Key, fd: OwnedFD?, owner: SessionID) {
        let start: Bool = state.withLock { s in
            // No explicit close: the poll loop may hold this fd in its snapshot, and
            // OwnedFD closes it when the last reference goes (never while polled, so
            // the number cannot be reused under the poll).
            s.fds[key] = fd.map { ($0, owner) }
            if s.started || fd == nil { return false }
            s.started = true
            return true
        }
        if start { spawnThread(name: "vfu-irqfd") { [self] in loop() } }
        if let w = wake { EventFD.signal(w.rawValue) }
    }

    func removeAll(owner: SessionID) { removeAll { _, o in o == owner } }

    func removeAll(index: Int) { removeAll { k, _ in k.index == index } }

    /// Closes and forgets every fd whose key and owner match.
    private func removeAll(where match: (Key, SessionID) -> Bool) {
        state.withLock { s in
            for (k, v) in s.fds where match(k, v.owner) { s.fds[k] = nil }
        }
        if let w = wake { EventFD.signal(w.rawValue) }
    }

    /// Closes every fd and ends the thread (the device is going away).
    func stop() {
        state.withLock { s in
            s.stopped = true
            s.fds.removeAll()
        }
        if let w = wake { EventFD.signal(w.rawValue) }
    }

    private func loop() {
        guard let wake else { return }
        while true {
            if state.withLock({ $0.stopped }) { return }
            // Snapshot the fds; the owners keep them open until we are woken again.
            let entries: [(Key, OwnedFD)] = state.withLock { s in s.fds.map { ($0.key, $0.value.fd) } }
            var pfds = [pollfd(fd: wake.rawValue, events: Int16(POLLIN), revents: 0)]
            pfds += entries.map { pollfd(fd: $0.1.rawValue, events: Int16(POLLIN), revents: 0) }
            let n = poll(&pfds, nfds_t(pfds.count), -1)
            if n < 0 { if errno == EINTR { continue } else { return } }
            if pfds[0].revents != 0 { _ = EventFD.read(wake.rawValue) }
            for (i, e) in entries.enumerated() where pfds[i + 1].revents & Int16(POLLIN) != 0 {
                if EventFD.read(e.1.rawValue) != nil { apply(e.0) }
            }
        }
    }
}
