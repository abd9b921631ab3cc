import Glibc
import TestSupport
import Testing
import VFIOUserConformance
import VFIOUserProtocol
import VFIOUserServer
import VFIOUserTransport
import VariantDevices

/// A unique socket path in a fresh temporary directory.
func temporarySocketPath(_ name: String) -> String {
    var template = Array("/tmp/vfu-conform-XXXXXX".utf8CString)
    let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    return "\(dir)/\(name).sock"
}


/// The device specs in specs/ (every .json).
let specNames: [String] = {
    guard let d = opendir(repositoryRoot + "/specs") else { return [] }
    defer { closedir(d) }
    var names: [String] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name.hasSuffix(".json") { names.append(name) }
    }
    return names.sorted()
}()

@Suite struct ConformanceTests {
    /// Every spec of ours, with the state-changing checks too (BAR sizing, reset state,
    /// migration table, device DMA): not one FAIL.
    @Test(arguments: specNames)
    func ourServerPassesEveryCheck(spec name: String) throws {
        let registry = VariantRegistry.standard
        let spec = try registry.loadSpec(path: repositoryRoot + "/specs/\(name)")
        let device = try registry.bind(spec).driver.build(spec)
        let path = temporarySocketPath("ours")
        let listener = try UnixListener(path: path)
        let server = VFIOUserServer(device: device)
        server.start(on: listener)
        defer { server.stop() }
        let report = ConformanceSuite(socketPath: path, disruptive: true).run()
        let failures = report.results.filter { $0.outcome == .fail }.map(\.line)
        #expect(failures.isEmpty, "\(name):\n\(failures.joined(separator: "\n"))")
        #expect(report.count(.pass) >= 55)
        // Ids are stable and unique: a report can be compared run to run.
        #expect(Set(report.results.map(\.id)).count == report.results.count)
    }

    /// The disruptive migration checks against the migratable VF: every one passes and
    /// the device is RUNNING afterwards.
    @Test func theDisruptiveMigrationChecksPassOnTheMigratableVF() throws {
        let registry = VariantRegistry.standard
        let spec = try registry.loadSpec(path: repositoryRoot + "/specs/migratable-vf.json")
        let server = VFIOUserServer(device: try registry.bind(spec).driver.build(spec))
        let path = temporarySocketPath("mvf")
        server.start(on: try UnixListener(path: path))
        defer { server.stop() }
        let report = ConformanceSuite(socketPath: path, disruptive: true).run()
        let failures = report.results.filter { $0.outcome == .fail }.map(\.line)
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        let passed = Set(report.results.filter { $0.outcome == .pass }.map(\.id))
        for id in ["migration.arcs", "migration.data-read-not-saving", "migration.stop-copy-stream",
                   "migration.illegal-arc", "migration.back-to-running"] {
            #expect(passed.contains(id), "\(id)")
        }
        // Without the flag none of them runs.
        let quiet = ConformanceSuite(socketPath: path).run()
        #expect(!quiet.results.contains { $0.id == "migration.arcs" })
    }

    /// All checks over one shared connection, as for libvfio-user's one-client servers:
    /// without --server-cmd, exactly the checks that need a connection of their own are
    /// skipped, and say how to run them.
    @Test func ourServerPassesOverOneSharedConnection() throws {
        let registry = VariantRegistry.standard
        let spec = try registry.loadSpec(path: repositoryRoot + "/specs/default.json")
        let server = VFIOUserServer(device: try registry.bind(spec).driver.build(spec))
        let path = temporarySocketPath("shared")
        server.start(on: try UnixListener(path: path))
        defer { server.stop() }
        let report = ConformanceSuite(socketPath: path, connectionModel: .oneAtATime, disruptive: true).run()
        let failures = report.results.filter { $0.outcome == .fail }.map(\.line)
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
        #expect(report.results.first?.detail.contains("one client at a time") == true)
        let skipped = report.results.filter { $0.outcome == .skip }
        for s in skipped where s.id != "migration.state" && s.id != "reset.flr-command-register" {
            #expect(s.detail.contains("--server-cmd"), "\(s.line)")
        }
        #expect(skipped.contains { $0.id == "version.required-first" })
        #expect(skipped.contains { $0.id == "message.oversize-body" })
        #expect(report.count(.pass) >= 45)
    }

    /// A server that accepts one client and never a second is found out.
    @Test func aOneClientServerIsFoundOut() throws {
        let path = temporarySocketPath("one")
        let listener = try UnixListener(path: path)
        spawnThread(name: "one-client") {
            guard let s = try? listener.accept() else { return }
            BrokenServer.serve(s)   // serves this one; the listener never accepts again
        }
        defer { listener.close() }
        let report = ConformanceSuite(socketPath: path, timeoutMs: 300).run()
        #expect(report.results.first?.id == "connection.model")
        #expect(report.results.first?.detail.contains("one client at a time") == true)
        #expect(report.results.contains { $0.id == "version.required-first" && $0.outcome == .skip })
    }

    /// A server that gets several things wrong on purpose: answers VERSION with
    /// 0.1 and a reply longer than the request, replies to NO_REPLY writes, and
    /// accepts any region index.
    @Test func aBrokenServerIsReported() throws {
        let path = temporarySocketPath("broken")
        let listener = try UnixListener(path: path)
        spawnThread(name: "broken-server") {
            while let s = try? listener.accept() {
                spawnThread(name: "broken-conn") { BrokenServer.serve(s) }
            }
        }
        defer { listener.close() }
        let report = ConformanceSuite(socketPath: path, timeoutMs: 1000).run()
        let failed = Set(report.results.filter { $0.outcome == .fail }.map(\.id))
        #expect(failed.contains("version.major-minor"))
        #expect(failed.contains("version.reply-not-longer"))
        #expect(failed.contains("message.no-reply"))
        #expect(failed.contains("region.info-bad-index"))
        #expect(report.text.hasSuffix("skipped"))
        #expect(report.json.contains("\"failed\":\(report.count(.fail))"))
    }
}

enum BrokenServer {
    static func serve(_ s: MessageSocket) {
        while let m = try? s.receive(maxMessageSize: 1 << 21, maxFDs: 16) {
            m.closeFDs()
            let h = m.header
            switch h.command {
            case .version:
                let caps = VersionCapabilities(maxMsgFDs: 16, maxDataXferSize: 1 << 20, pgsizes: 4096, maxDMAMaps: 65535,
                                               writeMultiple: true, extensions: ["padding": String(repeating: "x", count: 300)])
                let p = VersionPayload(major: 0, minor: 1, capabilities: caps).encoded
                try? s.send(header: .reply(to: h, payloadSize: p.count), payload: p)
            case .deviceGetInfo:
                let p = DeviceInfo(argsz: 16, flags: [.pci, .reset], numRegions: 9, numIRQs: 5).encoded
                try? s.send(header: .reply(to: h, payloadSize: p.count), payload: p)
            case .deviceGetRegionInfo:
                let req = try? RegionInfoRequest(message: m.bytes)
                let p = RegionInfo(index: req?.index ?? 0, flags: [.read, .write], size: 256).encoded
                try? s.send(header: .reply(to: h, payloadSize: p.count), payload: p)
            case .regionWrite:
                // Replies even to NO_REPLY writes.
                let p = Array(m.payload.prefix(16))
                try? s.send(header: .reply(to: h, payloadSize: p.count), payload: p)
            default:
                try? s.send(header: .errorReply(to: h, errno: .EINVAL), payload: [])
            }
        }
        s.fd.close()
    }
}
