import DeviceSpecs
import Glibc
import TestSupport
import Testing

/// Spec files are strict JSON: syntax errors, trailing commas and duplicate keys are
/// refused with the line and column where they are, as `file:line:column: reason`.
@Suite struct JSONSyntaxTests {
    struct Case: Sendable, CustomStringConvertible {
        var json: String
        var line: Int
        var column: Int
        var reason: String
        var description: String { reason }
    }

    static let cases: [Case] = [
        // The comma itself is where the error is: the last ',' before '}' or ']'.
        Case(json: "{\n  \"name\": \"t\",\n  \"ids\": {\"vendor\": 1, \"device\": 2},\n}\n", line: 3, column: 36, reason: "trailing comma before '}'"),
        Case(json: "{\"bars\": [1, 2,\n ]}", line: 1, column: 15, reason: "trailing comma before ']'"),
        Case(json: "{\n  \"name\": \"t\"\n  \"ids\": {}\n}", line: 3, column: 3, reason: "expected ',' or '}'"),
        Case(json: "{\"name\": 't'}", line: 1, column: 10, reason: "expected a value"),
        Case(json: "{\"a\": 1, \"a\": 2}", line: 1, column: 10, reason: "duplicate key \"a\""),
        Case(json: "{\"a\": 01}", line: 1, column: 7, reason: "leading zeros"),
        Case(json: "{\"a\": \"x", line: 1, column: 7, reason: "unterminated string"),
        Case(json: "{\"a\": 1} x", line: 1, column: 10, reason: "after the end of the document"),
        Case(json: "", line: 1, column: 1, reason: "the file is empty"),
        // Columns count characters, not bytes: "é" is one column.
        Case(json: "{\"é\": tru}", line: 1, column: 7, reason: "expected a value"),
    ]

    @Test(arguments: cases)
    func syntaxErrorsNameLineAndColumn(_ c: Case) throws {
        let e = try #require(specError(c.json), "accepted: \(c.json)")
        #expect(e.line == c.line && e.column == c.column, "\(e)")
        #expect(e.reason.hasPrefix("not valid JSON: ") && e.reason.contains(c.reason), "\(e)")
        #expect(e.description == "t.json:\(c.line):\(c.column): \(e.reason)")
    }

    @Test func valuesKeepTheirExactTypes() throws {
        let v = try JSONValue.parse(Array(#"{"a": [18446744073709551615, -9223372036854775808, 1.5, 1e3, true, null, "\u00e9\ud83d\ude00\n"]}"#.utf8))
        #expect(v == .object(["a": .array([.unsigned(.max), .integer(.min), .double(1.5), .double(1000), .bool(true), .null,
                                           .string("é😀\n")])]))
    }

    @Test func aMissingFileGivesTheOSReason() throws {
        do {
            _ = try DeviceSpec.load(path: "/nonexistent-dir/x.json")
            Issue.record("loaded a missing file")
        } catch {
            #expect(error.description == "/nonexistent-dir/x.json: cannot read the file: No such file or directory")
        }
        do {
            _ = try DeviceSpec.load(path: "/")
            Issue.record("loaded a directory")
        } catch {
            #expect(error.reason == "cannot read the file: Is a directory")
        }
    }

    @Test func everyShippedSpecIsStrictJSON() throws {
        let dir = "\(repositoryRoot)/specs"
        guard let d = opendir(dir) else { throw TestFailure("cannot list \(dir)") }
        defer { closedir(d) }
        var seen = 0
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasSuffix(".json"), let f = fopen("\(dir)/\(name)", "rb") else { continue }
            var bytes: [UInt8] = [], buf = [UInt8](repeating: 0, count: 4096)
            while case let n = fread(&buf, 1, buf.count, f), n > 0 { bytes += buf[0..<n] }
            fclose(f)
            #expect(throws: Never.self, "\(name)") { _ = try JSONValue.parse(bytes) }
            seen += 1
        }
        #expect(seen >= 10)
    }
}
