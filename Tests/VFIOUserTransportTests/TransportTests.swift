import Glibc
import Testing
import VFIOUserProtocol
@testable import VFIOUserTransport

func tempDir() -> String {
    var template = Array("/tmp/vfu-transport-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
}

func message(_ command: Command, id: UInt16 = 1, payload: [UInt8] = []) -> [UInt8] {
    encodeMessage(MessageHeader(messageID: id, command: command, messageSize: 0), payload: payload)
}

@Suite struct MessageSocketTests {
    @Test func fdsTravelWithTheMessageAndStayUsable() throws {
        let (a, b) = try MessageSocket.pair()
        let efds = try (0..<3).map { _ in try EventFD.create(nonBlocking: true) }
        try a.send(message(.deviceSetIRQs, payload: [UInt8](repeating: 7, count: 20)), fds: efds.map(\.rawValue))
        let m = try #require(try b.receive(maxMessageSize: 4096, maxFDs: 8))
        #expect(m.header.command == .deviceSetIRQs)
        #expect(m.bytes.count == 36)
        #expect(m.fds.count == 3)
        // A received fd is a new descriptor for the same eventfd.
        for (sent, got) in zip(efds, m.fds) {
            #expect(sent.rawValue != got.rawValue)
            EventFD.signal(got.rawValue, value: 5)
            #expect(EventFD.read(sent.rawValue) == 5)
        }
        // Received fds are close-on-exec.
        #expect(fcntl(m.fds[0].rawValue, F_GETFD) & FD_CLOEXEC != 0)
    }

    @Test func largeMessagesArriveWhole() throws {
        let (a, b) = try MessageSocket.pair()
        let payload = (0..<(2 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let sender = Thread { try? a.send(header: MessageHeader(messageID: 9, command: .regionWrite, messageSize: 0), payload: payload) }
        let m = try #require(try b.receive(maxMessageSize: 4 << 20, maxFDs: 0))
        sender.join()
        #expect(m.header.messageSize == UInt32(16 + payload.count))
        #expect(Array(m.payload) == payload)
    }

    @Test func tooManyFDsAreRejectedAndTheStreamStaysInSync() throws {
        let (a, b) = try MessageSocket.pair()
        let efds = try (0..<5).map { _ in try EventFD.create() }
        try a.send(message(.deviceGetInfo, id: 1, payload: [1, 2, 3, 4]), fds: efds.map(\.rawValue))
        try a.send(message(.deviceGetInfo, id: 2, payload: [5, 6, 7, 8]))
        #expect(throws: ReceiveError.tooManyFDs(MessageHeader(messageID: 1, command: .deviceGetInfo, messageSize: 20), received: 5, limit: 2)) {
            _ = try b.receive(maxMessageSize: 4096, maxFDs: 2)
        }
        let next = try #require(try b.receive(maxMessageSize: 4096, maxFDs: 2))
        #expect(next.header.messageID == 2)
        #expect(Array(next.payload) == [5, 6, 7, 8])
    }

    @Test func framingErrorsAreReported() throws {
        let (a, b) = try MessageSocket.pair()
        try a.send(MessageHeader(messageID: 3, command: .deviceGetInfo, messageSize: 8).bytes)
        #expect(throws: ReceiveError.self) { _ = try b.receive(maxMessageSize: 4096, maxFDs: 0) }
        let (c, d) = try MessageSocket.pair()
        try c.send(MessageHeader(messageID: 3, command: .regionWrite, messageSize: 100_000).bytes)
        do {
            _ = try d.receive(maxMessageSize: 4096, maxFDs: 0)
            Issue.record("an oversized message was accepted")
        } catch {
            guard case .framing(let h, _) = error else { Issue.record("wrong error \(error)"); return }
            #expect(h.messageSize == 100_000)
        }
    }

    @Test func endOfStreamAtABoundaryIsNilAndMidMessageIsAnError() throws {
        let (a, b) = try MessageSocket.pair()
        a.shutdown()
        #expect(try b.receive(maxMessageSize: 4096, maxFDs: 0) == nil)
        let (c, d) = try MessageSocket.pair()
        var bytes = MessageHeader(messageID: 1, command: .regionRead, messageSize: 32).bytes
        bytes += [0, 0, 0, 0]
        try c.send(bytes)
        c.shutdown()
        #expect(throws: ReceiveError.transport(.truncated(expected: 32, received: 20))) {
            _ = try d.receive(maxMessageSize: 4096, maxFDs: 0)
        }
    }
}

@Suite struct UnixListenerTests {
    @Test func socketIsPrivateAndRemovedOnClose() throws {
        let path = tempDir() + "/s.sock"
        let l = try UnixListener(path: path)
        var st = stat()
        #expect(lstat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        l.close()
        #expect(lstat(path, &st) != 0)
    }

    @Test func refusesToReplaceARegularFile() throws {
        let path = tempDir() + "/data"
        let fd = open(path, O_CREAT | O_WRONLY, 0o644)
        _ = write(fd, "keep me", 7)
        close(fd)
        #expect(throws: TransportError.self) { _ = try UnixListener(path: path) }
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_size == 7)
    }

    @Test func replacesAStaleSocketButNotALiveOne() throws {
        let path = tempDir() + "/s.sock"
        // A stale socket file: bound, then its owner went away without unlinking.
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = try UnixAddress(path: path)
        _ = addr.withSockaddr { bind(s, $0, $1) }
        close(s)
        let l = try UnixListener(path: path)
        #expect(throws: TransportError.self) { _ = try UnixListener(path: path) }
        // The refused second listener probed the live one with a connection: it comes first.
        let probe = try l.accept()
        #expect(try probe.receive(maxMessageSize: 64, maxFDs: 0) == nil)
        let c = try MessageSocket.connect(path: path)
        let accepted = try l.accept()
        try c.send(message(.deviceReset, id: 4))
        #expect(try accepted.receive(maxMessageSize: 64, maxFDs: 0)?.header.messageID == 4)
        l.close()
    }
}

