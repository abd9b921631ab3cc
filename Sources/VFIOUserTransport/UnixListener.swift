import CVFIOUserShim
import Glibc

/// sockaddr_un for a filesystem path.
struct UnixAddress {
    var storage = sockaddr_un()

    init(path: String) throws(TransportError) {
        storage.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: storage.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else {
            throw .refused("socket path '\(path)' must be 1...\(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
    }

    mutating func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }
}

/// A listening Unix stream socket at a filesystem path.
///
/// The socket file is created mode 0600. A stale socket file at the path (nobody
/// listening) is replaced; any other kind of file there is refused, so a typo can
/// never delete a user's data.
public final class UnixListener: Sendable {
    /// The socket file, or nil for a listener on an inherited fd.
    public let path: String?
    /// The listening socket.
    public let fd: OwnedFD

    /// Listens at `path` (mode 0600), replacing only a stale socket file; throws `.refused` for a live socket, any other file there or a path too long.
    public init(path: String, backlog: Int32 = 16) throws(TransportError) {
        var st = stat()
        if lstat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFSOCK else {
                throw .refused("'\(path)' exists and is not a socket; refusing to replace it")
            }
            if Self.isLive(path: path) { throw .refused("'\(path)' is in use by a listening server") }
            guard unlink(path) == 0 else { throw .system("unlink \(path)", errno) }
        }
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw .system("socket", errno) }
        let owned = OwnedFD(s)
        // Bound under a temporary name beside the path, listening, then renamed into
        // place: the path appears only once a connect to it succeeds (a client that
        // waits for the file, as QEMU's launcher and our tests do, is never refused).
        // (A path too long for the staging name is bound directly.)
        var addr = try UnixAddress(path: path)
        var staging = path
        if let a = try? UnixAddress(path: path + ".\(getpid()).new") {
            staging = path + ".\(getpid()).new"
            addr = a
            _ = unlink(staging)
        }
        // Create the file 0600 from the start: no window where others may connect.
        let old = umask(0o177)
        let r = addr.withSockaddr { bind(s, $0, $1) }
        let bindErrno = errno
        umask(old)
        guard r == 0 else { throw .system("bind \(path)", bindErrno) }
        guard listen(s, backlog) == 0 else { let e = errno; unlink(staging); throw .system("listen", e) }
        if staging != path {
            // link(2), not rename(2): it never replaces a file that appeared at the path
            // since it was checked above.
            let linked = link(staging, path) == 0
            let e = errno
            unlink(staging)
            guard linked else { throw e == EEXIST ? .refused("'\(path)' appeared while the server was starting; refusing to replace it") : .system("link \(path)", e) }
        }
        self.path = path
        self.fd = owned
    }

    /// Why `fd` cannot be served as a listening Unix stream socket, or nil if it can
    /// (checked before `init(listeningFD:)`: accept on anything else fails at once, for ever).
    public static func problem(withListeningFD fd: Int32) -> String? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return "fd \(fd) is not open (\(String(cString: strerror(errno))))" }
        guard st.st_mode & S_IFMT == S_IFSOCK else { return "fd \(fd) is not a socket" }
        func option(_ name: Int32) -> Int32? {
            var v: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(fd, SOL_SOCKET, name, &v, &len) == 0 ? v : nil
        }
        guard option(SO_DOMAIN) == AF_UNIX else { return "fd \(fd) is not a Unix-domain socket" }
        guard option(SO_TYPE) == Int32(SOCK_STREAM.rawValue) else { return "fd \(fd) is not a stream socket" }
        guard option(SO_ACCEPTCONN) == 1 else { return "fd \(fd) is a socket that is not listening (call listen(2) on it first)" }
        return nil
    }

    /// Adopts an already listening socket (`--fd`), as the vfio-user backend conventions
    /// allow. Check it first with ``problem(withListeningFD:)``.
    public init(listeningFD: Int32) {
        path = nil
        fd = OwnedFD(listeningFD)
    }

    private static func isLive(path: String) -> Bool {
        guard let s = try? MessageSocket.connect(path: path) else { return false }
        s.fd.close()
        return true
    }

    /// Blocks until a client connects. Throws `.closed` after `close()`.
    public func accept() throws(TransportError) -> MessageSocket {
        while true {
            let c = vfu_accept_cloexec(fd.rawValue)
            if c >= 0 { return MessageSocket(fd: OwnedFD(c)) }
            let e = errno
            if e == ECONNABORTED { continue }
            if e == EBADF || e == EINVAL { throw .closed }
            throw .system("accept", e)
        }
    }

    /// Stops accepting (wakes a blocked `accept`) and removes the socket file.
    public func close() {
        _ = Glibc.shutdown(fd.rawValue, Int32(SHUT_RDWR))
        if let path { unlink(path) }
    }
}
