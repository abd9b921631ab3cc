import CVFIOUserShim
import Glibc
import Synchronization

/// A file descriptor with exactly one owner: it is closed when the owner lets go
/// (deinit) unless ownership was handed on with `take()`.
///
/// A class rather than a `~Copyable` struct because fds travel in arrays
/// (SCM_RIGHTS batches) and between threads.
public final class OwnedFD: Sendable, CustomStringConvertible {
    private let state: Atomic<Int32>

    /// Takes ownership of `fd`: it is closed by `close()` or at deinit.
    public init(_ fd: Int32) { state = Atomic(fd) }

    /// The raw descriptor, -1 once taken or closed. Valid only while `self` is alive.
    public var rawValue: Int32 { state.load(ordering: .acquiring) }

    /// Hands the descriptor to the caller, who becomes responsible for closing it.
    /// Exactly one caller gets it, however many race.
    public func take() -> Int32 { state.exchange(-1, ordering: .acquiringAndReleasing) }

    /// Duplicates the descriptor (with CLOEXEC) into a new owner.
    public func duplicate() throws(TransportError) -> OwnedFD {
        let fd = rawValue
        let d = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard d >= 0 else { throw .system("dup", errno) }
        return OwnedFD(d)
    }

    /// Closes the descriptor once; later calls (and the deinit) do nothing. Safe from any thread.
    public func close() {
        let fd = take()
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    deinit { close() }

    /// `fd(N)`, for logs.
    public var description: String { "fd(\(rawValue))" }
}

/// Errors of the transport layer, with the failing call named.
public enum TransportError: Error, CustomStringConvertible, Equatable {
    /// A system call failed: its name and errno.
    case system(String, Int32)
    /// The peer closed the connection at a message boundary.
    case closed
    /// The peer closed the connection in the middle of a message.
    case truncated(expected: Int, received: Int)
    /// The kernel dropped fds (MSG_CTRUNC): the message cannot be trusted.
    case controlTruncated
    /// We refused the request before making any call (the reason says why).
    case refused(String)

    /// The failing call and `strerror`, or the reason.
    public var description: String {
        switch self {
        case .system(let call, let e): "\(call): \(String(cString: strerror(e))) (errno \(e))"
        case .closed: "connection closed"
        case .truncated(let e, let r): "connection closed mid-message (\(r) of \(e) bytes)"
        case .controlTruncated: "ancillary data truncated (MSG_CTRUNC)"
        case .refused(let why): why
        }
    }
}

/// Waits until `fd` is readable (or at end of file) for at most `timeoutMs`
/// (-1: for ever). False on timeout or error.
public func waitReadable(_ fd: Int32, timeoutMs: Int32) -> Bool { vfu_poll_readable(fd, timeoutMs) == 1 }
