import Glibc
import TestSupport
import Testing
import VFIOUserControl
import VFIOUserTransport

/// Only the server's own user may control it: the socket is 0600, and a client of
/// another uid is refused (SO_PEERCRED) even when the file's mode lets it connect.
@Suite struct PeerTests {
    /// Forks a child that drops to `uid` and connects to `path`: exit 10 = connect
    /// refused (EACCES), 11 = connected and got EOF or an error line starting with
    /// {"error":"permission-denied", 12 = connected and was answered, 13 = setup failed.
    func connectAs(uid: uid_t, path: String) -> Int32 {
        // Everything the child needs is prepared here: after fork it only calls libc.
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes); $0[bytes.count] = 0 }
        let request = Array("{\"op\":\"devices\"}\n".utf8)
        let expect = Array("{\"error\":\"permission-denied\"".utf8)
        var buf = [UInt8](repeating: 0, count: 4096)
        let pid = fork()
        if pid == 0 {
            if setgid(65534) != 0 || setuid(uid) != 0 { _exit(13) }
            let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            if s < 0 { _exit(13) }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc != 0 { _exit(errno == EACCES ? 10 : 13) }
            _ = request.withUnsafeBytes { send(s, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            let n = buf.withUnsafeMutableBytes { recv(s, $0.baseAddress, $0.count, 0) }
            if n <= 0 { _exit(11) }
            var same = n >= expect.count
            if same { for i in 0..<expect.count where buf[i] != expect[i] { same = false } }
            _exit(same ? 11 : 12)
        }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return (status >> 8) & 0xff
    }

    @Test func anotherUIDCannotConnect() throws {
        try #require(getuid() == 0, "needs root to become another user")
        let rig = try Rig(tag: "peer")
        defer { rig.stop() }
        var st = stat()
        #expect(lstat(rig.controlPath, &st) == 0 && st.st_mode & 0o777 == 0o600, "owner only")
        chmod(rig.dir, 0o755)
        #expect(connectAs(uid: 65534, path: rig.controlPath) == 10, "the 0600 file refuses nobody")
        chmod(rig.controlPath, 0o777)
        #expect(connectAs(uid: 65534, path: rig.controlPath) == 11, "SO_PEERCRED refuses nobody")
        #expect(connectAs(uid: 0, path: rig.controlPath) == 12, "the owner is answered")
        // And the server still serves its owner.
        let ctl = try rig.ctl()
        defer { ctl.close() }
        #expect(try ctl.ok("devices").devices?.count == 1)
    }
}
