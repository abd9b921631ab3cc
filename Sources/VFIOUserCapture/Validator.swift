// Placeholder, replaced by the rule-based validator.
import VFIOUserProtocol

public struct Deviation: Sendable, Hashable, CustomStringConvertible {
    public var rule: String
    public var detail: String
    public var description: String { "[\(rule)] \(detail)" }
}

public struct ProtocolValidator: Sendable {
    public init() {}
    public mutating func check(message: [UInt8], originalLength: Int, fdCount: Int, direction: CaptureDirection,
                               flags: CaptureRecord.Flags) -> [Deviation] { [] }
}
