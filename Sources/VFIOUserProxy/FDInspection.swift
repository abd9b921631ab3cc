import Glibc
import VFIOUserCapture

/// What kind of file `fd` is, for traces and captures: memfds and regular files with
/// their size (a replay substitutes a memfd of that size), eventfds, sockets.
public func inspectFD(_ fd: Int32) -> CapturedFD {
    var st = stat()
    guard fstat(fd, &st) == 0 else { return CapturedFD(kind: .unknown) }
    switch st.st_mode & S_IFMT {
    case S_IFREG:
        let kind: CapturedFD.Kind = fdLink(fd).hasPrefix("/memfd:") ? .memfd : .file
        return CapturedFD(kind: kind, size: UInt64(max(st.st_size, 0)))
    case S_IFSOCK:
        return CapturedFD(kind: .socket)
    default:
        return CapturedFD(kind: fdLink(fd) == "anon_inode:[eventfd]" ? .eventfd : .other)
    }
}

/// The /proc/self/fd link of `fd` ("/memfd:name (deleted)", "anon_inode:[eventfd]", a path).
func fdLink(_ fd: Int32) -> String {
    var buf = [CChar](repeating: 0, count: 256)
    let n = readlink("/proc/self/fd/\(fd)", &buf, buf.count - 1)
    guard n > 0 else { return "" }
    return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Microseconds since the Unix epoch (capture timestamps).
public func wallClockMicros() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec / 1000)
}
