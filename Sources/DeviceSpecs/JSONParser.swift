/// A strict JSON (RFC 8259) reader for spec files. Foundation's decoder accepts
/// trailing commas and reports syntax errors without a position; a spec author
/// needs both refused and located, so specs are read here instead.
struct JSONParser {
    /// A syntax error at a 1-based line and column (columns count characters).
    struct SyntaxError: Error, Equatable {
        var line: Int
        var column: Int
        var reason: String
    }

    private let b: [UInt8]
    private var i = 0
    /// Nesting limit, so a hostile file cannot overflow the stack.
    private static let maxDepth = 512

    init(_ bytes: [UInt8]) { b = bytes }

    static func parse(_ bytes: [UInt8]) throws(SyntaxError) -> JSONValue {
        var p = JSONParser(bytes)
        // A UTF-8 byte order mark is tolerated, as editors write one.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { p.i = 3 }
        p.skipSpace()
        guard p.i < p.b.count else { throw p.fail("the file is empty (expected a JSON object)") }
        let v = try p.value(depth: 0)
        p.skipSpace()
        guard p.i == p.b.count else { throw p.fail("unexpected \(p.show()) after the end of the document") }
        return v
    }

    // MARK: Positions

    private func position(_ at: Int) -> (line: Int, column: Int) {
        var line = 1, column = 1
        for k in 0..<min(at, b.count) {
            if b[k] == 0x0A { line += 1; column = 1 } else if b[k] & 0xC0 != 0x80 { column += 1 }
        }
        return (line, column)
    }

    private func fail(_ reason: String, at: Int? = nil) -> SyntaxError {
        let p = position(at ?? i)
        return SyntaxError(line: p.line, column: p.column, reason: reason)
    }

    /// The next character, for messages.
    private func show() -> String {
        guard i < b.count else { return "end of file" }
        let c = b[i]
        if c >= 0x20 && c < 0x7F { return "'\(Character(Unicode.Scalar(c)))'" }
        return "byte 0x\(String(c, radix: 16))"
    }

    // MARK: Grammar

    private mutating func skipSpace() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    private mutating func value(depth: Int) throws(SyntaxError) -> JSONValue {
        guard depth < Self.maxDepth else { throw fail("nested deeper than \(Self.maxDepth) levels") }
        guard i < b.count else { throw fail("unexpected end of file (expected a value)") }
        switch b[i] {
        case UInt8(ascii: "{"): return try object(depth: depth)
        case UInt8(ascii: "["): return try array(depth: depth)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw fail("unexpected \(show()) (expected a value)")
        }
    }

    private mutating func literal(_ word: String) throws(SyntaxError) {
        let w = Array(word.utf8)
        guard b.count - i >= w.count, Array(b[i..<(i + w.count)]) == w else {
            throw fail("unexpected \(show()) (expected a value; strings need double quotes)")
        }
        i += w.count
    }

    private mutating func object(depth: Int) throws(SyntaxError) -> JSONValue {
        i += 1
        var out: [String: JSONValue] = [:]
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
        while true {
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: "\"") else {
                if i < b.count, b[i] == UInt8(ascii: "}") { throw fail("trailing comma before '}' (remove the last ',')", at: lastComma) }
                throw fail("unexpected \(show()) (expected a key in double quotes)")
            }
            let keyAt = i
            let key = try string()
            skipSpace()
            guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("unexpected \(show()) (expected ':' after key \"\(key)\")") }
            i += 1
            skipSpace()
            let v = try value(depth: depth + 1)
            guard out.updateValue(v, forKey: key) == nil else { throw fail("duplicate key \"\(key)\"", at: keyAt) }
            skipSpace()
            guard i < b.count else { throw fail("unexpected end of file (expected ',' or '}')") }
            if b[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
            guard b[i] == UInt8(ascii: ",") else { throw fail("unexpected \(show()) (expected ',' or '}')") }
            lastComma = i
            i += 1
        }
    }

    /// Where the last ',' was, so a trailing comma is reported where it stands.
    private var lastComma = 0

    private mutating func array(depth: Int) throws(SyntaxError) -> JSONValue {
        i += 1
        var out: [JSONValue] = []
        skipSpace()
        if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
        while true {
            skipSpace()
            if i < b.count, b[i] == UInt8(ascii: "]"), !out.isEmpty {
                throw fail("trailing comma before ']' (remove the last ',')", at: lastComma)
            }
            out.append(try value(depth: depth + 1))
            skipSpace()
            guard i < b.count else { throw fail("unexpected end of file (expected ',' or ']')") }
            if b[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
            guard b[i] == UInt8(ascii: ",") else { throw fail("unexpected \(show()) (expected ',' or ']')") }
            lastComma = i
            i += 1
        }
    }

    private mutating func string() throws(SyntaxError) -> String {
        let start = i
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < b.count else { throw fail("unterminated string (started here)", at: start) }
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c < 0x20 { throw fail("control character 0x\(String(c, radix: 16)) in a string (escape it)") }
            if c != UInt8(ascii: "\\") { out.append(c); i += 1; continue }
            i += 1
            guard i < b.count else { throw fail("unterminated string (started here)", at: start) }
            let e = b[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar) {
                    // A surrogate pair: the low half must follow as another \u escape.
                    guard b.count - i >= 6, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else {
                        throw fail("unpaired surrogate \\u\(String(scalar, radix: 16)) in a string")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw fail("unpaired surrogate in a string") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape in a string") }
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw fail("invalid escape '\\\(Character(Unicode.Scalar(e)))' in a string", at: i - 2)
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw fail("a string is not valid UTF-8", at: start) }
        return s
    }

    private mutating func hex4() throws(SyntaxError) -> UInt32 {
        guard b.count - i >= 4 else { throw fail("\\u needs four hex digits") }
        var v: UInt32 = 0
        for k in 0..<4 {
            guard let d = hexDigit(b[i + k]) else { throw fail("\\u needs four hex digits", at: i + k) }
            v = v << 4 | d
        }
        i += 4
        return v
    }

    private func hexDigit(_ c: UInt8) -> UInt32? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(c - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(c - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(c - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    /// Integers stay exact (Int64, then UInt64); only fractions and exponents become Double.
    private mutating func number() throws(SyntaxError) -> JSONValue {
        let start = i
        func isDigit(_ k: Int) -> Bool { k < b.count && (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b[k]) }
        if b[i] == UInt8(ascii: "-") { i += 1 }
        guard isDigit(i) else { throw fail("'-' must be followed by a digit") }
        if b[i] == UInt8(ascii: "0"), isDigit(i + 1) { throw fail("leading zeros are not allowed (write hex as a string, \"0x1f\")") }
        while isDigit(i) { i += 1 }
        var integral = true
        if i < b.count, b[i] == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard isDigit(i) else { throw fail("a digit must follow '.'") }
            while isDigit(i) { i += 1 }
        }
        if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            integral = false
            i += 1
            if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
            guard isDigit(i) else { throw fail("a digit must follow the exponent") }
            while isDigit(i) { i += 1 }
        }
        let text = String(decoding: b[start..<i], as: UTF8.self)
        if integral {
            if let v = Int64(text) { return .integer(v) }
            if let v = UInt64(text) { return .unsigned(v) }
        }
        guard let d = Double(text) else { throw fail("number \(text) is out of range", at: start) }
        return .double(d)
    }
}
