import Glibc
@_spi(Server) import PCICore
import TestSupport
import Testing
import VFIOUserClient
import VFIOUserControl
import VFIOUserProtocol
import VFIOUserTransport
import VariantDevices

/// Peek and poke over the control socket: through the device model (a guest's path)
/// or raw, and every refusal with its reason.
@Suite struct PokePeekTests {
    @Test func peekAndPokeGoThroughTheModelOrRaw() throws {
        let rig = try Rig(tag: "peek")
        defer { rig.stop() }
        let ctl = try rig.ctl()
        defer { ctl.close() }

        // Config space: the ids the spec gives.
        var r = try ctl.ok("peek") { $0.region = RegionRef(7); $0.offset = 0; $0.length = 4 }
        #expect(r.value == Num(0x0005_1b36))
        #expect(r.data == "361b0500")

        // BAR0 does not decode before the guest enables memory space; raw reaches the register file anyway.
        r = try ctl.req("peek") { $0.region = RegionRef(0); $0.offset = 0x100 }
        #expect(!r.ok && r.error == "device-error" && r.reason?.contains("EIO") == true, "\(r)")
        r = try ctl.ok("peek") { $0.region = RegionRef(0); $0.offset = 0x100; $0.raw = true }
        #expect(r.value == Num(0xcafe_f00d))

        let vmm = try rig.vmm()
        defer { vmm.close() }
        r = try ctl.ok("peek") { $0.region = RegionRef(0); $0.offset = 0x100 }
        #expect(r.value == Num(0xcafe_f00d))

        // A write through the model is what the guest reads back.
        _ = try ctl.ok("poke") { $0.region = RegionRef(0); $0.offset = 0x104; $0.value = 0x1122_3344; $0.length = 4 }
        #expect(try vmm.read32(region: 0, offset: 0x104) == 0x1122_3344)

        // The write mask applies through the model, not raw.
        _ = try ctl.ok("poke") { $0.region = RegionRef(0); $0.offset = 0x108; $0.value = 0xabcd; $0.length = 2 }
        #expect(try vmm.read(region: 0, offset: 0x108, count: 2) == [0xcd, 0x12], "only the low byte is writable")
        _ = try ctl.ok("poke") { $0.region = RegionRef(0); $0.offset = 0x108; $0.value = 0xffff; $0.length = 2; $0.raw = true }
        #expect(try vmm.read(region: 0, offset: 0x108, count: 2) == [0xff, 0xff])

        // The doorbell model's scratch register, through the model.
        _ = try ctl.ok("poke") { $0.region = RegionRef(0); $0.offset = 0x08; $0.value = 0x600d_cafe }
        #expect(try vmm.read32(region: 0, offset: 0x08) == 0x600d_cafe)
        // Raw cannot reach a model's own state: refused, with the range it serves.
        r = try ctl.req("peek") { $0.region = RegionRef(0); $0.offset = 0x08; $0.raw = true }
        #expect(!r.ok && r.error == "raw-unsupported" && r.reason?.contains("[0x0, 0x40)") == true, "\(r)")

        // RAM BAR, both ways.
        _ = try ctl.ok("poke") { $0.region = RegionRef(2); $0.offset = 0x10; $0.data = "deadbeef0102" }
        #expect(try vmm.read(region: 2, offset: 0x10, count: 6) == [0xde, 0xad, 0xbe, 0xef, 1, 2])
        r = try ctl.ok("peek") { $0.region = RegionRef(2); $0.offset = 0x10; $0.length = 6; $0.raw = true }
        #expect(r.data == "deadbeef0102")

        // Config raw poke: bypasses the read-only policy (the subsystem vendor id).
        _ = try ctl.ok("poke") { $0.region = RegionRef(7); $0.offset = 0x2c; $0.value = 0xbeef; $0.length = 2; $0.raw = true }
        #expect(try vmm.readConfig16(0x2c) == 0xbeef)
        // ... and through the model a read-only register does not change.
        _ = try ctl.ok("poke") { $0.region = RegionRef(7); $0.offset = 0x00; $0.value = 0x1234; $0.length = 2 }
        #expect(try vmm.readConfig16(0x00) == 0x1b36)
    }

