// One-line descriptions of messages for `--trace` logging. Never throws:
// anything that does not decode is shown as "undecodable" with the reason, so
// tracing a hostile peer cannot take the process down.

/// Describes a message as one human-readable line, e.g.
/// `#12 REGION_READ req region=7 offset=0x0 count=4`.
///
/// `payload` is the bytes after the 16-byte header. Works for requests and
/// replies in either direction; error replies show the errno.
public func traceDescription(header: MessageHeader, payload: [UInt8]) -> String {
    var line = "#\(header.messageID) \(header.command)"
    switch header.kind {
    case .command?: line += header.noReply ? " req(no-reply)" : " req"
    case .reply?: line += " reply"
    case nil: line += " type=\(header.flags & MessageHeader.typeMask)"
    }
    if header.isError {
        let errno = VFIOErrno(header.errorNumber)
        return line + " error=\(errno)(\(header.errorNumber))"
    }
    let details = MessageDescription.details(command: header.command, isReply: header.isReply, payload: payload)
    return details.isEmpty ? line : line + " " + details
}

/// Describes a whole message (header included); never throws.
public func traceDescription(message: [UInt8]) -> String {
    guard let header = try? MessageHeader.decode(message) else {
        return "undecodable header (\(message.count) bytes)"
    }
    let end = min(message.count, max(MessageHeader.size, Int(header.messageSize)))
    return traceDescription(header: header, payload: Array(message[MessageHeader.size ..< end]))
}

/// The per-command payload formatting behind ``traceDescription(header:payload:)``.
public enum MessageDescription {
    /// Data bytes shown before eliding.
    public static let maxDataBytes = 16

