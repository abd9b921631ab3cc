import Glibc
@_spi(Server) import PCICore
import Testing
import VariantDevices
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// The "mig-data-fd" extension: the stream goes through an fd instead of
/// MIG_DATA_READ/WRITE messages (docs/protocol-extensions.md).
@Suite struct DirectPathTests {
    static let caps = VersionCapabilities(maxMsgFDs: 16, maxDataXferSize: 1 << 20, pgsizes: 4096, maxDMAMaps: 65535,
                                          extensions: ["mig-data-fd": "1"])

    func fillRAM(_ vf: Served, seed: UInt64) {
        let m = vf.device.barMemory[2]!
        var x = seed | 1
        let words = m.mapping.base.bindMemory(to: UInt64.self, capacity: m.size / 8)
        for i in 0..<(m.size / 8) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            words[i] = x
        }
    }

    func ram(_ vf: Served) -> [UInt8] {
        let m = vf.device.barMemory[2]!
        return vf.device.lock.withLock { m.mapping.read(at: 0, count: m.size)! }
    }

    /// With the source's RAM sent by reference (vmsplice) and with it copied.
    @Test(arguments: [true, false])
    func aMigrationTakesTheDirectPathWhenBothServersOfferIt(zeroCopy: Bool) throws {
        let a = try VF.serve(ramKiB: 4096, zeroCopy: zeroCopy), b = try VF.serve(ramKiB: 4096)
        fillRAM(a, seed: 42)
        let vmmA = try a.client(), vmmB = try b.client()   // stay connected: the last client leaving resets a device
        let ca = try VFIOUserClient(path: a.path, capabilities: Self.caps)
        let cb = try VFIOUserClient(path: b.path, capabilities: Self.caps)
        #expect(ca.supportsMigrationDataFD && cb.supportsMigrationDataFD)
        fillRAM(a, seed: 43)
        let r = try Migrator(source: .device(ca), destination: .device(cb)).run()
        #expect(r.directDataPath)
        #expect(r.stopCopyBytes > 0)
        #expect(ram(b) == ram(a))
        #expect(try vmmB.migrationState() == .running)
        #expect(try vmmA.migrationState() == .stop)
    }

    /// A reader that never reads: the save gives up after the client timeout with EIO,
    /// and meanwhile-blocked clients of the device are served again.
    @Test(arguments: [true, false])
    func aStalledReaderEndsTheSaveAndFreesTheDevice(zeroCopy: Bool) throws {
        let a = try VF.serve(ramKiB: 8192, zeroCopy: zeroCopy, clientTimeoutMs: 300)
        fillRAM(a, seed: 9)
        let other = try a.client()
        let ctl = try VFIOUserClient(path: a.path, capabilities: Self.caps)
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }   // fds[1] is never read
        try ctl.setMigrationState(.stopCopy)
        let start = monotonicMs()
        #expect(throws: ClientError.server(.deviceFeature, .EIO)) { _ = try ctl.transferMigrationStream(fd: fds[0], load: false) }
        #expect(monotonicMs() - start < 3000)
        #expect(try other.readConfig16(0) == 0x15b3)
        try ctl.setMigrationState(.stop)
        try ctl.setMigrationState(.running)
    }

    /// A writer that never writes (nor closes): the load gives up after the client
    /// timeout with EIO, and the connection serves the next command.
    @Test func aSilentWriterEndsTheLoad() throws {
        let b = try VF.serve(clientTimeoutMs: 300)
        let keep = try b.client()
        let ctl = try VFIOUserClient(path: b.path, capabilities: Self.caps)
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }   // fds[0] never writes
        try ctl.setMigrationState(.resuming)
        let start = monotonicMs()
        #expect(throws: ClientError.server(.deviceFeature, .EIO)) { _ = try ctl.transferMigrationStream(fd: fds[1], load: true) }
        #expect(monotonicMs() - start < 3000)
        #expect(try ctl.migrationState() == .resuming)
        _ = keep
    }

    @Test func aClientThatDidNotNegotiateItIsRefusedAndRelaysInstead() throws {
        let a = try VF.serve(), b = try VF.serve()
        fillRAM(a, seed: 7)
        let keepB = try b.client()
        let plain = try a.client()   // no extension asked for
        #expect(!plain.supportsMigrationDataFD)
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        try plain.setMigrationState(.stopCopy)
        #expect(throws: ClientError.server(.deviceFeature, .EINVAL)) { _ = try plain.transferMigrationStream(fd: fds[0], load: false) }
        try plain.setMigrationState(.running)
        let r = try Migrator(source: .device(plain), destination: .device(try b.client())).run()
        #expect(!r.directDataPath)
        #expect(ram(b) == ram(a))
        _ = keepB
    }

    @Test func aStreamSavedToAFileThroughItsFDLoadsFromIt() throws {
        let a = try VF.serve(), b = try VF.serve()
        fillRAM(a, seed: 99)
        let keepB = try b.client()
        let ca = try VFIOUserClient(path: a.path, capabilities: Self.caps)
        let cb = try VFIOUserClient(path: b.path, capabilities: Self.caps)
        let path = "/tmp/vfu-direct-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).vfumig"
        defer { unlink(path) }
        let out = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        try ca.setMigrationState(.stopCopy)
        let saved = try ca.transferMigrationStream(fd: out, load: false)
        close(out)
        var st = stat()
        stat(path, &st)
        #expect(saved > UInt64(1 << 20) && UInt64(st.st_size) == saved)
        try cb.setMigrationState(.resuming)
        let input = open(path, O_RDONLY | O_CLOEXEC)
        let loaded = try cb.transferMigrationStream(fd: input, load: true)
        close(input)
        #expect(loaded == saved)
        try cb.setMigrationState(.running)
        #expect(ram(b) == ram(a))
        // A loaded stream with a flipped byte is refused at RESUMING → STOP, as over messages.
        let fd = open(path, O_RDWR)
        var byte: UInt8 = 0
        pread(fd, &byte, 1, off_t(saved / 2)); byte ^= 0x10; pwrite(fd, &byte, 1, off_t(saved / 2))
        lseek(fd, 0, SEEK_SET)
        try cb.setMigrationState(.resuming)
        _ = try cb.transferMigrationStream(fd: fd, load: true)
        close(fd)
        #expect(throws: ClientError.server(.deviceFeature, .EBADMSG)) { try cb.setMigrationState(.stop) }
        _ = keepB
    }
}