@Suite struct MemoryTests {
    @Test func mappingsAreBoundsChecked() throws {
        let fd = try MemFD.create(name: "t", size: 8192)
        let m = try MemoryMapping(fd: fd.rawValue, offset: 0, length: 8192, writable: true)
        #expect(m.write(at: 8188, [1, 2, 3, 4]))
        #expect(m.read(at: 8188, count: 4) == [1, 2, 3, 4])
        #expect(m.read(at: 8190, count: 4) == nil)
        #expect(!m.write(at: 8192, [1]))
        #expect(!m.contains(offset: UInt64.max - 2, count: 4))
        #expect(m.read(at: UInt64.max, count: 1) == nil)
        // Another mapping of the same memfd sees the bytes (shared memory).
        let ro = try MemoryMapping(fd: fd.rawValue, offset: 4096, length: 4096, writable: false)
        #expect(ro.read(at: 4092, count: 4) == [1, 2, 3, 4])
        #expect(!ro.write(at: 0, [9]))
    }

    @Test func eventFDCountsAndTimesOut() throws {
        let e = try EventFD.create(nonBlocking: true)
        #expect(EventFD.wait(e.rawValue, timeoutMs: 10) == 0)
        EventFD.signal(e.rawValue)
        EventFD.signal(e.rawValue)
        #expect(EventFD.wait(e.rawValue, timeoutMs: 10) == 2)
        #expect(EventFD.read(e.rawValue) == nil)
    }

    @Test func ownedFDClosesOnceAndHandsOver() throws {
        let e = try EventFD.create()
        let raw = e.rawValue
        let d = try e.duplicate()
        #expect(d.rawValue != raw)
        let taken = e.take()
        #expect(taken == raw && e.rawValue == -1)
        e.close()  // nothing to close any more
        #expect(fcntl(taken, F_GETFD) >= 0)
        Glibc.close(taken)
        d.close()
        #expect(d.rawValue == -1)
    }
}

/// A joinable thread for tests.
final class Thread: @unchecked Sendable {
    private var tid = pthread_t()
    private let body: () -> Void
    init(_ body: @escaping () -> Void) {
        self.body = body
        let ctx = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&tid, nil, { p in
            let t = Unmanaged<Thread>.fromOpaque(p!).takeRetainedValue()
            t.body()
            return nil
        }, ctx)
    }
    func join() { pthread_join(tid, nil) }
}

@Suite struct SealTests {
    @Test func aSealedMemFDCannotBeResized() throws {
        let fd = try MemFD.create(name: "sealed", size: 4096, sealSize: true)
        #expect(ftruncate(fd.rawValue, 0) != 0)
        #expect(ftruncate(fd.rawValue, 8192) != 0)
        let open = try MemFD.create(name: "open", size: 4096)
        #expect(ftruncate(open.rawValue, 8192) == 0)
    }
}
