import Glibc

/// The outcome of one conformance check.
public struct ConformanceResult: Sendable, Equatable {
    /// How a check came out.
    public enum Outcome: String, Sendable, Equatable {
        /// The server does what the protocol requires.
        case pass = "PASS"
        /// The server breaks a requirement; `vfu conform` exits 1.
        case fail = "FAIL"
        /// Allowed, but something QEMU or the protocol's intent would not expect.
        case warn = "WARN"
        /// Not run: the server lacks the feature, or the check needs a fresh server.
        case skip = "SKIP"
    }

    /// A short stable name, e.g. `version.reply-not-longer`.
    public var id: String
    /// How the check came out.
    public var outcome: Outcome
    /// What was seen (and, for a failure, what was expected).
    public var detail: String
    /// Where the rule comes from (reference section or "QEMU").
    public var source: String

    /// A result with the given fields.
    public init(id: String, outcome: Outcome, detail: String, source: String) {
        self.id = id
        self.outcome = outcome
        self.detail = detail
        self.source = source
    }

    /// `OUTCOME id: detail [source]`, as `vfu conform` prints it.
    public var line: String { "\(outcome.rawValue) \(id): \(detail) [\(source)]" }

    var json: String {
        func esc(_ s: String) -> String {
            var o = ""
            for c in s.unicodeScalars {
                switch c {
                case "\"": o += "\\\""
                case "\\": o += "\\\\"
                case "\n": o += "\\n"
                default: if c.value < 0x20 { o += " " } else { o.unicodeScalars.append(c) }
                }
            }
            return o
        }
        return "{\"id\":\"\(esc(id))\",\"outcome\":\"\(outcome.rawValue)\",\"detail\":\"\(esc(detail))\",\"source\":\"\(esc(source))\"}"
    }
}

/// A finished run.
public struct ConformanceReport: Sendable {
    /// The socket path or the server command the suite ran against.
    public var server: String
    /// Every check's result, in the order they ran.
    public var results: [ConformanceResult]

    /// How many checks came out `o`.
    public func count(_ o: ConformanceResult.Outcome) -> Int { results.filter { $0.outcome == o }.count }

    /// One line per check, then "N passed, M failed" (warnings and skips after).
    public var text: String {
        results.map(\.line).joined(separator: "\n")
            + "\n\(count(.pass)) passed, \(count(.fail)) failed, \(count(.warn)) warnings, \(count(.skip)) skipped"
    }

    /// One JSON object: counts and every result (`vfu conform --json`).
    public var json: String {
        "{\"server\":\"\(server)\",\"passed\":\(count(.pass)),\"failed\":\(count(.fail)),\"warnings\":\(count(.warn)),"
            + "\"skipped\":\(count(.skip)),\"results\":[\(results.map(\.json).joined(separator: ","))]}"
    }

    /// JUnit XML: one testcase per check, named by its id and classed by its group; a
    /// FAIL is a failure, a SKIP skipped, a WARN passes with the warning as output.
    public var junit: String {
        func x(_ s: String) -> String {
            var o = ""
            for c in s.unicodeScalars {
                switch c {
                case "&": o += "&amp;"
                case "<": o += "&lt;"
                case ">": o += "&gt;"
                case "\"": o += "&quot;"
                default: if c.value < 0x20 { o += " " } else { o.unicodeScalars.append(c) }
                }
            }
            return o
        }
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n"
        out += "<testsuite name=\"vfu conform \(x(server))\" tests=\"\(results.count)\" failures=\"\(count(.fail))\" errors=\"0\" skipped=\"\(count(.skip))\">\n"
        for r in results {
            let group = r.id.split(separator: ".").first.map(String.init) ?? r.id
            let text = x("\(r.detail) [\(r.source)]")
            out += "  <testcase classname=\"conform.\(x(group))\" name=\"\(x(r.id))\">"
            switch r.outcome {
            case .pass: out += "<system-out>\(text)</system-out>"
            case .warn: out += "<system-out>WARN: \(text)</system-out>"
            case .fail: out += "<failure message=\"\(text)\"/>"
            case .skip: out += "<skipped message=\"\(text)\"/>"
            }
            out += "</testcase>\n"
        }
        return out + "</testsuite>\n</testsuites>\n"
    }

    /// Writes `junit` to `path`.
    public func writeJUnit(to path: String) -> Bool {
        guard let f = fopen(path, "w") else { return false }
        let bytes = Array(junit.utf8)
        let n = fwrite(bytes, 1, bytes.count, f)
        return fclose(f) == 0 && n == bytes.count
    }
}
