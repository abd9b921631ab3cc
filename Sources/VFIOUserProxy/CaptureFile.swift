import Glibc
import VFIOUserCapture
import VFIOUserTransport

/// A pcapng file being written by many connection threads at once.
///
/// Each record is written whole with one write(2) under a lock, and stamped inside
/// that lock, so the file's timestamps never go backwards.
public final class CaptureFile: Sendable {
    /// The file written.
    public let path: String
    /// Bytes kept of each packet (longer ones are truncated and flagged).
    public let snapLength: Int
    private let fd: Locked<Int32>

    /// Creates (or truncates) `path` and writes the section and interface headers.
    public init(path: String, snapLength: Int = Pcapng.defaultSnapLength) throws(TransportError) {
        let f = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard f >= 0 else { throw .system("open \(path)", errno) }
        self.path = path
        self.snapLength = snapLength
        fd = Locked(f)
        guard Self.writeAll(f, Pcapng.fileHeader(snapLength: snapLength)) else {
            let e = errno
            close()
            throw .system("write \(path)", e)
        }
    }

    /// Appends one message; `timestampMicros` is set here.
    public func write(_ record: CaptureRecord) {
        fd.withLock { f in
            guard f >= 0 else { return }
            var r = record
            r.timestampMicros = wallClockMicros()
            if !Self.writeAll(f, Pcapng.packetBlock(r)) {
                // A full disk must not stop the traffic: stop capturing instead.
                _ = Glibc.close(f)
                f = -1
            }
        }
    }

    /// Closes the file; later writes are dropped.
    public func close() {
        fd.withLock { f in
            if f >= 0 { _ = Glibc.close(f) }
            f = -1
        }
    }

    private static func writeAll(_ f: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Glibc.write(f, raw.baseAddress! + done, raw.count - done)
                if n < 0 { if errno == EINTR { continue }; return false }
                done += n
            }
            return true
        }
    }
}
