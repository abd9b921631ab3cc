import DeviceSpecs
@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VariantDevices

/// zPCI and AtomicOps device-info capabilities through our opt-in extension, and the
/// standard 16-byte GET_INFO for everyone else.
@Suite struct DeviceInfoCapsTests {
    /// The zpci.json chain as the kernel lays it out, built here byte by byte.
    static func expectedZPCIReply() -> [UInt8] {
        var w = WireWriter()
        w.u32(208); w.u32(0x83); w.u32(9); w.u32(5); w.u32(24); w.u32(0)         // vfio_device_info: PCI|RESET|CAPS
        w.u16(1); w.u16(2); w.u32(64)                                              // @24 BASE v2, 40 bytes
        w.u64(0x10_0000); w.u64(0xFF_FFFF_FFFF); w.u16(0x100); w.u16(1); w.u16(0x30); w.u8(0x0A); w.u8(2)
        w.u32(0x1234); w.u32(0)
        w.u16(2); w.u16(2); w.u32(112)                                             // @64 GROUP v2, 48 bytes
        w.u64(.max); w.u64(0xFE00_0000_0000_0000); w.u64(1); w.u16(0x64); w.u16(64); w.u16(0x800); w.u8(3); w.u8(0)
        w.u16(0x200); w.zeros(6)
        w.u16(3); w.u16(1); w.u32(192)                                             // @112 UTIL v1, 76 → 80 bytes
        w.u32(64)
        // "SWIFT-VFIO-USER ZPCI" in EBCDIC (code page 037), space (0x40) padded to 64.
        let ebcdic: [UInt8] = [0xE2, 0xE6, 0xC9, 0xC6, 0xE3, 0x60, 0xE5, 0xC6, 0xC9, 0xD6, 0x60, 0xE4, 0xE2, 0xC5, 0xD9,
                               0x40, 0xE9, 0xD7, 0xC3, 0xC9]
        w.append(ebcdic); w.append([UInt8](repeating: 0x40, count: 64 - ebcdic.count)); w.zeros(4)
        w.u16(4); w.u16(1); w.u32(0)                                               // @192 PFIP v1, 16 bytes
        w.u32(4); w.append([1, 2, 3, 4])
        return w.bytes
    }

