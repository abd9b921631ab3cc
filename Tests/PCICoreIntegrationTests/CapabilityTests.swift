@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VFIOUserTransport

/// Capability lists, the PCI Express capability's FLR and AtomicOp bits (reference §1.5, §1.7).
@Suite struct CapabilityTests {
    /// The length a capability occupies, from its own bytes.
    static func length(ofStandard id: UInt8, at o: Int, in cfg: [UInt8]) -> Int {
        switch id {
        case 0x01: return 8
        case 0x05:
            let ctl = UInt16(cfg[o + 2]) | UInt16(cfg[o + 3]) << 8
            return 10 + (ctl & 0x80 != 0 ? 4 : 0) + (ctl & 0x100 != 0 ? 10 : 0)
        case 0x09: return Int(cfg[o + 2])
        case 0x10: return 0x3C
        case 0x11: return 12
        default: return 4
        }
    }

    /// Walks both lists and checks they are well formed: pointers dword-aligned and
    /// in range, strictly increasing (no loops), no two capabilities overlapping,
    /// nothing in the header. Returns the IDs in list order.
    static func walk(_ cfg: [UInt8]) -> (standard: [UInt8], extended: [UInt16]) {
        var std: [UInt8] = []
        var p = Int(cfg[0x34])
        var end = 0x40
        #expect(cfg[0x06] & 0x10 != 0, "Status: Capabilities List")
        while p != 0 {
            #expect(p % 4 == 0 && p >= 0x40 && p <= 0xFC, "pointer 0x\(String(p, radix: 16))")
            #expect(p >= end, "capability at 0x\(String(p, radix: 16)) overlaps the one before or goes backwards")
            guard p % 4 == 0, p >= end, p <= 0xFC else { break }
            let id = cfg[p]
            std.append(id)
            end = p + length(ofStandard: id, at: p, in: cfg)
            #expect(end <= 0x100, "capability 0x\(String(id, radix: 16)) runs past 0xFF")
            p = Int(cfg[p + 1])
        }
        var ext: [UInt16] = []
        guard cfg.count == 4096 else { return (std, ext) }
        var e = 0x100
        end = 0x100
        while e != 0 {
            #expect(e % 4 == 0 && e >= end && e <= 0xFFC, "extended pointer 0x\(String(e, radix: 16))")
            guard e % 4 == 0, e >= end, e <= 0xFFC else { break }
            let h = cfg.u32(e)
            if h == 0 { break }
            ext.append(UInt16(h & 0xFFFF))
            #expect((h >> 16) & 0xF >= 1, "extended capability version")
            end = e + 4
            e = Int(h >> 20)
        }
        return (std, ext)
    }

    @Test func defaultSpecListsEveryCapabilityOnce() throws {
        let s = try Served(spec: "default")
        let cfg = try s.wholeConfig()
        #expect(cfg.count == 256)
        let (std, ext) = Self.walk(cfg)
        #expect(std.sorted() == [0x01, 0x05, 0x09, 0x11])
        #expect(ext.isEmpty)
        // The layout the device reports agrees with what a client walks.
        #expect(s.device.placedCapabilities.standard.map(\.id) == std)
    }

    @Test func expressSpecListsStandardAndExtendedCapabilitiesOnce() throws {
        let s = try Served(spec: "express-endpoint")
        let cfg = try s.wholeConfig()
        #expect(cfg.count == 4096)
        let (std, ext) = Self.walk(cfg)
        #expect(std.sorted() == [0x01, 0x10, 0x11])
        #expect(ext == [PCIExtendedCapability.serialNumberID, PCIExtendedCapability.vendorSpecificID])
        #expect(cfg.u32(0x100) & 0xFFFF == 0x0003, "the extended list starts at 0x100")
        #expect(cfg.u32(0x104) == 0x89AB_CDEF && cfg.u32(0x108) == 0x0123_4567, "serial number")
    }

