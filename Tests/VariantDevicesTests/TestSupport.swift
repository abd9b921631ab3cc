import DeviceSpecs
import Glibc
@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport
import VariantDevices

/// The repository's specs/ folder.
let specsDirectory: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)  // Tests/VariantDevicesTests/TestSupport.swift
    return parts.joined(separator: "/") + "/specs"
}()

let registry = VariantRegistry.standard

func loadSpec(_ name: String) throws -> DeviceSpec { try registry.loadSpec(path: specsDirectory + "/" + name) }

/// A spec from JSON text, as if it were a file in specs/ (so files it names resolve there).
func parseSpec(_ json: String, name: String = "inline.json") throws -> DeviceSpec {
    try DeviceSpec.parse(Array(json.utf8), file: specsDirectory + "/" + name, sectionKeys: registry.sectionKeys)
}

/// A device served over a real socket, and a client connected to it.
final class Served: @unchecked Sendable {
    let binding: VariantBinding
    let device: PCIDevice
    let server: VFIOUserServer
    let client: VFIOUserClient
    let path: String

    init(_ spec: DeviceSpec, override: String? = nil, extensions: Bool = false) throws {
        binding = try registry.bind(spec, override: override)
        device = try binding.driver.build(spec)
        var template = Array("/tmp/vfu-variant-XXXXXX".utf8CString)
        let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        path = dir + "/s.sock"
        let listener = try UnixListener(path: path)
        server = VFIOUserServer(device: device)
        server.start(on: listener)
        client = try Self.connect(path, extensions: extensions)
    }

    static func connect(_ path: String, extensions: Bool) throws -> VFIOUserClient {
        var caps = VFIOUserClient.defaultCapabilities
        if extensions { caps.extensions = ["device-info-caps": "1"] }
        return try VFIOUserClient(path: path, capabilities: caps)
    }

    /// Another client on the same server.
    func connect(extensions: Bool) throws -> VFIOUserClient { try Self.connect(path, extensions: extensions) }

    deinit {
        client.close()
        server.stop()
    }

    /// The whole config space as the client reads it.
    func config() throws -> [UInt8] {
        let size = try client.regionInfo(RegionIndex.config.rawValue).info.size
        var out: [UInt8] = []
        var o: UInt64 = 0
        while o < size {
            out += try client.readConfig(offset: o, count: Int(min(1024, size - o)))
            o += 1024
        }
        return out
    }

    /// Region info and the fd it carried (closed: tests only look at the info).
    func regionInfo(_ index: UInt32) throws -> RegionInfo {
        let (info, fd) = try client.regionInfo(index)
        fd?.close()
        return info
    }

    /// The index of the device-specific region with this type and subtype.
    func region(type: UInt32, subtype: UInt32) throws -> UInt32? {
        let n = try client.deviceInfo().numRegions
        for i in UInt32(9)..<n {
            for case .type(let t, let s) in try regionInfo(i).capabilities where t == type && s == subtype { return i }
        }
        return nil
    }

    /// Reads a whole region in chunks.
    func readAll(_ index: UInt32, size: UInt64, chunk: Int = 4096) throws -> [UInt8] {
        var out: [UInt8] = []
        var o: UInt64 = 0
        while o < size {
            let n = Int(min(UInt64(chunk), size - o))
            out += try client.read(region: index, offset: o, count: n)
            o += UInt64(n)
        }
        return out
    }
}

/// Expects `body` to fail with a server error `errno`.
func expectServerError(_ errno: VFIOErrno, sourceLocation: SourceLocation = #_sourceLocation,
                       _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(errno), but the call succeeded", sourceLocation: sourceLocation)
    } catch let e as ClientError {
        guard case .server(_, let got) = e else {
            Issue.record("expected a server error \(errno), got \(e)", sourceLocation: sourceLocation)
            return
        }
        #expect(got == errno, sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected a server error \(errno), got \(error)", sourceLocation: sourceLocation)
    }
}

/// Expects a SpecError whose field and reason contain the given text.
func expectSpecError(field: String, reason: String, sourceLocation: SourceLocation = #_sourceLocation,
                     _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected a spec error at \(field)", sourceLocation: sourceLocation)
    } catch let e as SpecError {
        #expect(e.field.contains(field), "field: \(e)", sourceLocation: sourceLocation)
        #expect(e.reason.contains(reason), "reason: \(e)", sourceLocation: sourceLocation)
        #expect(!e.file.isEmpty, sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected a SpecError, got \(error)", sourceLocation: sourceLocation)
    }
}

/// Standard capabilities found by walking the list from 0x34: (id, offset).
func walkStandard(_ cfg: [UInt8]) -> [(id: UInt8, offset: Int)] {
    var out: [(UInt8, Int)] = []
    guard cfg[0x06] & 0x10 != 0 else { return [] }
    var p = Int(cfg[0x34]) & ~3
    var steps = 0
    while p >= 0x40, steps < 48 {
        out.append((cfg[p], p))
        p = Int(cfg[p + 1]) & ~3
        steps += 1
    }
    return out
}

/// Extended capabilities found by walking the list from 0x100: (id, offset, length).
/// Lengths come from each capability's own rules (DVSEC/VSEC headers, fixed sizes).
func walkExtended(_ cfg: [UInt8]) -> [(id: UInt16, offset: Int, length: Int)] {
    guard cfg.count == 4096 else { return [] }
    var out: [(UInt16, Int, Int)] = []
    var p = 0x100
    var steps = 0
    while p != 0, steps < 1000 {
        let h = cfg.le32(at: p)
        if h == 0 { break }
        let id = UInt16(h & 0xFFFF)
        let len: Int
        switch id {
        case 0x0003: len = 12                                   // DSN
        case 0x000B, 0x0023: len = Int(cfg.le32(at: p + 4) >> 20) // VSEC / DVSEC length
        case 0x001B: len = 8                                    // PASID
        default: len = 4
        }
        out.append((id, p, len))
        p = Int(h >> 20)
        steps += 1
    }
    return out
}

extension Array where Element == UInt8 {
    func slice(_ o: Int, _ n: Int) -> [UInt8] { Array(self[o..<(o + n)]) }
}