    @Test func anExtensionClientGetsTheZPCIChainByteForByte() throws {
        let s = try Served(try loadSpec("zpci.json"), extensions: true)
        #expect(s.client.hasExtension("device-info-caps"))
        // Too small: the full size in argsz, CAPS clear and cap_offset 0 (QEMU-safe truncation).
        let short = try s.client.call(.deviceGetInfo, payload: DeviceInfo(argsz: 24, capOffset: 0).encoded)
        #expect(short.count == 24)
        #expect(short.le32(at: 0) == 208 && short.le32(at: 4) == 0x3 && short.le32(at: 16) == 0)
        // Big enough: the kernel's 24-byte struct, then BASE, GROUP, UTIL, PFIP at 24, 64, 112, 192.
        let full = try s.client.call(.deviceGetInfo, payload: DeviceInfo(argsz: 208, capOffset: 0).encoded)
        #expect(full == Self.expectedZPCIReply())
        // The client's helper retries with the size it is told and decodes the typed layouts.
        let info = try s.client.deviceInfoWithCapabilities()
        #expect(info.flags == [.pci, .reset, .caps] && info.capOffset == 24 && info.argsz == 208)
        #expect(info.capabilities.count == 4)
        let base = try #require(ZPCIBase(info.capabilities[0]))
        #expect(base == ZPCIBase(startDMA: 0x10_0000, endDMA: 0xFF_FFFF_FFFF, pchid: 0x100, vfn: 1, fmbLength: 0x30, pft: 0x0A, gid: 2, fh: 0x1234))
        let group = try #require(ZPCIGroup(info.capabilities[1]))
        #expect(group == ZPCIGroup(dasm: .max, msiAddress: 0xFE00_0000_0000_0000, flags: ZPCIGroup.flagRefresh, mui: 0x64, noi: 64,
                                   maxstbl: 0x800, version: 3, imaxstbl: 0x200))
        let util = try #require(ZPCISizedBytes(info.capabilities[2]))
        #expect(util.id == DeviceInfoCapabilityID.zpciUtil && util.bytes.count == 64 && util.bytes.prefix(5) == [0xE2, 0xE6, 0xC9, 0xC6, 0xE3])
        let pfip = try #require(ZPCISizedBytes(info.capabilities[3]))
        #expect(pfip.id == DeviceInfoCapabilityID.zpciPFIP && pfip.bytes == [1, 2, 3, 4])
        // What the device holds is what went out.
        #expect(s.device.deviceInfoCapabilities == info.capabilities.map { DeviceInfoCapability(trimming: $0) })
    }

    @Test func aStandardClientGetsTheStandard16ByteReply() throws {
        let s = try Served(try loadSpec("zpci.json"), extensions: false)
        #expect(!s.client.hasExtension("device-info-caps"))
        for argsz: UInt32 in [16, 24, 4096] {
            let raw = try s.client.call(.deviceGetInfo, payload: DeviceInfo(argsz: argsz).encoded)
            #expect(raw.count == 16)
            #expect(raw.le32(at: 0) == 16 && raw.le32(at: 4) == 0x3 && raw.le32(at: 8) == 9 && raw.le32(at: 12) == 5)
        }
        // An extension client that asks with argsz 16 (as QEMU does) gets the same.
        let e = try s.connect(extensions: true)
        defer { e.close() }
        #expect(try e.call(.deviceGetInfo, payload: DeviceInfo(argsz: 16).encoded).count == 16)
    }

    @Test func nvgraceReportsItsAtomicCompletersAsPCI_ATOMIC_COMP() throws {
        let s = try Served(try loadSpec("nvgrace-gb200.json"), extensions: true)
        let raw = try s.client.call(.deviceGetInfo, payload: DeviceInfo(argsz: 64, capOffset: 0).encoded)
        var w = WireWriter()
        w.u32(40); w.u32(0x83); w.u32(9); w.u32(5); w.u32(24); w.u32(0)
        w.u16(5); w.u16(1); w.u32(0); w.u32(0x7); w.u32(0)                         // COMP32|COMP64|COMP128
        #expect(raw == w.bytes)
        let gh = try Served(try loadSpec("nvgrace.json"), extensions: true)
        #expect(try gh.client.deviceInfoWithCapabilities().capabilities == [.pciAtomicComp(flags: 0x3)])
        // A standard client on the same device: 16 bytes, no CAPS.
        let std = try gh.connect(extensions: false)
        defer { std.close() }
        #expect(try std.call(.deviceGetInfo, payload: DeviceInfo(argsz: 64).encoded).count == 16)
    }

    @Test func theAtomicCapabilityFollowsExpressAtomicOpsAndCanBeTurnedOff() throws {
        // The generic device reports it too (core vfio-pci behaviour).
        let ep = try Served(try loadSpec("express-endpoint.json"), extensions: true)
        #expect(try ep.client.deviceInfoWithCapabilities().capabilities == [.pciAtomicComp(flags: 0x3)])
        let off = try parseSpec(#"{"name": "a", "ids": {"vendor": 1, "device": 2}, "express": {"atomicOps": {"completer64": true}}, "deviceInfo": {"atomicOps": false}}"#)
        #expect(try DeviceInfoCaps.capabilities(for: off).isEmpty)
        // Nothing to report: an extension client gets the 16-byte form.
        let none = try Served(try loadSpec("default.json"), extensions: true)
        #expect(try none.client.call(.deviceGetInfo, payload: DeviceInfo(argsz: 64).encoded).count == 16)
        expectSpecError(field: "deviceInfo.atomicOps", reason: "declares no completer width") {
            _ = try DeviceInfoCaps.capabilities(for: try parseSpec(#"{"name": "a", "ids": {"vendor": 1, "device": 2}, "express": true, "deviceInfo": {"atomicOps": true}}"#))
        }
        // zPCI and AtomicOps together: zPCI first, as the kernel adds them.
        let both = try parseSpec(#"{"name": "b", "ids": {"vendor": 1, "device": 2}, "express": {"atomicOps": {"completer32": true}}, "zpci": {"base": {}, "group": {}}}"#)
        #expect(try DeviceInfoCaps.capabilities(for: both).map { $0.raw.id } == [1, 2, 4, 5])
    }

    @Test func badZPCISectionsNameTheField() {
        let head = #"{"name": "z", "ids": {"vendor": 1, "device": 2}, "zpci": "#
        for (zpci, field, reason) in [
            (#"{"group": {}}"#, "zpci", "missing required key 'base'"),
            (#"{"base": {"pft": 256}, "group": {}}"#, "zpci.base.pft", "out of range"),
            (#"{"base": {"startDma": 10, "endDma": 5}, "group": {}}"#, "zpci.base.endDma", "below startDma"),
            (#"{"base": {}, "group": {}, "pfip": "0102"}"#, "zpci.pfip", "must be 4 bytes"),
            (#"{"base": {}, "group": {}, "util": "\#(String(repeating: "x", count: 65))"}"#, "zpci.util", "at most 64"),
            (#"{"base": {}, "group": {"bogus": 1}}"#, "zpci.group.bogus", "unknown key"),
        ] {
            expectSpecError(field: field, reason: reason) {
                _ = try DeviceInfoCaps.capabilities(for: try parseSpec(head + zpci + "}"))
            }
        }
    }
}

extension DeviceInfoCapability {
    /// A decoded capability's body includes the chain's alignment padding; the
    /// device's own value does not. Trim back to the layout's size for comparison.
    init(trimming c: DeviceInfoCapability) {
        guard case .unknown(let id, let v, let body) = c else { self = c; return }
        let size: [UInt16: Int] = [1: 32, 2: 40, 3: 68, 4: 8]
        self = .unknown(id: id, version: v, body: Array(body.prefix(size[id] ?? body.count)))
    }
}
