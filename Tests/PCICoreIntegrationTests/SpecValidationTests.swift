import DeviceSpecs
@_spi(Server) import PCICore
import Testing

/// Capability layout errors from JSON specs: each names the field and the reason.
@Suite struct SpecValidationTests {
    func parse(_ json: String) -> SpecError? {
        do throws(SpecError) {
            _ = try DeviceSpec.parse(Array(json.utf8), file: "test.json")
            return nil
        } catch {
            return error
        }
    }

    func spec(express: Bool = false, capabilities: String = "[]", extended: String? = nil, msix: String? = nil) -> String {
        var s = #"{"name": "t", "ids": {"vendor": "0x1b36", "device": "0x1"}, "#
        if express { s += #""express": true, "# }
        s += #""bars": [{"index": 0, "size": "4KiB"}], "#
        if let msix { s += #""interrupts": {"msix": \#(msix)}, "# }
        if let extended { s += #""extendedCapabilities": \#(extended), "# }
        s += #""capabilities": \#(capabilities)}"#
        return s
    }

    @Test func aValidSpecParses() {
        #expect(parse(spec(express: true, capabilities: #"[{"id": "pm"}, {"id": "vendor", "bytes": "0102"}]"#,
                           extended: #"[{"id": "dsn", "serial": 1}]"#)) == nil)
    }

    @Test func overlappingCapabilitiesAreRejected() throws {
        let e = try #require(parse(spec(capabilities: #"[{"id": "pm", "offset": "0x40"}, {"id": "vendor", "bytes": "0102", "offset": "0x44"}]"#)))
        #expect(e.file == "test.json")
        #expect(e.field.contains("capability 0x9"), "names the capability: \(e)")
        #expect(e.reason.contains("0x44") && e.reason.contains("overlaps"), "\(e)")

        let x = try #require(parse(spec(express: true, extended: #"[{"id": "dsn", "serial": 1, "offset": "0x100"}, {"id": "vsec", "offset": "0x108"}]"#)))
        #expect(x.field.contains("extended capability 0xb"), "\(x)")
        #expect(x.reason.contains("overlaps"), "\(x)")

        // Explicit placement of MSI-X over PM.
        let m = try #require(parse(spec(capabilities: #"[{"id": "pm", "offset": "0x40"}]"#,
                                        msix: #"{"vectors": 1, "bar": 0, "tableOffset": "0x800", "offset": "0x44"}"#)))
        #expect(m.reason.contains("overlaps"), "\(m)")
    }

    @Test func capabilitiesThatDoNotFitAreRejected() throws {
        // An extended capability bigger than all of extended config space.
        let big = String(repeating: "ab", count: 4000)
        let e = try #require(parse(spec(express: true, extended: #"[{"id": "vsec", "bytes": "\#(big)"}]"#)))
        #expect(e.field.contains("extended capability 0xb"), "\(e)")
        #expect(e.reason.contains("does not fit") && e.reason.contains("0x100-0xFFF"), "\(e)")
        // Standard capabilities that together overflow 0x40-0xFF.
        let half = String(repeating: "cd", count: 0x60)
        let f = try #require(parse(spec(capabilities: #"[{"id": "vendor", "bytes": "\#(half)"}, {"id": "vendor", "bytes": "\#(half)"}]"#)))
        #expect(f.field.contains("capability 0x9"), "\(f)")
        #expect(f.reason.contains("no room left") && f.reason.contains("0x40-0xFF"), "\(f)")
        // The MSI-X table must fit in its BAR.
        let t = try #require(parse(spec(msix: #"{"vectors": 64, "bar": 0, "tableOffset": "0xc00"}"#)))
        #expect(t.field.contains("interrupts.msix"), "\(t)")
        #expect(t.reason.contains("does not fit in BAR0"), "\(t)")
    }

    @Test func capabilitiesOutsideConfigSpaceAreRejected() throws {
        // Runs past 0xFF.
        let e = try #require(parse(spec(capabilities: #"[{"id": "vendor", "bytes": "00112233445566778899", "offset": "0xf8"}]"#)))
        #expect(e.field.contains("capability 0x9"), "\(e)")
        #expect(e.reason.contains("0xf8") && e.reason.contains("outside 0x40-0xFF"), "\(e)")
        // Inside the header.
        let h = try #require(parse(spec(capabilities: #"[{"id": "pm", "offset": "0x20"}]"#)))
        #expect(h.field.contains("capability 0x1"), "\(h)")
        #expect(h.reason.contains("outside 0x40-0xFF"), "\(h)")
        // An extended capability in standard config space, or past 0xFFF.
        let s = try #require(parse(spec(express: true, extended: #"[{"id": "dsn", "serial": 1, "offset": "0x80"}]"#)))
        #expect(s.reason.contains("outside 0x100-0xFFF"), "\(s)")
        let p = try #require(parse(spec(express: true, extended: #"[{"id": "dsn", "serial": 1, "offset": "0xffc"}]"#)))
        #expect(p.reason.contains("outside 0x100-0xFFF"), "\(p)")
        // Misaligned.
        let a = try #require(parse(spec(capabilities: #"[{"id": "pm", "offset": "0x42"}]"#)))
        #expect(a.reason.contains("not dword-aligned"), "\(a)")
        // Extended capabilities without PCI Express.
        let n = try #require(parse(spec(extended: #"[{"id": "dsn", "serial": 1}]"#)))
        #expect(n.reason.contains("express"), "\(n)")
    }
}
