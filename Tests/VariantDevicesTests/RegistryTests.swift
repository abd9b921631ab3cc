import DeviceSpecs
@_spi(Server) import PCICore
import Testing
import VFIOUserProtocol
import VariantDevices

/// A driver for ranking tests: claims what `match` says, accepts or declines as told.
struct FakeDriver: VariantDriver {
    var name: String
    var match: PCIMatch
    var decline: String? = nil
    var summary: String { "test driver" }
    var idTable: [PCIMatch] { [match] }
    func probe(_ spec: DeviceSpec) -> ProbeResult { decline.map { .decline($0) } ?? .accept }
    func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice { try spec.buildCoreDevice() }
}

@Suite struct RegistryTests {
    static let plainIntelGPU = """
        {"name": "dgpu", "ids": {"vendor": "0x8086", "device": "0x56a0", "classCode": "0x030000"}}
        """

    @Test func everyPlatformVariantIsRegisteredBeforeGeneric() {
        let names = registry.drivers.map(\.name)
        for n in ["igd", "nvlink2-gpu", "nvlink2-npu", "nvgrace"] { #expect(names.contains(n)) }
        #expect(names.last == "generic")
        #expect(registry.sectionKeys.isSuperset(of: ["igd", "nvlink2", "nvgrace", "zpci", "deviceInfo"]))
    }

    @Test(arguments: [
        ("igd.json", "igd"), ("igd-extvbt.json", "igd"), ("nvlink2.json", "nvlink2-gpu"), ("nvlink2-npu.json", "nvlink2-npu"),
        ("nvgrace.json", "nvgrace"), ("nvgrace-gb200.json", "nvgrace"), ("pasid.json", "generic"), ("zpci.json", "generic"),
        ("default.json", "generic"),
    ])
    func specsBindTheirVariant(file: String, variant: String) throws {
        let spec = try loadSpec(file)
        let b = try registry.bind(spec)
        #expect(b.driver.name == variant, "\(file): \(b.reason); skipped \(b.skipped)")
        _ = try b.driver.build(spec)
    }

    @Test func theBindingSaysWhyItBoundAndWhyTheOthersDidNot() throws {
        let b = try registry.bind(try loadSpec("igd.json"))
        #expect(b.reason.contains("8086:* sub *:* class 0x030000/0xff0000"))
        #expect(b.reason.contains("probe accepted"))
        let nvgrace = try #require(b.skipped.first { $0.name == "nvgrace" })
        #expect(nvgrace.reason == "no id-table entry matches 8086:3e92 sub 8086:2212 class 0x030000")
    }

    @Test func igdMatchesEveryDisplayClassLikeTheKernel() throws {
        // vfio_pci_is_intel_display: vendor 0x8086 and base class 0x03, any subclass.
        for cls in ["0x030000", "0x038000", "0x030200"] {
            let spec = try parseSpec(Self.plainIntelGPU.replacing("0x030000", with: cls))
            let igd = try #require(registry.driver(named: "igd"))
            #expect(igd.idTable.contains { $0.matches(spec.configuration.identity) }, "\(cls)")
        }
        let nonDisplay = try parseSpec(Self.plainIntelGPU.replacing("0x030000", with: "0x040300"))
        #expect(try registry.bind(nonDisplay).skipped.contains { $0.name == "igd" && $0.reason.contains("no id-table entry") })
    }

    @Test func aDecliningProbeFallsThroughToGeneric() throws {
        // An Intel display device without an OpRegion (a discrete GPU): igd matches, declines.
        let b = try registry.bind(try parseSpec(Self.plainIntelGPU))
        #expect(b.driver.name == "generic")
        let igd = try #require(b.skipped.first { $0.name == "igd" })
        #expect(igd.reason.contains("matched 8086:* sub *:* class 0x030000/0xff0000 but the probe declined"))
        #expect(igd.reason.contains("no 'igd' section"))
    }

    @Test(arguments: [
        (#""igd": {"asls": "0x7a5f8018"}"#, "igd.opRegion is missing"),
        (#""igd": {"opRegion": {"generate": true}}"#, "igd.asls is missing"),
        (#""igd": {"asls": 0, "opRegion": {"generate": true}}"#, "igd.asls is 0x0"),
        (#""igd": {"asls": "0xffffffff", "opRegion": {"generate": true}}"#, "igd.asls is 0xffffffff"),
    ])
    func igdProbeReasons(section: String, reason: String) throws {
        let spec = try parseSpec(#"{"name": "i", "ids": {"vendor": "0x8086", "device": "0x3e92", "classCode": "0x030000"}, "# + section + "}")
        let b = try registry.bind(spec)
        #expect(b.driver.name == "generic")
        #expect(b.skipped.contains { $0.name == "igd" && $0.reason.contains(reason) }, "\(b.skipped)")
    }

    @Test func overrideForcesAVariantAndADecliningProbeIsAnErrorSayingWhy() throws {
        let spec = try parseSpec(Self.plainIntelGPU)
        // --variant generic binds whatever matched.
        #expect(try registry.bind(try loadSpec("igd.json"), override: "generic").driver.name == "generic")
        // Forcing a variant whose probe declines is an error with the probe's reason.
        expectSpecError(field: "--variant", reason: "variant 'igd' declined this spec: the spec has no 'igd' section") {
            _ = try registry.bind(spec, override: "igd")
        }
        expectSpecError(field: "--variant", reason: "variant 'nvgrace' declined this spec: no 'nvgrace' section") {
            _ = try registry.bind(spec, override: "nvgrace")
        }
        // The spec's own "variant" key does the same and is named as the field.
        let forced = try parseSpec(#"{"name": "f", "variant": "nvlink2-gpu", "ids": {"vendor": "0x10de", "device": "0x1db1"}}"#)
        expectSpecError(field: "variant", reason: "variant 'nvlink2-gpu' declined this spec: no 'nvlink2' section") {
            _ = try registry.bind(forced)
        }
        expectSpecError(field: "--variant", reason: "unknown variant 'nope'; known: igd") { _ = try registry.bind(spec, override: "nope") }
        // Like driver_override, forcing ignores the id table when the probe accepts.
        let b = try registry.bind(try loadSpec("igd.json"), override: "igd")
        #expect(b.driver.name == "igd" && b.reason == "forced by --variant")
    }

    @Test func theMostSpecificEntryWinsAndTiesKeepRegistrationOrder() throws {
        let spec = try parseSpec(#"{"name": "r", "ids": {"vendor": "0x1234", "device": "0x5678", "subsystemVendor": "0x1", "subsystem": "0x2", "classCode": "0x020000"}}"#)
        let byVendor = FakeDriver(name: "vendor", match: PCIMatch(vendor: 0x1234))
        let byDevice = FakeDriver(name: "device", match: PCIMatch(vendor: 0x1234, device: 0x5678))
        let byDeviceSub = FakeDriver(name: "sub", match: PCIMatch(vendor: 0x1234, device: 0x5678, subsystemVendor: 1, subsystem: 2))
        let byClass = FakeDriver(name: "class", match: PCIMatch(classCode: 0x020000, classMask: 0xFFFF00))
        let r = VariantRegistry(drivers: [byVendor, byClass, byDevice, byDeviceSub, GenericDriver()])
        #expect(try r.bind(spec).driver.name == "sub")
        // sub declines: the device entry is next, then vendor (32 bits) over class (16 bits).
        var declining = byDeviceSub
        declining.decline = "no firmware"
        let r2 = VariantRegistry(drivers: [byVendor, byClass, byDevice, declining, GenericDriver()])
        let b2 = try r2.bind(spec)
        #expect(b2.driver.name == "device")
        #expect(b2.skipped.map(\.name) == ["sub"])
        let r3 = VariantRegistry(drivers: [byClass, byVendor, GenericDriver()])
        #expect(try r3.bind(spec).driver.name == "vendor")
        // Equal specificity: the first registered wins, whatever the order of the table.
        let a = FakeDriver(name: "a", match: PCIMatch(vendor: 0x1234)), b = FakeDriver(name: "b", match: PCIMatch(vendor: 0x1234))
        #expect(try VariantRegistry(drivers: [a, b, GenericDriver()]).bind(spec).driver.name == "a")
        #expect(try VariantRegistry(drivers: [b, a, GenericDriver()]).bind(spec).driver.name == "b")
        // Everybody declines: generic, with every reason recorded.
        var da = a, db = b
        da.decline = "A says no"
        db.decline = "B says no"
        let all = try VariantRegistry(drivers: [da, db, GenericDriver()]).bind(spec)
        #expect(all.driver.name == "generic" && all.reason == "no variant claimed the device")
        #expect(all.skipped.map(\.reason).allSatisfy { $0.contains("says no") })
    }

    @Test func nvlink2AndNVGraceFallThroughWithoutTheirPlatformDescription() throws {
        let gpu = try parseSpec(#"{"name": "v100", "ids": {"vendor": "0x10de", "device": "0x1db1", "classCode": "0x030200"}}"#)
        let b = try registry.bind(gpu)
        #expect(b.driver.name == "generic")
        #expect(b.skipped.contains { $0.name == "nvlink2-gpu" && $0.reason.contains("does not describe an NPU link") })
        let npu = try parseSpec(#"{"name": "npu", "ids": {"vendor": "0x1014", "device": "0x04ea"}, "nvlink2": {"tgt": 1}}"#)
        let bn = try registry.bind(npu)
        #expect(bn.driver.name == "generic")
        #expect(bn.skipped.contains { $0.name == "nvlink2-npu" && $0.reason.contains("nvlink2.linkSpeed is missing") })
        let gh = try parseSpec(#"{"name": "gh", "ids": {"vendor": "0x10de", "device": "0x2342"}, "nvgrace": {"memBase": 0, "memSize": 0}}"#)
        let bg = try registry.bind(gh)
        #expect(bg.driver.name == "generic")
        #expect(bg.skipped.contains { $0.name == "nvgrace" && $0.reason.contains("C2C link is down") })
    }

    @Test func sectionsOfUnknownVariantsAreStillErrors() {
        expectSpecError(field: "igdx", reason: "unknown key") {
            _ = try parseSpec(#"{"name": "x", "ids": {"vendor": 1, "device": 2}, "igdx": {}}"#)
        }
    }
}
