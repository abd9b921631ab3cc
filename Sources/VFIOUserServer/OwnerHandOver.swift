import Glibc
import PCICore
import VFIOUserTransport

/// Which connection's socket belongs to which device session, so a client that asks
/// for a device another session owns can tell an owner that is still there (refused
/// at once, after a short grace) from one that has hung up but whose connection thread
/// has not yet released the device (waited for: under load that takes longer than any
/// fixed grace, and a VMM restarted in that window would be refused for nothing).
enum OwnerHandOver {
    private struct Key: Hashable {
        let device: ObjectIdentifier
        let session: SessionID
    }
    private static let sockets = Locked<[Key: Int32]>([:])

    /// A live owner gets this long to let go (it may be closing right now).
    static let graceMs = 250
    /// An owner that has hung up is waited for this long at most.
    static let hungUpOwnerMs = 5_000

    static func register(_ device: PCIDevice, _ session: SessionID, fd: Int32) {
        sockets.withLock { $0[Key(device: ObjectIdentifier(device), session: session)] = fd }
    }

    /// Called before the connection's socket is closed, so a number reused by the
    /// kernel never stands for a departed owner.
    static func unregister(_ device: PCIDevice, _ session: SessionID) {
        _ = sockets.withLock { $0.removeValue(forKey: Key(device: ObjectIdentifier(device), session: session)) }
    }

    /// Whether `session`'s peer has closed its end (its messages may still be queued).
    /// Asked under the registry's lock, so the fd cannot be closed meanwhile.
    static func hasHungUp(_ device: PCIDevice, _ session: SessionID) -> Bool {
        sockets.withLock { s in
            guard let fd = s[Key(device: ObjectIdentifier(device), session: session)] else { return true }
            // POLLRDHUP (0x2000): the peer shut down its writing side or closed.
            var p = pollfd(fd: fd, events: Int16(POLLIN) | 0x2000, revents: 0)
            guard poll(&p, 1, 0) == 1 else { return false }
            return p.revents & (0x2000 | Int16(POLLHUP) | Int16(POLLERR)) != 0
        }
    }
}
