import DeviceSpecs
import Glibc
@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VariantDevices

func writeTempFile(_ bytes: [UInt8]) -> String {
    var template = Array("/tmp/vfu-igd-XXXXXX".utf8CString)
    let (fd, path) = template.withUnsafeMutableBufferPointer { b in (mkstemp(b.baseAddress!), String(cString: b.baseAddress!)) }
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    return path
}

func readFileBytes(_ path: String) -> [UInt8] {
    guard let f = fopen(path, "rb") else { return [] }
    defer { fclose(f) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return out
}

@Suite struct IGDTests {
    static let type: UInt32 = 0x8000_8086
    static let asls: UInt32 = 0x7A5F_8018

    static func spec(opRegion: String, bridges: String = #", "hostBridge": {"device": "0x3e30"}, "lpcBridge": {"device": "0xa305"}"#,
                     extra: String = "") -> String {
        """
        {"name": "igd-t", "ids": {"vendor": "0x8086", "device": "0x3e92", "classCode": "0x030000"},
         "express": {"offset": "0x70"}, "interrupts": {"intx": "A"}\(extra),
         "igd": {"asls": "0x7a5f8018", "opRegion": \(opRegion)\(bridges)}}
        """
    }

    /// The synthetic config header a bridge region should hold, built here independently.
    static func bridge(vendor: UInt16, device: UInt16, revision: UInt8, classCode: UInt32, subVendor: UInt16, sub: UInt16) -> [UInt8] {
        var c = [UInt8](repeating: 0, count: 256)
        c[0] = UInt8(vendor & 0xFF); c[1] = UInt8(vendor >> 8)
        c[2] = UInt8(device & 0xFF); c[3] = UInt8(device >> 8)
        c[4] = 0x06
        c[8] = revision
        c[9] = UInt8(classCode & 0xFF); c[10] = UInt8((classCode >> 8) & 0xFF); c[11] = UInt8(classCode >> 16)
        c[0x2C] = UInt8(subVendor & 0xFF); c[0x2D] = UInt8(subVendor >> 8)
        c[0x2E] = UInt8(sub & 0xFF); c[0x2F] = UInt8(sub >> 8)
        return c
    }

    @Test func igdSpecRegionsRegistersAndCapabilitiesReadBackByteForByte() throws {
        let s = try Served(try loadSpec("igd.json"))
        #expect(s.binding.driver.name == "igd")
        let info = try s.client.deviceInfo()
        #expect(info.numRegions == 12 && info.numIRQs == 5)
        #expect(info.flags == [.pci, .reset])

        // Region 9: the OpRegion, read-only, TYPE capability only.
        let op = try s.regionInfo(9)
        #expect(op.flags == [.read, .caps])
        #expect(op.size == 8192)
        #expect(op.capabilities == [.type(type: Self.type, subtype: 1)])
        let bytes = try s.readAll(9, size: op.size, chunk: 1000)
        #expect(Array(bytes[0..<16]) == Array("IntelGraphicsMem".utf8))
        #expect(UInt64(bytes.le32(at: 0x10)) * 1024 == op.size)
        #expect(bytes.le16(at: 0x16) == 0x0201)
        #expect(bytes.le32(at: 0x58) == 0x7)              // MBOX: ACPI, SWSCI, ASLE
        #expect(bytes.le64(at: 0x3BA) == 0)               // no extended VBT
        #expect(bytes.le32(at: 0x3C2) == 0)
        // The VBT in mailbox 4: "$VBT", its size (1024) and a zero byte sum.
        #expect(Array(bytes[0x400..<0x404]) == Array("$VBT".utf8))
        let vbtSize = Int(bytes.le16(at: 0x400 + 24))
        #expect(vbtSize == 1024)
        #expect(bytes[0x400..<(0x400 + vbtSize)].reduce(UInt8(0)) { $0 &+ $1 } == 0)
        #expect(Array(bytes[0x430..<0x440]) == Array("BIOS_DATA_BLOCK ".utf8))
        // Byte for byte what the generator makes for the spec's options.
        var g = OpRegion.Generated()
        g.vbtSize = 1024
        #expect(bytes == OpRegion.generate(g, hostAddress: Self.asls))

        // Regions 10 and 11: host bridge (class 0x0600) and LPC (0x0601) config.
        for (index, subtype, expected) in [
            (UInt32(10), UInt32(2), Self.bridge(vendor: 0x8086, device: 0x3E30, revision: 0x0A, classCode: 0x060000, subVendor: 0x8086, sub: 0x2212)),
            (11, 3, Self.bridge(vendor: 0x8086, device: 0xA305, revision: 0x10, classCode: 0x060100, subVendor: 0x8086, sub: 0x2212)),
        ] {
            let r = try s.regionInfo(index)
            #expect(r.flags == [.read, .caps] && r.size == 256)
            #expect(r.capabilities == [.type(type: Self.type, subtype: subtype)])
            #expect(try s.readAll(index, size: 256, chunk: 7) == expected)
        }
        #expect(try s.region(type: Self.type, subtype: 3) == 11)

        // Config: ASLS, GMCH, BDSM and the capability chain.
        let cfg = try s.config()
        #expect(cfg.le32(at: 0xFC) == Self.asls)
        #expect(cfg.le16(at: 0x50) == 0x04C0)
        #expect(cfg.le32(at: 0x5C) == 0x7B80_0001)
        #expect(walkStandard(cfg).map { [Int($0.id), $0.offset] } == [[0x09, 0x40], [0x10, 0x70], [0x05, 0xAC], [0x01, 0xD0]])
        #expect(cfg[0x42] == 0x0C)                       // vendor capability length
        #expect(cfg.le32(at: 0x100) == 0)                // no extended capabilities

        // IRQs: INTx 1, MSI 1, MSI-X 0, ERR 1, REQ 1.
        #expect(try (0..<5).map { try s.client.irqInfo(UInt32($0)).count } == [1, 1, 0, 1, 1])
    }

    @Test func igdRegionsAreReadOnlyAndBounded() throws {
        let s = try Served(try loadSpec("igd.json"))
        for index: UInt32 in [9, 10, 11] {
            let before = try s.client.read(region: index, offset: 0, count: 16)
            expectServerError(.EINVAL) { try s.client.write(region: index, offset: 0, [1, 2, 3, 4]) }
            expectServerError(.EINVAL) { try s.client.write(region: index, offset: 0x100, [0]) }
            #expect(try s.client.read(region: index, offset: 0, count: 16) == before)
            let size = try s.regionInfo(index).size
            expectServerError(.EINVAL) { _ = try s.client.read(region: index, offset: size, count: 1) }
            // The core refuses accesses that cross the end (the kernel would shorten them).
            expectServerError(.EINVAL) { _ = try s.client.read(region: index, offset: size - 2, count: 4) }
            #expect(try s.client.read(region: index, offset: size - 4, count: 4).count == 4)
        }
        // The device model agrees: the regions are not writable.
        #expect(s.device.region(9)?.writable == false)
        #expect(s.device.region(9)?.infoFlags == [.read])
    }

    @Test func aslsIsAVirtualScratchRegisterThatResets() throws {
        let s = try Served(try loadSpec("igd.json"))
        #expect(try s.client.readConfig32(0xFC) == Self.asls)
        let opRegion = try s.client.read(region: 9, offset: 0, count: 64)
        try s.client.writeConfig32(0xFC, 0x1234_5000)
        #expect(try s.client.readConfig32(0xFC) == 0x1234_5000)
        #expect(try s.client.read(region: 9, offset: 0, count: 64) == opRegion)
        // GMCH and BDSM are read-only.
        try s.client.writeConfig16(0x50, 0xFFFF)
        try s.client.writeConfig32(0x5C, 0)
        #expect(try s.client.readConfig16(0x50) == 0x04C0)
        #expect(try s.client.readConfig32(0x5C) == 0x7B80_0001)
        try s.client.reset()
        #expect(try s.client.readConfig32(0xFC) == Self.asls)
    }

    @Test func aVersion20ImageFileWithAnExtendedVBTIsShownAsContiguous21() throws {
        let s = try Served(try loadSpec("igd-extvbt.json"))
        #expect(s.binding.driver.name == "igd")   // class 0x0380 is a display class too
        let file = readFileBytes(specsDirectory + "/igd-opregion-extvbt.bin")
        #expect(file.count == 8192 + 7000)
        #expect(file.le16(at: 0x16) == 0x0200 && file.le64(at: 0x3BA) == UInt64(Self.asls) + 0x2000)
        let info = try s.regionInfo(9)
        #expect(info.size == 8192 + 7000)
        let view = try s.readAll(9, size: info.size, chunk: 4096)
        var expected = file
        expected[0x16] = 0x01; expected[0x17] = 0x02          // 2.0 with an extended VBT reads as 2.1
        for i in 0..<8 { expected[0x3BA + i] = i == 1 ? 0x20 : 0 }  // RVDA = 0x2000, relative
        #expect(view == expected)
        #expect(view.le64(at: 0x3BA) == 0x2000)
        #expect(view.le32(at: 0x3C2) == 7000)
        #expect(Array(view[0x2000..<0x2004]) == Array("$VBT".utf8))
        #expect(view[0x2000..<(0x2000 + 7000)].reduce(UInt8(0)) { $0 &+ $1 } == 0)
        // Regions 10/11 with the default revision/subsystem.
        #expect(try s.client.read(region: 10, offset: 0, count: 4) == [0x86, 0x80, 0x30, 0x3E])
        #expect(try s.client.read(region: 11, offset: 0x0A, count: 2) == [0x01, 0x06])
    }

    @Test(arguments: [UInt16(0x0201), 0x0200])
    func aGeneratedExtendedVBTIsFoundThroughRVDAAndRVDS(version: UInt16) throws {
        let s = try Served(try parseSpec(Self.spec(opRegion: #"{"generate": {"version": "\#(version)", "vbtSize": 9000}}"#)))
        let size = try s.regionInfo(9).size
        #expect(size == 8192 + 9000)
        let view = try s.readAll(9, size: size, chunk: 8192)
        #expect(view.le16(at: 0x16) == 0x0201)
        #expect(view.le64(at: 0x3BA) == 0x2000)
        #expect(view.le32(at: 0x3C2) == 9000)
        #expect(view[0x400..<0x1C00].allSatisfy { $0 == 0 })       // mailbox 4 is empty
        #expect(Array(view[0x2000..<0x2004]) == Array("$VBT".utf8))
        #expect(Int(view.le16(at: 0x2000 + 24)) == 9000)
        // The raw image the generator made for the host says what the version says.
        var g = OpRegion.Generated()
        g.version = version
        g.vbtSize = 9000
        let image = OpRegion.generate(g, hostAddress: Self.asls)
        #expect(image.le64(at: 0x3BA) == (version == 0x0200 ? UInt64(Self.asls) + 0x2000 : 0x2000))
        #expect(Array(image[0x2000...]) == Array(view[0x2000...]))
    }

    @Test func aSmallVBTCanBeForcedIntoTheExtendedArea() throws {
        let s = try Served(try parseSpec(Self.spec(opRegion: #"{"generate": {"extendedVBT": true, "vbtSize": 256, "mailboxes": "0x15"}}"#)))
        let view = try s.readAll(9, size: try s.regionInfo(9).size)
        #expect(view.count == 8192 + 256)
        #expect(view.le32(at: 0x58) == 0x15)
        #expect(view.le64(at: 0x3BA) == 0x2000 && view.le32(at: 0x3C2) == 256)
    }

    @Test func missingBridgesLeaveTheRegionsRegisteredSoFar() throws {
        // No host bridge: OpRegion only (the kernel's -ENODEV stops before the LPC step).
        let none = try Served(try parseSpec(Self.spec(opRegion: #"{"generate": true}"#, bridges: #", "lpcBridge": {"device": 1}"#)))
        #expect(try none.client.deviceInfo().numRegions == 10)
        #expect(try none.region(type: Self.type, subtype: 1) == 9)
        // Host bridge but no LPC: OpRegion and host.
        let host = try Served(try parseSpec(Self.spec(opRegion: #"{"generate": true}"#, bridges: #", "hostBridge": {"device": 1}"#)))
        #expect(try host.client.deviceInfo().numRegions == 11)
        #expect(try host.region(type: Self.type, subtype: 2) == 10)
        #expect(try host.region(type: Self.type, subtype: 3) == nil)
    }

    @Test func badOpRegionsAndBridgesRefuseToBuild() throws {
        let igd = try #require(registry.driver(named: "igd"))
        var image = OpRegion.generate(OpRegion.Generated(), hostAddress: Self.asls)
        image[0] = UInt8(ascii: "X")
        let badSig = writeTempFile(image)
        defer { unlink(badSig) }
        expectSpecError(field: "igd.opRegion", reason: "signature") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"file": "\#(badSig)"}"#)))
        }
        var zeroSize = OpRegion.generate(OpRegion.Generated(), hostAddress: Self.asls)
        zeroSize[0x10] = 0
        let zs = writeTempFile(zeroSize)
        defer { unlink(zs) }
        expectSpecError(field: "igd.opRegion", reason: "size field at 0x10 is 0") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"file": "\#(zs)"}"#)))
        }
        let short = writeTempFile(Array(image[0..<4096]))
        defer { unlink(short) }
        expectSpecError(field: "igd.opRegion", reason: "at least 8 KiB") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"file": "\#(short)"}"#)))
        }
        // An extended VBT that runs past the image.
        var g = OpRegion.Generated()
        g.vbtSize = 7000
        let ext = OpRegion.generate(g, hostAddress: Self.asls)
        let cut = writeTempFile(Array(ext[0..<(ext.count - 1)]))
        defer { unlink(cut) }
        expectSpecError(field: "igd.opRegion", reason: "outside the") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"file": "\#(cut)"}"#)))
        }
        expectSpecError(field: "igd.opRegion.file", reason: "cannot read 'no-such.bin'") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"file": "no-such.bin"}"#)))
        }
        expectSpecError(field: "igd.opRegion", reason: "exactly one of 'file'") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{}"#)))
        }
        expectSpecError(field: "igd.opRegion.generate.version", reason: "needs version 0x0200") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"generate": {"version": "0x0103", "vbtSize": 8000}}"#)))
        }
        // A non-Intel or wrong-class host bridge: the kernel fails the open (-EINVAL).
        expectSpecError(field: "igd.hostBridge.vendor", reason: "must be Intel") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"generate": true}"#, bridges: #", "hostBridge": {"vendor": "0x1022", "device": 1}"#)))
        }
        expectSpecError(field: "igd.lpcBridge.classCode", reason: "class 0x601xx") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"generate": true}"#,
                                                     bridges: #", "hostBridge": {"device": 1}, "lpcBridge": {"device": 2, "classCode": "0x060000"}"#)))
        }
        expectSpecError(field: "igd.bogus", reason: "unknown key") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"generate": true}"#, bridges: #", "bogus": 1"#)))
        }
        // ASLS inside a capability placed at 0xFC.
        expectSpecError(field: "igd.asls", reason: "lies inside capability 0x9") {
            _ = try igd.build(try parseSpec(Self.spec(opRegion: #"{"generate": true}"#,
                                                     extra: #", "capabilities": [{"id": "vendor", "offset": "0xf8", "bytes": "0102030405"}]"#)))
        }
    }
}