    /// The payload part of a trace line (empty when there is nothing to show).
    public static func details(command: Command, isReply: Bool, payload: [UInt8]) -> String {
        switch command {
        case .version:
            return describe(VersionPayload.self, payload) { v in
                "v\(v.major).\(v.minor) json=\(String(decoding: v.rawJSON.prefix(256), as: UTF8.self))"
            }
        case .dmaMap:
            if isReply { return sizeOnly(payload) }
            return describe(DMAMapRequest.self, payload) {
                "address=\(hex($0.address)) size=\(hex($0.size)) offset=\(hex($0.offset)) flags=\(hex($0.flags.rawValue))"
            }
        case .dmaUnmap:
            if isReply && payload.isEmpty { return "" }
            return describe(DMAUnmapRequest.self, payload) {
                "address=\(hex($0.address)) size=\(hex($0.size)) flags=\(hex($0.flags.rawValue)) argsz=\($0.argsz)"
            }
        case .deviceGetInfo:
            return describe(DeviceInfo.self, payload) { d in
                var s = "argsz=\(d.argsz)"
                if isReply { s += " flags=\(hex(d.flags.rawValue)) regions=\(d.numRegions) irqs=\(d.numIRQs)" }
                if !d.capabilities.isEmpty { s += " caps=\(d.capabilities.count)" }
                return s
            }
        case .deviceGetRegionInfo:
            if !isReply {
                return describe(RegionInfoRequest.self, payload) { "index=\($0.index) argsz=\($0.argsz)" }
            }
            return describe(RegionInfo.self, payload) { i in
                var s = "index=\(i.index) argsz=\(i.argsz) flags=\(hex(i.flags.rawValue)) size=\(hex(i.size)) offset=\(hex(i.offset))"
                if !i.capabilities.isEmpty { s += " caps=\(i.capabilities.map(capName).joined(separator: ","))" }
                return s
            }
        case .deviceGetRegionIOFDs:
            if !isReply {
                return describe(RegionIOFDsRequest.self, payload) { "index=\($0.index) argsz=\($0.argsz)" }
            }
            return describe(RegionIOFDsReply.self, payload) {
                "index=\($0.index) argsz=\($0.argsz) count=\($0.count) entries=\($0.entries.count)"
            }
        case .deviceGetIRQInfo:
            return describe(IRQInfo.self, payload) { i in
                isReply ? "index=\(i.index) flags=\(hex(i.flags.rawValue)) count=\(i.count)" : "index=\(i.index) argsz=\(i.argsz)"
            }
        case .deviceSetIRQs:
            if isReply { return sizeOnly(payload) }
            return describe(SetIRQs.self, payload) { s in
                let data = s.dataType.map { "\($0)" } ?? "?"
                let action = s.action.map { "\($0)" } ?? "?"
                var line = "index=\(s.index) start=\(s.start) count=\(s.count) \(data)|\(action) flags=\(hex(s.flags.rawValue))"
                if !s.data.isEmpty { line += " data=\(hexBytes(s.data))" }
                return line
            }
        case .regionRead, .regionWrite:
            return describe(RegionAccess.self, payload) { a in
                var s = "region=\(a.region) offset=\(hex(a.offset)) count=\(a.count)"
                if !a.data.isEmpty { s += " data=\(hexBytes(a.data))" }
                return s
            }
        case .dmaRead, .dmaWrite:
            if isReply && payload.isEmpty { return "" }
            return describe(DMAAccess.self, payload) { a in
                var s = "address=\(hex(a.address)) count=\(a.count)"
                if !a.data.isEmpty { s += " data=\(hexBytes(a.data))" }
                return s
            }
        case .deviceReset:
            return sizeOnly(payload)
        case .regionWriteMulti:
            if isReply { return describe(WriteMultiReply.self, payload) { "completed=\($0.completed)" } }
            return describe(WriteMulti.self, payload) { m in
                let shown = m.entries.prefix(4).map { "[\($0.region)]\(hex($0.offset))/\($0.count)=\(hex($0.data))" }
                return "writes=\(m.entries.count) " + shown.joined(separator: " ") + (m.entries.count > 4 ? " ..." : "")
            }
        case .deviceFeature:
            return describe(DeviceFeature.self, payload) { f in
                var ops: [String] = []
                if f.isGet { ops.append("GET") }
                if f.isSet { ops.append("SET") }
                if f.isProbe { ops.append("PROBE") }
                var s = "feature=\(f.feature) \(ops.joined(separator: "|")) argsz=\(f.argsz)"
                if !f.data.isEmpty { s += " data=\(hexBytes(f.data))" }
                return s
            }
        case .migDataRead:
            if isReply { return describe(MigDataReadReply.self, payload) { "size=\($0.size) argsz=\($0.argsz)" } }
            return describe(MigDataRead.self, payload) { "size=\($0.size) argsz=\($0.argsz)" }
        case .migDataWrite:
            if isReply { return sizeOnly(payload) }
            return describe(MigDataWrite.self, payload) { "size=\($0.size) argsz=\($0.argsz)" }
        default:
            return "payload=\(payload.count) bytes"
        }
    }

    private static func describe<T: WirePayload>(_ type: T.Type, _ payload: [UInt8], _ format: (T) -> String) -> String {
        do {
            return format(try T(payload: payload))
        } catch {
            return "undecodable (\(error))"
        }
    }

    private static func sizeOnly(_ payload: [UInt8]) -> String {
        payload.isEmpty ? "" : "payload=\(payload.count) bytes"
    }

    private static func capName(_ cap: RegionCapability) -> String {
        switch cap {
        case .sparseMmap(let areas): "sparse-mmap(\(areas.count))"
        case .type(let type, let subtype): "type(\(hex(type)),\(subtype))"
        case .msixMappable: "msix-mappable"
        case .nvlink2SSATGT: "nvlink2-ssatgt"
        case .nvlink2LinkSpeed: "nvlink2-lnkspd"
        case .unknown(let id, let version, _): "cap\(id)v\(version)"
        }
    }

    private static func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

    private static func hexBytes(_ bytes: [UInt8]) -> String {
        var s = ""
        for b in bytes.prefix(maxDataBytes) {
            if b < 0x10 { s += "0" }
            s += String(b, radix: 16)
        }
        if bytes.count > maxDataBytes { s += "...(\(bytes.count) bytes)" }
        return s
    }
}
