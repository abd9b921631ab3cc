import DeviceSpecs
@_spi(Server) import PCICore
import TestSupport
import Testing


/// Parses `json` as a spec named "t.json" and returns the error it raises.
func specError(_ json: String, sectionKeys: Set<String> = []) -> SpecError? {
    do {
        _ = try DeviceSpec.parse(Array(json.utf8), file: "t.json", sectionKeys: sectionKeys)
        return nil
    } catch {
        return error
    }
}

let base = #""name": "t", "ids": {"vendor": "0x1b36", "device": "0x1"}"#

@Suite struct DeviceSpecTests {
    @Test func theShippedCoreSpecsParse() throws {
        for name in ["default", "express-endpoint", "minimal"] {
            let s = try DeviceSpec.load(path: "\(repositoryRoot)/specs/\(name).json")
            #expect(s.name == name)
        }
        let d = try DeviceSpec.load(path: "\(repositoryRoot)/specs/default.json")
        #expect(d.configuration.identity.vendor == 0x1B36)
        #expect(d.configuration.identity.classCode == 0xFF0000)
        #expect(d.configuration.bars.map(\.size) == [4096, 1 << 20, 32])
        #expect(d.configuration.bars[1].kind == .memory64)
        #expect(d.configuration.msix?.tableOffset == 0x800)
        #expect(d.doorbell == DoorbellPlacement(bar: 0, offset: 0))
    }

    @Test func numbersTakeHexDecimalAndSizes() throws {
        let s = try DeviceSpec.parse(Array(#"{\#(base), "bars": [{"index": 0, "size": "4KiB"}, {"index": 1, "size": 256}, {"index": 2, "size": "0x100000"}, {"index": 3, "size": "2 MiB"}]}"#.utf8), file: "t.json")
        #expect(s.configuration.bars.map(\.size) == [4096, 256, 1 << 20, 2 << 20])
    }

    @Test(arguments: [
        (#"{\#(base), "bars": [{"index": 0, "size": 3000}]}"#, "bars[0].size", "not a power of two"),
        (#"{\#(base), "colour": "red"}"#, "colour", "unknown key"),
        (#"{\#(base), "bars": [{"index": 0, "size": 4096, "sise": 1}]}"#, "bars[0].sise", "unknown key"),
        (#"{"name": "t", "ids": {"vendor": "0x10000", "device": 1}}"#, "ids.vendor", "out of range"),
        (#"{"name": "t", "ids": {"device": 1}}"#, "ids", "missing required key 'vendor'"),
        (#"{"ids": {"vendor": 1, "device": 1}}"#, "", "missing required key 'name'"),
        (#"{\#(base), "bars": [{"index": 0, "size": 4096, "bits": 64}, {"index": 1, "size": 4096}]}"#, "bars[1]", "overlaps BAR0"),
        (#"{\#(base), "bars": [{"index": 6, "size": 4096}]}"#, "bars[0].index", "out of range"),
        (#"{\#(base), "bars": [{"index": 0, "size": 8, "kind": "io"}], "interrupts": {"intx": "E"}}"#, "interrupts.intx", "not A, B, C, D or none"),
        (#"{\#(base), "bars": [{"index": 0, "size": 256}], "registers": [{"bar": 0, "offset": "0x100", "size": 4}]}"#, "registers[0].offset", "outside BAR0"),
        (#"{\#(base), "bars": [{"index": 0, "size": 4096}], "registers": [{"bar": 0, "offset": 2, "size": 4}]}"#, "registers[0].offset", "naturally aligned"),
        (#"{\#(base), "bars": [{"index": 0, "size": 4096}], "interrupts": {"msix": {"vectors": 128, "bar": 0, "tableOffset": "0xc00"}}}"#, "interrupts.msix.tableOffset", "does not fit"),
        (#"{\#(base), "bars": [{"index": 0, "size": 4096, "backing": "ram"}], "interrupts": {"msix": {"vectors": 4, "bar": 0}}}"#, "interrupts.msix.bar", "register-backed"),
        (#"{\#(base), "extendedCapabilities": [{"id": "dsn", "serial": 1}]}"#, "extendedCapabilities[0]", "express"),
        (#"{\#(base), "capabilities": [{"id": "pm", "offset": "0x44"}, {"id": "vendor", "bytes": "0102", "offset": "0x44"}]}"#, "capability 0x9", "overlaps"),
        (#"{\#(base), "capabilities": [{"id": "pm", "offset": "0x30"}]}"#, "capability 0x1", "outside 0x40-0xFF"),
        (#"{\#(base), "capabilities": [{"id": "pm", "offset": "0xfc"}]}"#, "capability 0x1", "outside 0x40-0xFF"),
        (#"{\#(base), "capabilities": [{"id": "vendor", "bytes": "0g"}]}"#, "capabilities[0].bytes", "not a hex byte"),
        (#"{\#(base), "express": true, "extendedCapabilities": [{"id": "dsn", "serial": 1, "offset": "0x102"}]}"#, "extended capability 0x3", "not dword-aligned"),
        (#"{\#(base), "express": true, "extendedCapabilities": [{"id": "dsn", "serial": 1, "offset": "0xffc"}]}"#, "extended capability 0x3", "outside 0x100-0xFFF"),
        (#"{\#(base), "doorbell": {"bar": 0}}"#, "doorbell.bar", "not declared"),
        (#"{\#(base), "bars": [{"index": 0, "size": 32}], "doorbell": {"bar": 0, "offset": 0}}"#, "doorbell.offset", "do not fit"),
        (#"{\#(base), "bars": "none"}"#, "bars", "must be an array"),
        (#"{\#(base)"#, "", "not valid JSON"),
    ])
    func badSpecsNameFileFieldAndReason(json: String, field: String, reason: String) throws {
        let e = try #require(specError(json), "accepted: \(json)")
        #expect(e.file == "t.json")
        #expect(e.field == field, "\(e)")
        #expect(e.reason.contains(reason), "\(e)")
        #expect(e.description.hasPrefix("t.json:"))
    }

    @Test func variantSectionsAreAcceptedOnlyWhenAVariantClaimsThem() throws {
        let json = #"{\#(base), "igd": {"opregion": "default"}}"#
        #expect(specError(json)?.field == "igd")
        let s = try DeviceSpec.parse(Array(json.utf8), file: "t.json", sectionKeys: ["igd"])
        #expect(s.sections["igd"]?.path == "igd")
    }

    @Test func aMissingFileIsReported() {
        #expect(throws: SpecError.self) { _ = try DeviceSpec.load(path: "/nonexistent/spec.json") }
    }
}
