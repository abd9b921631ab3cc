import CVFIOUserShim
import Glibc
import Testing
import VFIOUserTransport

/// StreamWriter: pages passed by reference arrive intact and in order with copied
/// bytes, a descriptor that refuses spliced pages gets copies, and a reader that goes
/// away is an error, not a SIGPIPE.
@Suite struct StreamWriterTests {
    /// A memfd mapping filled with a pattern: memory as a device's RAM BAR is.
    static func ram(_ size: Int) throws -> (OwnedFD, MemoryMapping) {
        let fd = try MemFD.create(name: "writer-test", size: size)
        let m = try MemoryMapping(fd: fd.rawValue, offset: 0, length: size, writable: true)
        let words = m.base.bindMemory(to: UInt32.self, capacity: size / 4)
        for i in 0..<(size / 4) { words[i] = UInt32(truncatingIfNeeded: i &* 2_654_435_761) }
        return (fd, m)
    }

    /// Reads everything from `fd` until EOF on another thread.
    static func drain(_ fd: Int32) -> Completion<[UInt8]> {
        let done = Completion<[UInt8]>()
        spawnThread(name: "drain") {
            var all: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if n <= 0 { break }
                all.append(contentsOf: buf[0..<n])
            }
            done.fulfil(all)
        }
        return done
    }

    @Test func pagesByReferenceAndCopiesArriveInOrder() throws {
        let size = 4 << 20
        let (_, m) = try Self.ram(size)
        var fds: [Int32] = [-1, -1]
        #expect(vfu_socketpair(&fds) == 0)
        let reader = OwnedFD(fds[1])
        let got = Self.drain(reader.rawValue)
        let header: [UInt8] = Array("frame".utf8)
        do {
            let w = StreamWriter(fd: fds[0])
            let all = UnsafeRawBufferPointer(start: m.base, count: size)
            try header.withUnsafeBytes { try w.write($0) }
            try w.writeByReference(UnsafeRawBufferPointer(rebasing: all[0..<(size / 2)]))
            try header.withUnsafeBytes { try w.write($0) }
            // Not page aligned at either end.
            try w.writeByReference(UnsafeRawBufferPointer(rebasing: all[(size / 2 + 3)..<(size - 5)]))
            #expect(w.zeroCopy)
            #expect(w.bytesByReference == UInt64(size - 8))
            #expect(w.bytesCopied == UInt64(2 * header.count))
        }
        close(fds[0])
        let bytes = got.wait()
        let all = Array(UnsafeRawBufferPointer(start: m.base, count: size))
        #expect(bytes == header + all[0..<(size / 2)] + header + all[(size / 2 + 3)..<(size - 5)])
    }

    /// splice(2) refuses a file opened for appending: the writer copies from then on.
    @Test func aDescriptorThatRefusesSplicedPagesGetsCopies() throws {
        let (_, m) = try Self.ram(1 << 20)
        let path = tempDir() + "/append"
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        #expect(fd >= 0)
        defer { close(fd); unlink(path) }
        let w = StreamWriter(fd: fd)
        let all = UnsafeRawBufferPointer(start: m.base, count: 1 << 20)
        try w.writeByReference(UnsafeRawBufferPointer(rebasing: all[0..<(1 << 19)]))
        try w.writeByReference(UnsafeRawBufferPointer(rebasing: all[(1 << 19)...]))
        #expect(!w.zeroCopy)
        #expect(w.bytesByReference == 0 && w.bytesCopied == 1 << 20)
        var st = stat()
        #expect(fstat(fd, &st) == 0 && st.st_size == 1 << 20)
        let rfd = OwnedFD(open(path, O_RDONLY | O_CLOEXEC))
        let back = try MemoryMapping(fd: rfd.rawValue, offset: 0, length: 1 << 20, writable: false)
        #expect(memcmp(back.base, m.base, 1 << 20) == 0)
    }

    /// A reader that closed: both paths throw, the process lives (no SIGPIPE), and
    /// the thread's signal mask is as it was.
    @Test(arguments: [true, false])
    func aGoneReaderIsAnErrorNotASignal(byReference: Bool) throws {
        let (_, m) = try Self.ram(1 << 20)
        func sigpipeBlocked() -> Bool {
            var cur = sigset_t()
            pthread_sigmask(SIG_BLOCK, nil, &cur)
            return sigismember(&cur, SIGPIPE) == 1
        }
        let blockedBefore = sigpipeBlocked()
        for fdKind in ["socket", "pipe"] {
            var fds: [Int32] = [-1, -1]
            #expect((fdKind == "socket" ? vfu_socketpair(&fds) : vfu_pipe(&fds)) == 0)
            let readEnd = fdKind == "socket" ? fds[1] : fds[0], writeEnd = fdKind == "socket" ? fds[0] : fds[1]
            close(readEnd)
            do {
                let w = StreamWriter(fd: writeEnd)
                let all = UnsafeRawBufferPointer(start: m.base, count: 1 << 20)
                #expect(throws: TransportError.self) {
                    if byReference { try w.writeByReference(all) } else { try w.write(all) }
                }
            }
            close(writeEnd)
            #expect(sigpipeBlocked() == blockedBefore, "\(fdKind)")
        }
    }
}
