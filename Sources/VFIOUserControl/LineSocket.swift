import Glibc
import VFIOUserTransport

/// Newline-delimited messages over a stream socket: blocking reads and whole writes.
public final class LineSocket: @unchecked Sendable {
    // @unchecked: the read buffer belongs to the one thread that reads; writes are whole sends and touch no state.
    /// The stream socket.
    public let fd: OwnedFD
    private var buffer: [UInt8] = []
    private var start = 0
    /// Longest line accepted (a request never needs more).
    public static let maxLine = 1 << 20

    /// Wraps a connected stream socket.
    public init(fd: OwnedFD) { self.fd = fd }

    /// Why `readLine` failed.
    public enum ReadError: Error, Equatable {
        /// The peer closed the connection.
        case closed
        /// A line longer than `maxLine`.
        case tooLong
        /// recv failed, or the timeout passed (`ETIMEDOUT`): the errno.
        case failed(Int32)
    }

    /// The next line, without its newline. `timeoutMs` (if given) bounds the wait for data.
    public func readLine(timeoutMs: Int32? = nil) throws(ReadError) -> [UInt8] {
        while true {
            if let nl = buffer[start...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[start..<nl])
                start = nl + 1
                if start > 4096 && start * 2 > buffer.count { buffer.removeFirst(start); start = 0 }
                return line
            }
            if buffer.count - start > Self.maxLine { throw .tooLong }
            if let timeoutMs, !waitReadable(fd.rawValue, timeoutMs: timeoutMs) { throw .failed(ETIMEDOUT) }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd.rawValue, $0.baseAddress, $0.count, 0) }
            if n == 0 { throw .closed }
            if n < 0 {
                if errno == EINTR { continue }
                throw .failed(errno)
            }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }

    /// Whether the peer has closed (or sent something) without blocking: for a watch stream.
    public func peerHungUp() -> Bool {
        guard waitReadable(fd.rawValue, timeoutMs: 0) else { return false }
        var b: UInt8 = 0
        let n = recv(fd.rawValue, &b, 1, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT))
        if n == 0 { return true }
        if n > 0 { _ = recv(fd.rawValue, &b, 1, Int32(MSG_DONTWAIT)) }  // input during a watch is ignored
        return n < 0 && errno != EAGAIN
    }

    /// Writes all of `bytes` (no SIGPIPE); false once the peer is gone.
    @discardableResult
    public func write(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd.rawValue, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            off += n
        }
        return true
    }

    /// Shuts both directions down, waking a thread blocked in `readLine`.
    public func shutdown() { _ = Glibc.shutdown(fd.rawValue, Int32(SHUT_RDWR)) }
    /// Closes the socket.
    public func close() { fd.close() }
}