    @Test func badRequestsAreRefusedWithAReasonAndTheConnectionGoesOn() throws {
        let rig = try Rig(tag: "badreq")
        defer { rig.stop() }
        let ctl = try rig.ctl()
        defer { ctl.close() }

        // Not JSON, and JSON that is not a request.
        #expect(ctl.send(line: "{not json"))
        var r = try ctl.readReply()
        #expect(!r.ok && r.error == "bad-json")
        #expect(ctl.send(line: "{\"id\": 5}"))
        r = try ctl.readReply()
        #expect(!r.ok && r.error == "bad-json" && r.id == 5 && r.reason?.contains("op") == true, "\(r)")
        #expect(ctl.send(line: "{\"op\": \"peek\", \"offset\": \"zz\", \"id\": 6}"))
        r = try ctl.readReply()
        #expect(!r.ok && r.error == "bad-json" && r.reason?.contains("offset") == true, "\(r)")

        r = try ctl.req("frobnicate")
        #expect(!r.ok && r.error == "unknown-op")
        r = try ctl.req("peek") { $0.device = "nonesuch"; $0.region = RegionRef(7); $0.offset = 0 }
        #expect(!r.ok && r.error == "unknown-device" && r.reason?.contains("default") == true, "\(r)")
        r = try ctl.req("peek") { $0.region = RegionRef(1); $0.offset = 0 }
        #expect(!r.ok && r.error == "unknown-region", "BAR1 is not implemented")

        // Out of range: at the end, straddling it, and lengths.
        r = try ctl.req("peek") { $0.region = RegionRef(0); $0.offset = 0x1000; $0.raw = true }
        #expect(!r.ok && r.error == "out-of-range" && r.reason?.contains("4096 bytes") == true, "\(r)")
        r = try ctl.req("poke") { $0.region = RegionRef(7); $0.offset = 0xfe; $0.value = 1; $0.length = 4 }
        #expect(!r.ok && r.error == "out-of-range" && r.reason?.contains("[0xfe, 0x102)") == true, "\(r)")
        r = try ctl.req("peek") { $0.region = RegionRef(2); $0.offset = 0; $0.length = 0 }
        #expect(!r.ok && r.error == "out-of-range")
        r = try ctl.req("peek") { $0.region = RegionRef(0) }
        #expect(!r.ok && r.error == "bad-request" && r.reason?.contains("offset") == true)
        r = try ctl.req("poke") { $0.region = RegionRef(0); $0.offset = 0x104; $0.value = 0x1_0000; $0.length = 2 }
        #expect(!r.ok && r.error == "bad-request" && r.reason?.contains("does not fit") == true)
        r = try ctl.req("fault-remove") { $0.faultId = 99 }
        #expect(!r.ok && r.error == "not-found")
        r = try ctl.req("fault-add") { $0.fault = fault(.delay) }
        #expect(!r.ok && r.error == "bad-fault" && r.reason?.contains("fault.ms") == true, "\(r)")

        // Still answering, with the id echoed.
        r = try ctl.ok("devices") { $0.id = 77 }
        #expect(r.id == 77 && r.devices?.first?.name == "default")
        r = try ctl.ok("info") { $0.device = "default" }
        #expect(r.devices?.first?.regions.map(\.region) == [RegionRef(0), RegionRef(2), RegionRef(4), RegionRef(7)])
        #expect(r.devices?.first?.irqs["msix"] == 8 && r.devices?.first?.workHeld == false)

        // A line longer than 1 MiB: refused, and the connection closes.
        let big = try rig.ctl()
        defer { big.close() }
        #expect(big.send(line: String(repeating: " ", count: LineSocket.maxLine + 65536)))
        r = try big.readReply()
        #expect(!r.ok && r.error == "line-too-long")
        #expect(throws: (any Error).self) { _ = try big.readLine(timeoutMs: 5000) }
    }

    @Test func devicesAreAddressedByNameWhenAProcessServesSeveral() throws {
        let a = try Rig(tag: "multia")
        defer { a.stop() }
        let registry = VariantRegistry.standard
        let spec = try registry.loadSpec(path: repositoryRoot + "/specs/minimal.json")
        let other = try registry.bind(spec).driver.build(spec)
        let b = ControlledDevice(name: other.configuration.name, device: other)
        let path = a.dir + "/multi.sock"
        let control = try ControlServer(path: path, devices: [a.controlled, b])
        control.start()
        defer { control.stop(); unlink(path) }
        let ctl = try ControlClient(path: path)
        defer { ctl.close() }
        var r = try ctl.req("peek") { $0.region = RegionRef(7); $0.offset = 0 }
        #expect(!r.ok && r.error == "device-required", "\(r)")
        r = try ctl.ok("devices")
        #expect(r.devices?.map(\.name) == ["default", other.configuration.name])
        r = try ctl.ok("peek") { $0.device = other.configuration.name; $0.region = RegionRef(7); $0.offset = 0; $0.length = 2 }
        #expect(r.value == Num(UInt64(other.configuration.identity.vendor)))
        r = try ctl.ok("peek") { $0.device = "default"; $0.region = RegionRef(7); $0.offset = 0; $0.length = 2 }
        #expect(r.data == "361b")
    }
}
