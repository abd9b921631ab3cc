import DeviceSpecs
import FoundationEssentials
@_spi(Server) import PCICore
import VFIOUserProtocol

/// The spec's optional `faults` section (docs/control.md): faults armed when the
/// server starts, most of them waiting for a trigger. Validated against the built
/// device; errors name the file, the field (`faults[1].trigger.onWrite.offset`) and the reason.
public struct FaultScenario: Sendable {
    /// The faults, in the order the spec lists them.
    public var faults: [FaultSpec]

    static let keys: Set<String> = [
        "kind", "count", "durationMs", "survivesReset", "trigger", "command", "region", "offset", "length",
        "address", "size", "direction", "errno", "ms", "mode", "stopWork", "data",
    ]
    static let triggerKeys: Set<String> = ["afterAccesses", "afterMs", "onWrite"]
    static let writeKeys: Set<String> = ["region", "offset", "value"]

    /// The `faults` section of `spec` (none: empty), checked against `limits`; throws `SpecError` naming the field.
    public static func parse(_ spec: DeviceSpec, limits: FaultLimits) throws(SpecError) -> FaultScenario {
        guard let node = spec.sections["faults"] else { return FaultScenario(faults: []) }
        guard case .array(let items) = node.value else { throw node.error("must be an array of faults") }
        var out: [FaultSpec] = []
        for (i, item) in items.enumerated() {
            let path = "faults[\(i)]"
            func err(_ field: String, _ reason: String) -> SpecError {
                SpecError(file: spec.file, field: field.isEmpty ? path : "\(path).\(field)", reason: reason)
            }
            guard case .object(let o) = item else { throw err("", "must be an object") }
            if let k = o.keys.sorted().first(where: { !keys.contains($0) }) {
                throw err(k, "unknown key; allowed here: \(keys.sorted().joined(separator: ", "))")
            }
            if case .object(let t)? = o["trigger"] {
                if let k = t.keys.sorted().first(where: { !triggerKeys.contains($0) }) {
                    throw err("trigger.\(k)", "unknown key; allowed here: \(triggerKeys.sorted().joined(separator: ", "))")
                }
                if case .object(let w)? = t["onWrite"], let k = w.keys.sorted().first(where: { !writeKeys.contains($0) }) {
                    throw err("trigger.onWrite.\(k)", "unknown key; allowed here: \(writeKeys.sorted().joined(separator: ", "))")
                }
            }
            let f: FaultSpec
            do { f = try JSONDecoder().decode(FaultSpec.self, from: Data(jsonText(item).utf8)) } catch {
                throw Self.decodingError(error, err)
            }
            do { try f.validate(limits) } catch { throw err(error.field, error.reason) }
            out.append(f)
        }
        return FaultScenario(faults: out)
    }

    static func decodingError(_ e: any Error, _ err: (String, String) -> SpecError) -> SpecError {
        func path(_ c: [any CodingKey]) -> String { c.map(\.stringValue).joined(separator: ".") }
        switch e {
        case DecodingError.keyNotFound(let k, let c): return err(path(c.codingPath + [k]), "missing")
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c), DecodingError.dataCorrupted(let c):
            let reason = c.codingPath.last?.stringValue == "kind"
                ? "must be one of \(FaultSpec.Kind.allCases.map(\.rawValue).joined(separator: ", "))" : c.debugDescription
            return err(path(c.codingPath), reason)
        default: return err("", "\(e)")
        }
    }

    /// JSON text of a parsed value (integers exact), to decode it as a Codable type.
    static func jsonText(_ v: JSONValue) -> String {
        switch v {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .integer(let i): return "\(i)"
        case .unsigned(let u): return "\(u)"
        case .double(let d): return "\(d)"
        case .string(let s):
            var out = "\""
            for u in s.unicodeScalars {
                switch u {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                default:
                    if u.value < 0x20 { out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16) }
                    else { out.unicodeScalars.append(u) }
                }
            }
            return out + "\""
        case .array(let a): return "[" + a.map(jsonText).joined(separator: ",") + "]"
        case .object(let o): return "{" + o.map { jsonText(.string($0.key)) + ":" + jsonText($0.value) }.joined(separator: ",") + "}"
        }
    }
}

extension ControlledDevice {
    /// The limits faults for `device` are validated against (its regions and config size).
    public static func limits(of device: PCIDevice) -> FaultLimits {
        var sizes: [UInt32: UInt64] = [:]
        for i in 0..<device.regionCount {
            if let r = device.region(UInt32(i)), r.size > 0 { sizes[UInt32(i)] = r.size }
        }
        return FaultLimits(regionSizes: sizes, configSize: device.config.size)
    }

    /// Arms (or leaves pending on their triggers) every fault of a scenario.
    public func arm(_ scenario: FaultScenario) throws(FaultSpecError) {
        for f in scenario.faults {
            do { _ = try addFault(f) } catch { throw FaultSpecError(field: "faults", reason: error.reason) }
        }
    }

    /// Adds one fault as `fault-add` would; returns its id.
    @discardableResult
    public func inject(_ spec: FaultSpec) throws(FaultSpecError) -> Int {
        do { return try addFault(spec).id } catch { throw FaultSpecError(field: "fault", reason: error.reason) }
    }
}
