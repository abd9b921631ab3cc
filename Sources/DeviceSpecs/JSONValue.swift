import FoundationEssentials

/// A parsed JSON document that keeps integers exact (64-bit register values and
/// serial numbers do not survive a round trip through Double).
public enum JSONValue: Sendable, Equatable, Decodable {
    /// `null`.
    case null
    /// `true` or `false`.
    case bool(Bool)
    /// An integer that fits Int64.
    case integer(Int64)
    /// A non-negative integer above Int64.max.
    case unsigned(UInt64)
    /// A number with a fraction or exponent.
    case double(Double)
    /// A string.
    case string(String)
    /// An array.
    case array([JSONValue])
    /// An object (key order is not kept).
    case object([String: JSONValue])

    /// Decodes any JSON value, integers kept exact.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null; return }
        if let b = try? c.decode(Bool.self) { self = .bool(b); return }
        if let i = try? c.decode(Int64.self) { self = .integer(i); return }
        if let u = try? c.decode(UInt64.self) { self = .unsigned(u); return }
        if let d = try? c.decode(Double.self) { self = .double(d); return }
        if let s = try? c.decode(String.self) { self = .string(s); return }
        if let a = try? c.decode([JSONValue].self) { self = .array(a); return }
        self = .object(try c.decode([String: JSONValue].self))
    }

    /// Parses strict JSON: a trailing comma, a duplicate key or any other syntax
    /// error is refused with its line and column (see `SpecError.line`).
    public static func parse(_ bytes: [UInt8], file: String = "<json>") throws(SpecError) -> JSONValue {
        do { return try JSONParser.parse(bytes) } catch {
            throw SpecError(file: file, field: "", reason: "not valid JSON: \(error.reason)", line: error.line, column: error.column)
        }
    }

    var kindName: String {
        switch self {
        case .null: "null"; case .bool: "a boolean"; case .integer, .unsigned, .double: "a number"
        case .string: "a string"; case .array: "an array"; case .object: "an object"
        }
    }
}

/// A spec file that cannot be used, with the file, the field (a path such as
/// `bars[1].size`) and the reason.
public struct SpecError: Error, CustomStringConvertible, Equatable {
    /// The spec file.
    public var file: String
    /// The field at fault, as a path (`bars[1].size`); empty for the whole file.
    public var field: String
    /// Why, in words a spec author can act on.
    public var reason: String
    /// Where a syntax error is (1-based; the column counts characters), as compilers
    /// print it: `file:line:column: reason`.
    public var line: Int?
    /// The column of a syntax error (1-based, in characters).
    public var column: Int?

    /// An error about `field` of `file`.
    public init(file: String, field: String, reason: String, line: Int? = nil, column: Int? = nil) {
        self.file = file
        self.field = field
        self.reason = reason
        self.line = line
        self.column = column
    }

    /// `file:line:column: reason`, or `file: field: reason`.
    public var description: String {
        if let line, let column { return "\(file):\(line):\(column): \(reason)" }
        return field.isEmpty ? "\(file): \(reason)" : "\(file): \(field): \(reason)"
    }
}

/// A cursor into a spec document that knows its path, for precise errors.
/// Objects check their keys: an unknown key is an error, never silently ignored.
public struct SpecNode: Sendable {
    /// The spec file (for errors).
    public let file: String
    /// Where this node sits (`bars[1].size`).
    public let path: String
    /// The node's value.
    public let value: JSONValue

    /// A node at `path` of `file`.
    public init(file: String, path: String, value: JSONValue) {
        self.file = file
        self.path = path
        self.value = value
    }

    /// An error about this node.
    public func error(_ reason: String) -> SpecError { SpecError(file: file, field: path, reason: reason) }

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// The object's members; fails on anything but an object or on keys outside `allowed`.
    public func object(allowed: Set<String>) throws(SpecError) -> [String: SpecNode] {
        guard case .object(let o) = value else { throw error("must be an object, not \(value.kindName)") }
        var out: [String: SpecNode] = [:]
        for (k, v) in o {
            guard allowed.contains(k) else {
                throw SpecError(file: file, field: child(k),
                                reason: "unknown key; allowed here: \(allowed.sorted().joined(separator: ", "))")
            }
            out[k] = SpecNode(file: file, path: child(k), value: v)
        }
        return out
    }

    /// The array's elements; fails on anything but an array.
    public func array() throws(SpecError) -> [SpecNode] {
        guard case .array(let a) = value else { throw error("must be an array, not \(value.kindName)") }
        return a.enumerated().map { SpecNode(file: file, path: "\(path)[\($0.offset)]", value: $0.element) }
    }

    /// The string; fails on anything but a string.
    public func string() throws(SpecError) -> String {
        guard case .string(let s) = value else { throw error("must be a string, not \(value.kindName)") }
        return s
    }

    /// The boolean; fails on anything but true or false.
    public func bool() throws(SpecError) -> Bool {
        guard case .bool(let b) = value else { throw error("must be true or false, not \(value.kindName)") }
        return b
    }

    /// An unsigned integer: a JSON integer, or a string in hex ("0x1f"), decimal,
    /// or with a binary size suffix ("4KiB", "2 MiB", "1GiB").
    public func unsigned(max: UInt64 = .max) throws(SpecError) -> UInt64 {
        let v: UInt64
        switch value {
        case .integer(let i):
            guard i >= 0 else { throw error("must not be negative (\(i))") }
            v = UInt64(i)
        case .unsigned(let u): v = u
        case .string(let s):
            guard let p = Self.parseNumber(s) else {
                throw error("'\(s)' is not a number (use 123, \"0x7b\" or a size like \"4KiB\")")
            }
            v = p
        default:
            throw error("must be a number, not \(value.kindName)")
        }
        guard v <= max else { throw error("\(Self.show(v)) is out of range (at most \(Self.show(max)))") }
        return v
    }

    /// An unsigned integer (as `unsigned`) inside `range`.
    public func int(in range: ClosedRange<Int>) throws(SpecError) -> Int {
        let v = try unsigned()
        guard v <= UInt64(Int.max), range.contains(Int(v)) else {
            throw error("\(v) is out of range (\(range.lowerBound)...\(range.upperBound))")
        }
        return Int(v)
    }

    /// Bytes from a hex string ("01 02 ab" or "0102ab").
    public func hexBytes() throws(SpecError) -> [UInt8] {
        let s = try string().filter { !$0.isWhitespace }
        guard s.count % 2 == 0 else { throw error("hex string has an odd number of digits") }
        var out: [UInt8] = []
        var it = s.makeIterator()
        while let a = it.next(), let b = it.next() {
            guard let v = UInt8(String([a, b]), radix: 16) else { throw error("'\(a)\(b)' is not a hex byte") }
            out.append(v)
        }
        return out
    }

    static func show(_ v: UInt64) -> String { v > 9999 ? "0x" + String(v, radix: 16) : String(v) }

    static func parseNumber(_ raw: String) -> UInt64? {
        let s = String(raw.filter { $0 != " " && $0 != "_" })
        let units: [(String, UInt64)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
                                         ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)]
        for (suffix, mult) in units where s.hasSuffix(suffix) {
            guard let n = parseNumber(String(s.dropLast(suffix.count))) else { return nil }
            let (r, o) = n.multipliedReportingOverflow(by: mult)
            return o ? nil : r
        }
        if s.lowercased().hasPrefix("0x") { return UInt64(s.dropFirst(2), radix: 16) }
        return UInt64(s)
    }
}
