import CVFIOUserShim
import Glibc

/// An eventfd(2) counter: the channel interrupts travel through.
public enum EventFD {
    /// A new eventfd (close-on-exec) starting at `initialValue`; throws `.system` when eventfd(2) fails.
    public static func create(initialValue: UInt32 = 0, nonBlocking: Bool = false) throws(TransportError) -> OwnedFD {
        let fd = vfu_eventfd(initialValue, nonBlocking ? 1 : 0)
        guard fd >= 0 else { throw .system("eventfd", errno) }
        return OwnedFD(fd)
    }

    /// Adds `value` to the counter (signals the waiter).
    @discardableResult
    public static func signal(_ fd: Int32, value: UInt64 = 1) -> Bool {
        var v = value
        return withUnsafeBytes(of: &v) { Glibc.write(fd, $0.baseAddress, 8) } == 8
    }

    /// Reads and resets the counter; nil if it is zero on a non-blocking fd, or on error.
    public static func read(_ fd: Int32) -> UInt64? {
        var v: UInt64 = 0
        let n = withUnsafeMutableBytes(of: &v) { Glibc.read(fd, $0.baseAddress, 8) }
        return n == 8 ? v : nil
    }

    /// Reads the counter if it becomes non-zero within `timeoutMs`; 0 otherwise.
    public static func wait(_ fd: Int32, timeoutMs: Int32) -> UInt64 {
        guard vfu_poll_readable(fd, timeoutMs) == 1 else { return 0 }
        return read(fd) ?? 0
    }
}

/// memfd_create(2): anonymous shared memory that can be passed as an fd.
public enum MemFD {
    /// A memfd of `size` bytes. With `sealSize` its size can never change again, so a
    /// peer we share it with cannot shrink it under our mappings (which would SIGBUS).
    public static func create(name: String, size: Int, sealSize: Bool = false) throws(TransportError) -> OwnedFD {
        let fd = vfu_memfd_create(name)
        guard fd >= 0 else { throw .system("memfd_create", errno) }
        let owned = OwnedFD(fd)
        guard ftruncate(fd, off_t(size)) == 0 else { throw .system("ftruncate", errno) }
        if sealSize { guard vfu_memfd_seal_size(fd) == 0 else { throw .system("F_ADD_SEALS", errno) } }
        return owned
    }
}

/// The number of open descriptors of this process (for leak checks).
public func openFileDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var n = 0
    while readdir(dir) != nil { n += 1 }
    return n - 3  // ".", ".." and the directory's own fd
}

/// The calling thread's kernel thread id.
public func currentThreadID() -> Int { vfu_gettid() }

/// Names the calling thread (shows in top, gdb and /proc).
public func setCurrentThreadName(_ name: String) { vfu_set_thread_name(name) }
