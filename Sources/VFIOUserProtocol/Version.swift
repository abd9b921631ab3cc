#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The legacy (migration v1) `migration` capability. QEMU still sends it;
/// libvfio-user still parses `pgsize` (reference §2.3).
public struct MigrationCapability: Hashable, Sendable, Decodable {
    /// Dirty-bitmap page size.
    public var pgsize: UInt64?
    /// Largest bitmap in bytes.
    public var maxBitmapSize: UInt64?

    /// A capability with the given fields (nil fields are omitted from the JSON).
    public init(pgsize: UInt64? = nil, maxBitmapSize: UInt64? = nil) {
        self.pgsize = pgsize
        self.maxBitmapSize = maxBitmapSize
    }

    enum CodingKeys: String, CodingKey {
        case pgsize
        case maxBitmapSize = "max_bitmap_size"
    }
}

/// The `twin_socket` capability (reference §2.4). QEMU never asks for it.
public struct TwinSocket: Hashable, Sendable, Decodable {
    /// Whether the sender supports a second socket for server→client requests.
    public var supported: Bool
    /// Reply only: which of the fds sent with the VERSION reply is the socket.
    public var fdIndex: Int?

    /// A capability with the given fields.
    public init(supported: Bool, fdIndex: Int? = nil) {
        self.supported = supported
        self.fdIndex = fdIndex
    }

    enum CodingKeys: String, CodingKey {
        case supported
        case fdIndex = "fd_index"
    }

    /// Decodes `supported` (false when absent) and `fd_index`.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        supported = try c.decodeIfPresent(Bool.self, forKey: .supported) ?? false
        fdIndex = try c.decodeIfPresent(Int.self, forKey: .fdIndex)
    }
}

/// The `capabilities` object of VERSION (reference §2.3). nil fields were
/// absent on the wire; the `effective...` accessors apply the protocol defaults.
public struct VersionCapabilities: Hashable, Sendable, Decodable {
    /// `max_msg_fds` when absent: one fd per message.
    public static let defaultMaxMsgFDs = 1
    /// `max_data_xfer_size` when absent: 1 MiB.
    public static let defaultMaxDataXferSize = 1_048_576
    /// `pgsizes` when absent: 4 KiB pages.
    public static let defaultPgsizes: UInt64 = 4096
    /// `max_dma_maps` when absent.
    public static let defaultMaxDMAMaps = 65535
    /// The range libvfio-user accepts for `max_msg_fds`.
    public static let maxMsgFDsRange = 0 ... 1024
    /// Key of our own opt-in extension object (string values only).
    public static let extensionKey = "x-swift-vfio-user"

    /// `max_msg_fds`: most fds the sender accepts in one message.
    public var maxMsgFDs: Int?
    /// `max_data_xfer_size`: largest data transfer in one message, in bytes.
    public var maxDataXferSize: Int?
    /// `pgsizes`: supported page sizes as a bit mask.
    public var pgsizes: UInt64?
    /// `max_dma_maps`: most DMA mappings the server accepts.
    public var maxDMAMaps: Int?
    /// The legacy `migration` object.
    public var migration: MigrationCapability?
    /// The `twin_socket` object.
    public var twinSocket: TwinSocket?
    /// `write_multiple`: REGION_WRITE_MULTI is supported.
    public var writeMultiple: Bool?
    /// Our extension object under `x-swift-vfio-user`, e.g. `["device-info-caps": "1"]`.
    /// Peers that do not know it ignore it (QEMU warns about a spurious key).
    public var extensions: [String: String]?

    /// Capabilities with the given fields (nil ones are left out of the JSON).
    public init(maxMsgFDs: Int? = nil, maxDataXferSize: Int? = nil, pgsizes: UInt64? = nil, maxDMAMaps: Int? = nil,
                migration: MigrationCapability? = nil, twinSocket: TwinSocket? = nil, writeMultiple: Bool? = nil,
                extensions: [String: String]? = nil) {
        self.maxMsgFDs = maxMsgFDs
        self.maxDataXferSize = maxDataXferSize
        self.pgsizes = pgsizes
        self.maxDMAMaps = maxDMAMaps
        self.migration = migration
        self.twinSocket = twinSocket
        self.writeMultiple = writeMultiple
        self.extensions = extensions
    }

    enum CodingKeys: String, CodingKey {
        case maxMsgFDs = "max_msg_fds"
        case maxDataXferSize = "max_data_xfer_size"
        case pgsizes
        case maxDMAMaps = "max_dma_maps"
        case migration
        case twinSocket = "twin_socket"
        case writeMultiple = "write_multiple"
        case extensions = "x-swift-vfio-user"
    }

    /// `maxMsgFDs`, or the protocol default.
    public var effectiveMaxMsgFDs: Int { maxMsgFDs ?? Self.defaultMaxMsgFDs }
    /// `maxDataXferSize`, or the protocol default.
    public var effectiveMaxDataXferSize: Int { maxDataXferSize ?? Self.defaultMaxDataXferSize }
    /// `pgsizes`, or the protocol default.
    public var effectivePgsizes: UInt64 { pgsizes ?? Self.defaultPgsizes }
    /// `maxDMAMaps`, or the protocol default.
    public var effectiveMaxDMAMaps: Int { maxDMAMaps ?? Self.defaultMaxDMAMaps }
    /// `writeMultiple`, or false.
    public var effectiveWriteMultiple: Bool { writeMultiple ?? false }
    /// `twinSocket.supported`, or false.
    public var effectiveTwinSocketSupported: Bool { twinSocket?.supported ?? false }

    /// Whether our extension `name` is present with value "1".
    public func hasExtension(_ name: String) -> Bool { extensions?[name] == "1" }

