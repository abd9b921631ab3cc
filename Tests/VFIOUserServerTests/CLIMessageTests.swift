import Glibc
import Testing
import VFIOUserClient
import VFIOUserProtocol

/// What `vfu` says when something is wrong, or when it reports: every message names
/// its cause, in the terms of what happened.
@Suite struct CLIMessageTests {
    /// Runs `vfu ARGS` to completion: its status, stdout and stderr.
    func vfu(_ args: [String], _ dir: String, _ tag: String) throws -> (ChildStatus?, String, String) {
        let p = try VFUProcess(arguments: args, stderrPath: "\(dir)/\(tag).err")
        let status = p.wait(timeoutMs: 120_000)
        if status == nil { p.kill() }
        return (status, readWholeFile(p.stderrPath + ".out"), p.stderr)
    }

    @Test func versionNamesTheReleaseAndTheProtocol() throws {
        let dir = makeTempDir("cli-version")
        defer { removeTempDir(dir) }
        let (s, out, _) = try vfu(["--version"], dir, "v")
        #expect(s == .exited(0))
        #expect(out.hasPrefix("vfu 0.") && out.contains("vfio-user protocol 0.1"), "\(out)")
    }

    @Test func specSyntaxErrorsAndMissingFilesSayWhereAndWhy() throws {
        let dir = makeTempDir("cli-spec")
        defer { removeTempDir(dir) }
        writeWholeFile("\(dir)/comma.json", "{\n  \"name\": \"t\",\n  \"ids\": {\"vendor\": 1, \"device\": 2},\n}\n")
        let (s1, _, e1) = try vfu(["check-spec", "\(dir)/comma.json"], dir, "comma")
        #expect(s1 == .exited(2))
        #expect(e1.contains("\(dir)/comma.json:3:36: not valid JSON: trailing comma before '}'"), "\(e1)")
        // serve says the same, before it listens.
        let (s2, _, e2) = try vfu(["serve", "\(dir)/comma.json", "--socket", "\(dir)/s.sock"], dir, "serve")
        #expect(s2 == .exited(2))
        #expect(e2.contains("comma.json:3:36: not valid JSON: trailing comma"), "\(e2)")
        #expect(!fileExists("\(dir)/s.sock"))
        let (s3, _, e3) = try vfu(["check-spec", "\(dir)/missing.json"], dir, "missing")
        #expect(s3 == .exited(2))
        #expect(e3.contains("\(dir)/missing.json: cannot read the file: No such file or directory"), "\(e3)")
    }

    /// The declining variants are debug detail; the one that bound is info.
    @Test func serveLogsTheBoundVariantAtInfoAndTheOthersAtDebug() throws {
        let dir = makeTempDir("cli-variants")
        defer { removeTempDir(dir) }
        for (level, wantSkipped) in [("info", false), ("debug", true)] {
            let sock = "\(dir)/\(level).sock"
            let p = try VFUProcess.serve(spec: specPath("minimal.json"), socket: sock, extra: ["--log-level", level])
            p.signal(SIGTERM)
            #expect(p.wait(timeoutMs: 20_000) == .exited(0))
            let log = p.stderr
            #expect(log.contains("variant generic bound (no variant claimed the device)"), "\(log)")
            #expect(log.contains("not bound") == wantSkipped, "\(level): \(log)")
        }
    }

    @Test func benchHelpDescribesTheSeparateBaselineProcess() throws {
        let dir = makeTempDir("cli-bench-help")
        defer { removeTempDir(dir) }
        let (s, out, _) = try vfu(["bench", "--help"], dir, "h")
        #expect(s == .exited(0))
        #expect(out.contains("separate process") && !out.contains("in this process"), "\(out)")
    }

    // MARK: migrate

