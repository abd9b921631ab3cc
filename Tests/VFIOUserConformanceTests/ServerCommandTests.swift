import Glibc
import TestSupport
import Testing
import VFIOUserConformance

/// `--server-cmd`: the suite runs the server under test itself.
@Suite struct ServerCommandTests {
    /// The `vfu` binary built next to this test executable.
    static let vfu: String = {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        if n > 0 {
            var dir = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            for _ in 0..<4 {
                guard let slash = dir.lastIndex(of: "/") else { break }
                dir = String(dir[..<slash])
                if access(dir + "/vfu", X_OK) == 0 { return dir + "/vfu" }
            }
        }
        return repositoryRoot + "/.build/debug/vfu"
    }()

    static func serve(_ spec: String) -> String {
        "'\(vfu)' serve '\(repositoryRoot)/specs/\(spec)' --socket {sock} --log-level error"
    }

    /// `vfu serve` run by the suite: every check runs (none skipped for want of a
    /// connection), every next client is served, nothing crashed, 0 FAIL.
    @Test func vfuServeRunByTheSuitePassesEverything() {
        let report = ConformanceSuite(socketPath: "", serverCommand: Self.serve("default.json")).run()
        let failures = report.results.filter { $0.outcome == .fail }.map(\.line)
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        #expect(!report.results.contains { $0.outcome == .skip && $0.detail.contains("connection of its own") })
        let next = report.results.filter { $0.id.hasPrefix("server.next-client.") }
        #expect(next.count >= 8)
        #expect(next.allSatisfy { $0.outcome == .pass }, "\(next.map(\.line))")
        #expect(report.results.contains { $0.id == "server.no-crash" && $0.outcome == .pass })
        #expect(report.results.contains { $0.id == "reset.command-register" && $0.outcome == .pass })
        #expect(report.results.contains { $0.id == "dma.dirty-log" && $0.outcome == .pass })
        #expect(report.server.contains("serve"))
    }

    /// Taken as a one-client server, it is relaunched for every check that needs a
    /// connection of its own: the same checks run, still 0 FAIL.
    @Test func aOneAtATimeServerIsRelaunchedForFreshConnections() {
        let report = ConformanceSuite(socketPath: "", connectionModel: .oneAtATime, serverCommand: Self.serve("minimal.json")).run()
        let failures = report.results.filter { $0.outcome == .fail }.map(\.line)
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        #expect(report.results.contains { $0.id == "version.required-first" && $0.outcome == .pass })
        #expect(report.results.contains { $0.id == "message.split-every-byte" && $0.outcome == .pass })
        let launches = report.results.first { $0.id == "server.no-crash" }?.detail ?? ""
        #expect((Int(launches.prefix { $0.isNumber }) ?? 0) > 5, "\(launches)")
    }

    /// A server that dies of a signal is a crash, reported with the signal; one that
    /// never makes its socket fails to launch, and the run still ends with a report.
    @Test func aServerKilledByASignalIsACrash() {
        let report = ConformanceSuite(socketPath: "", serverCommand: "sh -c 'kill -SEGV $$' # {sock}", launchTimeoutMs: 2000).run()
        #expect(report.results.contains { $0.id == "server.launch" && $0.outcome == .fail && $0.detail.contains("SIGSEGV") })
        #expect(report.results.contains { $0.id == "server.no-crash" && $0.outcome == .fail && $0.detail.contains("SIGSEGV") })
        #expect(report.count(.fail) == 2)
    }

    /// A server that exits with a failure status is recorded with it, and its last words.
    @Test func aServerThatExitsIsReportedWithItsStatusAndOutput() {
        let report = ConformanceSuite(socketPath: "", serverCommand: "sh -c 'echo no device here >&2; exit 3' # {sock}", launchTimeoutMs: 2000).run()
        let launch = report.results.first { $0.id == "server.launch" }
        #expect(launch?.outcome == .fail)
        #expect(launch?.detail.contains("status 3") == true && launch?.detail.contains("no device here") == true, "\(launch?.line ?? "")")
    }

    /// The JUnit report: one testcase per check, failures and skips marked.
    @Test func theJUnitReportHasEveryCheck() {
        let report = ConformanceSuite(socketPath: "", serverCommand: "exit 1 # {sock}", launchTimeoutMs: 1000).run()
        let xml = report.junit
        #expect(xml.hasPrefix("<?xml"))
        #expect(xml.contains("tests=\"\(report.results.count)\" failures=\"\(report.count(.fail))\""))
        #expect(xml.components(separatedBy: "<testcase ").count - 1 == report.results.count)
        #expect(xml.contains("<failure message="))
    }
}

extension String {
    func components(separatedBy separator: String) -> [Substring] {
        var parts: [Substring] = []
        var rest = self[...]
        while let r = rest.firstRange(of: separator) {
            parts.append(rest[..<r.lowerBound])
            rest = rest[r.upperBound...]
        }
        parts.append(rest)
        return parts
    }
}