    /// Range checks the JSON types cannot express.
    public func validate() throws(ProtocolError) {
        if let maxMsgFDs, !Self.maxMsgFDsRange.contains(maxMsgFDs) {
            throw .invalid("max_msg_fds \(maxMsgFDs) outside 0...1024")
        }
        if let maxDataXferSize, maxDataXferSize < 0 { throw .invalid("negative max_data_xfer_size") }
        if let maxDMAMaps, maxDMAMaps < 0 { throw .invalid("negative max_dma_maps") }
        if let fd = twinSocket?.fdIndex, fd < 0 { throw .invalid("negative twin_socket.fd_index") }
    }

    /// The whole VERSION JSON text, `{"capabilities":{...}}`, compact, keys in
    /// the fixed order max_msg_fds, max_data_xfer_size, pgsizes, max_dma_maps,
    /// migration, twin_socket, write_multiple, x-swift-vfio-user (extension
    /// keys sorted). Hand-written so the bytes are stable (test vectors TV1/TV2).
    public var json: String {
        var fields: [String] = []
        if let maxMsgFDs { fields.append("\"max_msg_fds\":\(maxMsgFDs)") }
        if let maxDataXferSize { fields.append("\"max_data_xfer_size\":\(maxDataXferSize)") }
        if let pgsizes { fields.append("\"pgsizes\":\(pgsizes)") }
        if let maxDMAMaps { fields.append("\"max_dma_maps\":\(maxDMAMaps)") }
        if let migration {
            var m: [String] = []
            if let p = migration.pgsize { m.append("\"pgsize\":\(p)") }
            if let b = migration.maxBitmapSize { m.append("\"max_bitmap_size\":\(b)") }
            fields.append("\"migration\":{\(m.joined(separator: ","))}")
        }
        if let twinSocket {
            var t = ["\"supported\":\(twinSocket.supported)"]
            if let i = twinSocket.fdIndex { t.append("\"fd_index\":\(i)") }
            fields.append("\"twin_socket\":{\(t.joined(separator: ","))}")
        }
        if let writeMultiple { fields.append("\"write_multiple\":\(writeMultiple)") }
        if let extensions {
            let e = extensions.keys.sorted().map { "\(jsonString($0)):\(jsonString(extensions[$0] ?? ""))" }
            fields.append("\(jsonString(Self.extensionKey)):{\(e.joined(separator: ","))}")
        }
        return "{\"capabilities\":{\(fields.joined(separator: ","))}}"
    }
}

/// A JSON string literal with the escapes RFC 8259 requires.
private func jsonString(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            let hex = String(scalar.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

/// The top-level JSON object: `{"capabilities": {...}}`; other keys ignored.
private struct VersionJSON: Decodable {
    var capabilities: VersionCapabilities?
}

/// VERSION request and reply payload (reference §2): `major` u16, `minor`
/// u16, then optional JSON text terminated by a NUL counted in `msg_size`.
public struct VersionPayload: WirePayload, Hashable {
    /// Protocol major version (0 today; a different major is refused).
    public var major: UInt16
    /// Protocol minor version.
    public var minor: UInt16
    /// nil when there was no JSON, or the JSON object had no `capabilities`.
    public var capabilities: VersionCapabilities?
    /// The JSON text as received (without the NUL). On encode it is used only
    /// when `capabilities` is nil; otherwise the JSON is generated.
    public var rawJSON: [UInt8]

    /// A payload with the given fields.
    public init(major: UInt16, minor: UInt16, capabilities: VersionCapabilities?, rawJSON: [UInt8]) {
        self.major = major
        self.minor = minor
        self.capabilities = capabilities
        self.rawJSON = rawJSON
    }

    /// A payload whose `rawJSON` is the generated JSON for `capabilities`
    /// (`{}` when nil, since QEMU requires a JSON object).
    public init(major: UInt16 = 0, minor: UInt16 = 0, capabilities: VersionCapabilities?) {
        self.init(major: major, minor: minor, capabilities: capabilities,
                  rawJSON: Array((capabilities?.json ?? "{}").utf8))
    }

    /// `capabilities`, or all defaults when absent.
    public var effectiveCapabilities: VersionCapabilities { capabilities ?? VersionCapabilities() }

    /// Rejects (reference §2.2): payload < 4, JSON not NUL-terminated or empty,
    /// malformed JSON, not an object, wrong member types, `max_msg_fds`
    /// outside 0...1024. A payload of exactly 4 bytes has no capabilities.
    public init(from r: inout WireReader) throws(ProtocolError) {
        major = try r.u16()
        minor = try r.u16()
        let rest = r.rest()
        guard let last = rest.last else {
            capabilities = nil
            rawJSON = []
            return
        }
        guard last == 0 else { throw .invalid("VERSION JSON not NUL-terminated") }
        rawJSON = Array(rest.dropLast())
        guard !rawJSON.isEmpty else { throw .invalid("VERSION JSON empty") }
        let parsed: VersionJSON
        do {
            parsed = try JSONDecoder().decode(VersionJSON.self, from: Data(rawJSON))
        } catch {
            throw .invalid("VERSION JSON: \(error)")
        }
        capabilities = parsed.capabilities
        try capabilities?.validate()
    }

    /// Writes the versions and, when there is JSON, its text and the terminating NUL.
    public func encode(into w: inout WireWriter) {
        w.u16(major); w.u16(minor)
        let json: [UInt8] = capabilities.map { Array($0.json.utf8) } ?? rawJSON
        guard !json.isEmpty else { return }
        w.append(json)
        w.u8(0)
    }
}