    /// A device without migration support, a differently sized device, the same server
    /// twice and a missing source file are each refused naming the cause, and leave
    /// both ends as they were (RUNNING, never RESUMING or ERROR).
    @Test func migrateRefusalsNameTheirCauseAndTouchNothing() throws {
        let dir = makeTempDir("cli-migrate")
        defer { removeTempDir(dir) }
        let big = readWholeFile(specPath("migratable-vf.json")).replacing("\"64MiB\"", with: "\"128MiB\"")
        writeWholeFile("\(dir)/big.json", big)
        let servers = try [("plain", specPath("default.json")), ("vf", specPath("migratable-vf.json")), ("big", "\(dir)/big.json")]
            .map { try VFUProcess.serve(spec: $0.1, socket: "\(dir)/\($0.0).sock") }
        defer { servers.forEach { $0.kill() } }
        let vf = try makeClient("\(dir)/vf.sock"), bigVF = try makeClient("\(dir)/big.sock")
        defer { vf.close(); bigVF.close() }

        let (s1, _, e1) = try vfu(["migrate", "--from", "\(dir)/plain.sock", "--to", "\(dir)/vf.sock"], dir, "plain")
        #expect(s1 == .exited(1))
        #expect(e1.contains("the source device cannot migrate: it does not offer VFIO migration"), "\(e1)")
        #expect(try vf.migrationState() == .running)

        let (s2, _, e2) = try vfu(["migrate", "--from", "\(dir)/vf.sock", "--to", "\(dir)/big.sock"], dir, "sizes")
        #expect(s2 == .exited(1))
        #expect(e2.contains("the destination is a different device: BAR2 is 64 MiB on the source and 128 MiB on the destination"), "\(e2)")
        #expect(try vf.migrationState() == .running && bigVF.migrationState() == .running)

        // The same socket by another name is still the same server.
        let (s3, _, e3) = try vfu(["migrate", "--from", "\(dir)/vf.sock", "--to", "\(dir)/../\(lastComponent(dir))/vf.sock"], dir, "same")
        #expect(s3 != .exited(0))
        #expect(e3.contains("--from and --to are the same server"), "\(e3)")
        #expect(try vf.migrationState() == .running)

        let (s4, _, e4) = try vfu(["migrate", "--from-file", "\(dir)/nope.bin", "--to", "\(dir)/vf.sock"], dir, "nofile")
        #expect(s4 == .exited(1))
        #expect(e4.contains("cannot open \(dir)/nope.bin: No such file or directory"), "\(e4)")
        #expect(try vf.migrationState() == .running)
    }

    /// A save reports no downtime (nothing resumes), and a few KiB in a few ms get no
    /// MiB/s rate; a load says what it loaded.
    @Test func migrateToAndFromAFileReportsInItsOwnTerms() throws {
        let dir = makeTempDir("cli-migrate-file")
        defer { removeTempDir(dir) }
        let servers = try ["a", "b"].map { try VFUProcess.serve(spec: specPath("migratable-vf.json"), socket: "\(dir)/\($0).sock") }
        defer { servers.forEach { $0.kill() } }
        let keep = try makeClient("\(dir)/b.sock")
        defer { keep.close() }
        let file = "\(dir)/dev.vfumig"
        let (s1, out1, e1) = try vfu(["migrate", "--from", "\(dir)/a.sock", "--to-file", file], dir, "save")
        #expect(s1 == .exited(0), "\(e1)")
        #expect(out1.hasPrefix("saved to \(file): 1 pre-copy round(s)"), "\(out1)")
        #expect(out1.contains("the source is left stopped") && !out1.contains("downtime"), "\(out1)")
        // Pre-copy took the RAM; the stop-copy is a few KiB: bytes and time, no rate.
        let stop = out1.split(separator: ",").first { $0.contains("stop-copy") }.map(String.init) ?? ""
        #expect(stop.contains(" KiB in ") && !stop.contains("MiB/s"), "\(out1)")
        let (s2, out2, e2) = try vfu(["migrate", "--from-file", file, "--to", "\(dir)/b.sock"], dir, "load")
        #expect(s2 == .exited(0), "\(e2)")
        #expect(out2.hasPrefix("loaded 64.0") && out2.contains("from \(file)") && out2.contains("the destination is running"), "\(out2)")
        #expect(!out2.contains("downtime"), "\(out2)")
    }

    private func lastComponent(_ path: String) -> String { String(path.split(separator: "/").last ?? "") }
}
