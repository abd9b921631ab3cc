import Foundation
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient

/// Whether LspciTests run: lspci is there, or a missing lspci may not be skipped.
let lspciRunnable = FileManager.default.isExecutableFile(atPath: "/usr/bin/lspci")
    || ProcessInfo.processInfo.environment["VFU_ALLOW_MISSING_TOOLS"] != "1"

/// pciutils decodes our config space without complaint: the dump `vfu inspect
/// --dump` prints (`ConfigSpaceReport.dump` of config read over the socket) fed to
/// `lspci -vvv -F`.
///
/// Without pciutils these tests fail, saying what to install, except under
/// `VFU_ALLOW_MISSING_TOOLS=1` (which `scripts/test.sh` sets when it cannot install
/// pciutils itself, after saying so), where they are skipped with that reason.
@Suite(.enabled(if: lspciRunnable, "lspci is missing: install pciutils (apt-get install pciutils)"))
struct LspciTests {
    static let lspci = "/usr/bin/lspci"

    /// Runs lspci on `dump` and returns its standard output.
    func decode(_ dump: String) throws -> String {
        guard FileManager.default.isExecutableFile(atPath: Self.lspci) else {
            throw TestFailure("\(Self.lspci) is missing: install pciutils (apt-get install pciutils) to run this test")
        }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("vfu-lspci-\(UUID().uuidString).dump")
        try dump.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.lspci)
        p.arguments = ["-F", file.path, "-vvv", "-nn"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice   // "Unable to load libkmod resources" in containers
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "lspci exit status")
        return String(decoding: data, as: UTF8.self)
    }

    /// Serves the spec, assigns BAR addresses as firmware would, and returns lspci's decoding.
    func lspci(spec: String) throws -> String {
        let s = try Served(spec: spec)
        var i = 0
        while i < 6 {
            let o = UInt64(0x10 + 4 * i)
            try s.set32(o, 0xFFFF_FFFF)
            let sized = try s.cfg32(o)
            if sized != 0 {
                try s.set32(o, sized & 1 != 0 ? 0xC000 + UInt32(0x100 * i) : 0xE000_0000 + UInt32(i) << 24)
                if sized & 0x7 == 0x4 { try s.set32(o + 4, 0); i += 1 }
            }
            i += 1
        }
        try s.set16(0x04, 0x0007)
        let dump = ConfigSpaceReport.dump(try s.wholeConfig())
        return try decode(dump)
    }

    func expectClean(_ text: String) {
        #expect(!text.isEmpty)
        for line in text.split(separator: "\n") {
            // lspci ends a vendor-specific capability with "<?>" because only the vendor
            // knows its layout; that is how it decodes every VSEC, not a complaint.
            let vendorSpecific = line.contains("Vendor Specific Information")
            #expect(vendorSpecific || !line.contains("<?>"), "lspci could not decode: \(line)")
            for bad in ["Unknown", "unknown", "corrupted", "<chain", "broken", "<unavailable>", "Capability ID",
                        "] #", "<access denied>", "looped"] {
                #expect(!line.contains(bad), "lspci complained (\(bad)): \(line)")
            }
        }
    }

    func expectOnce(_ text: String, _ needle: String) {
        let n = text.components(separatedBy: needle).count - 1
        #expect(n == 1, "'\(needle)' appears \(n) times in:\n\(text)")
    }

    @Test func defaultSpecDecodes() throws {
        let text = try lspci(spec: "default")
        expectClean(text)
        #expect(text.contains("[1b36:0005]"))
        #expect(text.contains("Subsystem: Red Hat, Inc.") || text.contains("[1af4:1100]"))
        #expect(text.contains("Interrupt: pin A"))
        #expect(text.contains("Region 0: Memory at e0000000 (32-bit, non-prefetchable)"), "\(text)")
        #expect(text.contains("Region 2: Memory at e2000000 (64-bit, prefetchable)"), "\(text)")
        #expect(text.contains("Region 4: I/O ports at c400"), "\(text)")
        for cap in ["] Power Management version 3", "] MSI: Enable- Count=1/4 Maskable+ 64bit+",
                    "] MSI-X: Enable- Count=8 Masked-", "] Vendor Specific Information: Len=07"] {
            expectOnce(text, cap)
        }
        #expect(text.contains("Vector table: BAR=0 offset=00000800"))
        #expect(text.contains("PBA: BAR=0 offset=00000c00"))
    }

    @Test func expressEndpointSpecDecodes() throws {
        let text = try lspci(spec: "express-endpoint")
        expectClean(text)
        #expect(text.contains("[1b36:0010]"))
        #expect(text.contains("Region 0: Memory at e0000000 (64-bit, non-prefetchable)"), "\(text)")
        #expect(text.contains("Region 2: Memory at e2000000 (64-bit, prefetchable)"), "\(text)")
        for cap in ["] Power Management version 3", "] MSI-X: Enable- Count=16 Masked-", "] Express (v2) Endpoint",
                    "[100 v1] Device Serial Number 01-23-45-67-89-ab-cd-ef",
                    "] Vendor Specific Information: ID=0001 Rev=1 Len=00c"] {
            expectOnce(text, cap)
        }
        #expect(text.contains("FLReset+"), "DevCap FLR")
        #expect(text.contains("AtomicOpsCap: 32bit+ 64bit+ 128bitCAS-"), "\(text)")
        #expect(text.contains("Speed 16GT/s, Width x8"))
    }
}