    @Test func capabilityBytesIgnoreWritesOutsideTheirWritableFields() throws {
        let s = try Served(spec: "express-endpoint")
        let before = try s.wholeConfig()
        let pcie = Int(try s.capability(PCICapability.expressID))
        // ID/next bytes of every capability, and the extended headers, are read-only.
        for (_, o) in ConfigSpaceReport.capabilityList(before) { try s.set16(UInt64(o), 0xFFFF) }
        for (_, _, o) in ConfigSpaceReport.extendedCapabilityList(before) { try s.set32(UInt64(o), 0xFFFF_FFFF) }
        // DevCap, LinkCap, DevCap2 are read-only; the serial number too.
        for o in [pcie + 4, pcie + 0xC, pcie + 0x24] { try s.set32(UInt64(o), 0xFFFF_FFFF) }
        try s.set32(0x104, 0)
        let after = try s.wholeConfig()
        #expect(after == before)
    }

    @Test func devCap2AtomicOpCompleterBitsFollowTheSpec() throws {
        let s = try Served(spec: "express-endpoint")
        let pcie = try s.capability(PCICapability.expressID)
        #expect(try s.cfg16(pcie + 2) & 0x00F0 == 0, "device/port type: endpoint")
        #expect(try s.cfg32(pcie + 4) & (1 << 28) != 0, "DevCap: FLR capable")
        // completer32 and completer64, no 128-bit CAS, no routing.
        #expect(try s.cfg32(pcie + 0x24) & 0x3C0 == 0x180)

        var c = try Served.configuration(spec: "express-endpoint")
        c.expressParameters.atomicCompleter128 = true
        c.expressParameters.atomicRouting = true
        c.expressParameters.functionLevelReset = false
        let all = try Served(c)
        #expect(try all.cfg32(pcie + 0x24) & 0x3C0 == 0x3C0)
        #expect(try all.cfg32(pcie + 4) & (1 << 28) == 0, "DevCap: not FLR capable")

        var none = c
        none.expressParameters = ExpressParameters()
        #expect(try Served(none).cfg32(pcie + 0x24) & 0x3C0 == 0)
    }

    @Test func devCtlIsWritableExceptPhantomFunctionsAndDevStaIsW1C() throws {
        let s = try Served(spec: "express-endpoint")
        let pcie = try s.capability(PCICapability.expressID)
        #expect(try s.cfg16(pcie + 8) == 0x2810)
        try s.set16(pcie + 8, 0x7FFF)
        #expect(try s.cfg16(pcie + 8) == 0x7DFF, "Phantom Functions Enable (bit 9) is read-only")
        s.device.lock.withLock { s.device.config.store16(0x000F, Int(pcie) + 0xA) }
        try s.set16(pcie + 0xA, 0x0005)
        #expect(try s.cfg16(pcie + 0xA) == 0x000A, "DevSta error bits clear on write-1")
    }

    @Test func initiateFLRResetsTheFunctionAndReadsZero() throws {
        let s = try Served(spec: "express-endpoint")
        let pcie = try s.capability(PCICapability.expressID)
        let powerOn = try s.wholeConfig()
        let resets = s.device.lock.withLock { s.device.resetCount }
        try s.set8(0x3C, 0x0A)
        try s.set32(0x10, 0xFE00_0000)
        try s.set16(0x04, 0x0006)
        try s.set16(pcie + 8, 0x2811)            // + Correctable Error Reporting Enable
        #expect(try s.cfg16(pcie + 8) == 0x2811)
        #expect(try s.cfg32(0x10) == 0xFE00_0004)
        try s.set16(pcie + 8, 0xA811)            // Initiate FLR
        #expect(s.device.lock.withLock { s.device.resetCount } == resets + 1)
        #expect(try s.cfg16(pcie + 8) == 0x2810, "DevCtl back to power-on, Initiate FLR reads 0")
        #expect(try s.cfg8(0x3C) == 0xFF)
        #expect(try s.cfg16(0x04) == 0)
        #expect(try s.cfg32(0x10) == 0x0000_0004)
        #expect(try s.wholeConfig() == powerOn)
    }

    @Test func initiateFLRWithoutFLRCapabilityDoesNothingButReadsZero() throws {
        var c = try Served.configuration(spec: "express-endpoint")
        c.expressParameters.functionLevelReset = false
        let s = try Served(c)
        let pcie = try s.capability(PCICapability.expressID)
        try s.set8(0x3C, 0x0A)
        try s.set16(pcie + 8, 0xA811)
        #expect(s.device.lock.withLock { s.device.resetCount } == 0)
        #expect(try s.cfg16(pcie + 8) == 0x2811)
        #expect(try s.cfg8(0x3C) == 0x0A)
    }
}
