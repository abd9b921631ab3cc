/// The outcome of one conformance check.
public struct ConformanceResult: Sendable, Equatable {
    public enum Outcome: String, Sendable, Equatable {
        case pass = "PASS", fail = "FAIL", warn = "WARN", skip = "SKIP"
    }

    /// A short stable name, e.g. `version.reply-not-longer`.
    public var id: String
    public var outcome: Outcome
    /// What was seen (and, for a failure, what was expected).
    public var detail: String
    /// Where the rule comes from (reference section or "QEMU").
    public var source: String

    public init(id: String, outcome: Outcome, detail: String, source: String) {
        self.id = id
        self.outcome = outcome
        self.detail = detail
        self.source = source
    }

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
    public var server: String
    public var results: [ConformanceResult]

    public func count(_ o: ConformanceResult.Outcome) -> Int { results.filter { $0.outcome == o }.count }

    /// One line per check, then "N passed, M failed" (warnings and skips after).
    public var text: String {
        results.map(\.line).joined(separator: "\n")
            + "\n\(count(.pass)) passed, \(count(.fail)) failed, \(count(.warn)) warnings, \(count(.skip)) skipped"
    }

    public var json: String {
        "{\"server\":\"\(server)\",\"passed\":\(count(.pass)),\"failed\":\(count(.fail)),\"warnings\":\(count(.warn)),"
            + "\"skipped\":\(count(.skip)),\"results\":[\(results.map(\.json).joined(separator: ","))]}"
    }
}
