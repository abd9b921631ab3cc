import Testing
@testable import VFIOUserProtocol

/// Parses a hex dump in the reference's format (`0000: 01 00 ...`), ignoring
/// the offset column.
func hexDump(_ text: String) -> [UInt8] {
    var out: [UInt8] = []
    for line in text.split(separator: "\n") {
        var body = Substring(line)
        if let colon = body.firstIndex(of: ":") { body = body[body.index(after: colon)...] }
        for token in body.split(separator: " ") {
            guard let b = UInt8(token, radix: 16) else {
                Issue.record("bad hex token \(token)")
                return []
            }
            out.append(b)
        }
    }
    return out
}

/// Whether decoding `bytes` as `T` throws a ProtocolError.
func decodeThrows<T: WirePayload>(_ type: T.Type, _ bytes: [UInt8]) -> Bool {
    do {
        _ = try T(payload: bytes)
        return false
    } catch {
        return true
    }
}
