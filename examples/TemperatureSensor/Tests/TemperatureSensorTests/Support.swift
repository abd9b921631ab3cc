import Glibc
import PCICore
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport

/// This package's folder, found from this source file (tests may run from anywhere).
let packageRoot: String = {
    var p = #filePath
    for _ in 0..<3 { p = String(p[..<p.lastIndex(of: "/")!]) }   // Support.swift, TemperatureSensorTests, Tests
    return p
}()

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A device served on its own Unix socket in a fresh temp dir, with a client
/// connected through the client library: the test talks to it as a VMM does.
final class Served: @unchecked Sendable {
    let device: PCIDevice
    let server: VFIOUserServer
    let dir: String
    let path: String
    let client: VFIOUserClient

    init(_ device: PCIDevice) throws {
        self.device = device
        var template = Array("/tmp/temperature-sensor-XXXXXX".utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        path = dir + "/s.sock"
        server = VFIOUserServer(device: device)
        server.start(on: try UnixListener(path: path))
        client = try VFIOUserClient(path: path)
    }

    deinit {
        client.close()
        server.stop()
        unlink(path)
        rmdir(dir)
    }

    func cfg16(_ o: UInt64) throws -> UInt16 { try client.readConfig16(o) }
    func set16(_ o: UInt64, _ v: UInt16) throws { try client.writeConfig16(o, v) }

    /// Turns on memory decoding in the Command register, as a guest driver does.
    func enableDecoding() throws { try set16(0x04, try cfg16(0x04) | 0x0002) }

    /// The offset of a standard capability, found by walking the list over the socket.
    func capability(_ id: UInt8) throws -> UInt64 {
        let cfg = try client.readConfig(offset: 0, count: 256)
        guard let o = ConfigSpaceReport.capabilityList(cfg).first(where: { $0.id == id })?.offset else {
            throw TestFailure("capability 0x\(String(id, radix: 16)) not in the list")
        }
        return UInt64(o)
    }
}

/// The errno of a failing client call, or nil if it succeeded.
func errnoOf(_ body: () throws -> Void) -> VFIOErrno? {
    do { try body(); return nil } catch { return (error as? ClientError)?.errno }
}

/// How many times `fd` was signalled within `timeoutMs` (0 = not signalled).
func signals(_ fd: OwnedFD, timeoutMs: Int32 = 1000) -> UInt64 { EventFD.wait(fd.rawValue, timeoutMs: timeoutMs) }
/// Nothing arrives on `fd` for a while (a bounded wait, not proof of absence forever).
func silent(_ fd: OwnedFD) -> Bool { EventFD.wait(fd.rawValue, timeoutMs: 60) == 0 }

func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
