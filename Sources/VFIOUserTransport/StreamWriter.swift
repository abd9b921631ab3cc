import CVFIOUserShim
import Glibc

/// Writes a byte stream to a descriptor (a socket, a pipe or a file), whole pieces at
/// a time, and can pass memory to the kernel by reference instead of copying it.
///
/// `writeByReference` is for memory that stays unchanged until the reader has read
/// it (a stopped device's RAM during stop-copy): its pages go through a pipe with
/// vmsplice(2) and splice(2), so the only copy is the reader's. That is what lets a
/// migration stream, which is checksummed on both ends, outrun a plain copy of the
/// same bytes. Where the descriptor does not take spliced pages the writer copies,
/// from then on.
///
/// SIGPIPE is blocked on the calling thread while the writer lives (splice has no
/// MSG_NOSIGNAL), and any SIGPIPE raised meanwhile is taken before it is unblocked:
/// a reader that goes away is an error, never a dead process. Use one writer on one
/// thread.
public final class StreamWriter {
    private let fd: Int32
    private let isSocket: Bool
    private var pipe: (read: OwnedFD, write: OwnedFD)?
    private let sigpipeWasBlocked: Int32
    /// False once splicing failed for this descriptor (or when disabled up front).
    public private(set) var zeroCopy: Bool
    /// Bytes that went out by reference (vmsplice).
    public private(set) var bytesByReference: UInt64 = 0
    /// Bytes that were copied (after splicing failed, or with `zeroCopy` off).
    public private(set) var bytesCopied: UInt64 = 0

    /// `fd` stays owned by the caller and must outlive the writer. With `stallTimeoutMs`
    /// and a socket, a write that can make no progress for that long fails (SO_SNDTIMEO)
    /// instead of waiting for a reader that may never come.
    public init(fd: Int32, zeroCopy: Bool = true, stallTimeoutMs: Int? = nil) {
        self.fd = fd
        self.zeroCopy = zeroCopy
        var st = stat()
        isSocket = fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK
        sigpipeWasBlocked = vfu_block_sigpipe()
        if let ms = stallTimeoutMs, ms > 0, isSocket {
            var tv = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    deinit { vfu_restore_sigpipe(sigpipeWasBlocked) }

    /// Copies `bytes` into the stream.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(TransportError) {
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let n = isSocket ? send(fd, base + done, bytes.count - done, Int32(MSG_NOSIGNAL))
                             : Glibc.write(fd, base + done, bytes.count - done)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw .system("write", n < 0 ? (errno == EAGAIN ? ETIMEDOUT : errno) : EPIPE) }
            done += n
        }
        bytesCopied += UInt64(bytes.count)
    }

    /// Sends `bytes` without copying them when the descriptor allows it. The caller
    /// promises the memory does not change until the reader has read it.
    public func writeByReference(_ bytes: UnsafeRawBufferPointer) throws(TransportError) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var done = 0
        if zeroCopy, let pipe = try openPipe() {
            let n = vfu_splice_out(fd, pipe.read.rawValue, pipe.write.rawValue, base, bytes.count)
            if n == bytes.count {
                bytesByReference += UInt64(n)
                return
            }
            let e = errno
            if n > 0 { bytesByReference += UInt64(n); done = n }
            // Splicing is not for this descriptor (or this memory): copy from here on.
            // Anything else is the reader's or the stream's failure.
            guard n >= 0 || e == EINVAL || e == ENOSYS || e == EOPNOTSUPP || e == EFAULT else {
                throw .system("splice", e == EAGAIN ? ETIMEDOUT : e)
            }
            zeroCopy = false
            self.pipe = nil
        }
        try write(UnsafeRawBufferPointer(rebasing: bytes[done...]))
    }

    private func openPipe() throws(TransportError) -> (read: OwnedFD, write: OwnedFD)? {
        if let pipe { return pipe }
        var fds: [Int32] = [-1, -1]
        guard vfu_pipe(&fds) == 0 else {
            zeroCopy = false
            return nil
        }
        let p = (read: OwnedFD(fds[0]), write: OwnedFD(fds[1]))
        vfu_pipe_grow(fds[1], 1 << 20)
        pipe = p
        return p
    }
}
