import DeviceSpecs
import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport
import VariantDevices

/// One device served on its own Unix socket in its own temp dir, with a client
/// connected through the client library: every test talks to the core the way a
/// VMM does.
final class Served: @unchecked Sendable {
    let device: PCIDevice
    let server: VFIOUserServer
    let dir: String
    let path: String
    private(set) var client: VFIOUserClient

    init(_ device: PCIDevice) throws {
        self.device = device
        var template = Array("/tmp/vfu-core-XXXXXX".utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        path = dir + "/s.sock"
        let listener = try UnixListener(path: path)
        server = VFIOUserServer(device: device)
        server.start(on: listener)
        client = try VFIOUserClient(path: path)
    }

    convenience init(_ configuration: PCIDeviceConfiguration) throws {
        try self.init(PCIDevice(configuration: configuration))
    }

    /// A spec file from specs/ in the repository (found from this source file), built
    /// by the generic driver as `vfu serve` builds it (core device plus the doorbell model).
    convenience init(spec name: String) throws {
        let spec = try DeviceSpec.load(path: repositoryRoot + "/specs/\(name).json")
        try self.init(GenericDriver().build(spec))
    }

    /// Opens another connection (a second client).
    func connect() throws -> VFIOUserClient { try VFIOUserClient(path: path) }

    /// Closes the client and waits until the server has seen it go (the last
    /// session's close resets the device).
    func disconnect(_ c: VFIOUserClient, resetsBefore: Int) {
        c.close()
        waitUntil { self.device.lock.withLock { self.device.resetCount } > resetsBefore }
    }

    func reconnect() throws { client = try VFIOUserClient(path: path) }

    deinit {
        client.close()
        server.stop()
        unlink(path)
        rmdir(dir)
    }

    // MARK: Config space through the socket

    func cfg8(_ o: UInt64) throws -> UInt8 { try client.readConfig(offset: o, count: 1)[0] }
    func cfg16(_ o: UInt64) throws -> UInt16 { try client.readConfig16(o) }
    func cfg32(_ o: UInt64) throws -> UInt32 { try client.readConfig32(o) }
    func set8(_ o: UInt64, _ v: UInt8) throws { try client.write(region: RegionIndex.config.rawValue, offset: o, [v]) }
    func set16(_ o: UInt64, _ v: UInt16) throws { try client.writeConfig16(o, v) }
    func set32(_ o: UInt64, _ v: UInt32) throws { try client.writeConfig32(o, v) }
    func wholeConfig() throws -> [UInt8] {
        try client.readConfig(offset: 0, count: Int(device.config.size))
    }

    /// Turns on memory and I/O decoding (and bus mastering) in the Command register.
    func enableDecoding(bus: Bool = false) throws {
        try set16(0x04, try cfg16(0x04) | 0x0003 | (bus ? 0x0004 : 0))
    }

    /// The offset of a standard capability, found by walking the list over the socket.
    func capability(_ id: UInt8) throws -> UInt64 {
        let cfg = try wholeConfig()
        guard let o = ConfigSpaceReport.capabilityList(cfg).first(where: { $0.id == id })?.offset else {
            throw TestFailure("capability 0x\(String(id, radix: 16)) not in the list")
        }
        return UInt64(o)
    }
}


/// Polls `condition` for up to `timeoutMs`.
@discardableResult
func waitUntil(timeoutMs: Int = 2000, _ condition: () -> Bool) -> Bool {
    for _ in 0..<(timeoutMs / 2) {
        if condition() { return true }
        usleep(2000)
    }
    return condition()
}

/// The errno of a failing client call, or nil if it succeeded.
func errnoOf(_ body: () throws -> Void) -> VFIOErrno? {
    do { try body(); return nil } catch { return (error as? ClientError)?.errno }
}

/// How many times `fd` was signalled within `timeoutMs` (0 = not signalled).
func signals(_ fd: OwnedFD, timeoutMs: Int32 = 1000) -> UInt64 { EventFD.wait(fd.rawValue, timeoutMs: timeoutMs) }
/// Asserts that nothing arrives on `fd` for a while.
func silent(_ fd: OwnedFD) -> Bool { EventFD.wait(fd.rawValue, timeoutMs: 60) == 0 }

extension [UInt8] {
    func u32(_ o: Int) -> UInt32 { UInt32(self[o]) | UInt32(self[o + 1]) << 8 | UInt32(self[o + 2]) << 16 | UInt32(self[o + 3]) << 24 }
}

func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }

extension Served {
    /// The configuration a spec in specs/ describes, to adjust before serving.
    static func configuration(spec name: String) throws -> PCIDeviceConfiguration {
        try DeviceSpec.load(path: repositoryRoot + "/specs/\(name).json").configuration
    }
}
