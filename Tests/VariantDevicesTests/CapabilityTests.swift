import DeviceSpecs
@_spi(Server) import PCICore
import Testing
import VFIOUserClient
import VFIOUserProtocol
import VariantDevices

/// PASID, the free-space DVSEC and the AtomicOp completer bits, read over the socket.
@Suite struct CapabilityTests {
    /// Checks the free-space DVSEC at `offset` against the config space it lives in:
    /// its header, and that every listed range is really free (zero, unwritable, in no
    /// capability) and that together with the capabilities it covers 0x100-0xFFF.
    func checkFreeSpace(_ s: Served, vendor: UInt16, dvsecID: UInt16 = 0xF5EE, sourceLocation: SourceLocation = #_sourceLocation) throws -> [Range<Int>] {
        let cfg = try s.config()
        let caps = walkExtended(cfg)
        let dvsec = try #require(caps.first { $0.id == 0x23 && cfg.le16(at: $0.offset + 8) == dvsecID }, sourceLocation: sourceLocation)
        #expect(cfg.le32(at: dvsec.offset) >> 16 & 0xF == 1, sourceLocation: sourceLocation)    // capability version 1
        let h1 = cfg.le32(at: dvsec.offset + 4)
        #expect(h1 & 0xFFFF == UInt32(vendor), sourceLocation: sourceLocation)
        #expect(h1 >> 16 & 0xF == 1, sourceLocation: sourceLocation)                          // DVSEC revision
        let n = Int(cfg.le16(at: dvsec.offset + 0xA))
        #expect(Int(h1 >> 20) == 12 + 4 * n && dvsec.length >= 12, sourceLocation: sourceLocation)
        var ranges: [Range<Int>] = []
        for k in 0..<n {
            let o = Int(cfg.le16(at: dvsec.offset + 12 + 4 * k)), len = Int(cfg.le16(at: dvsec.offset + 14 + 4 * k))
            ranges.append(o..<(o + len))
        }
        // PCICore's parser reads the same thing.
        #expect(FreeSpaceDVSEC.parse(cfg, at: dvsec.offset)?.ranges == ranges, sourceLocation: sourceLocation)
        var covered = [Bool](repeating: false, count: 4096)
        for c in caps { for i in c.offset..<(c.offset + ((c.length + 3) & ~3)) { covered[i] = true } }
        for (k, r) in ranges.enumerated() {
            #expect(r.lowerBound >= 0x100 && r.upperBound <= 0x1000 && !r.isEmpty, "\(r)", sourceLocation: sourceLocation)
            #expect(r.lowerBound % 4 == 0 && r.count % 4 == 0, sourceLocation: sourceLocation)
            if k > 0 { #expect(ranges[k - 1].upperBound < r.lowerBound, "sorted, disjoint, maximal", sourceLocation: sourceLocation) }
            #expect(cfg[r].allSatisfy { $0 == 0 }, "range \(r) reads zero", sourceLocation: sourceLocation)
            #expect(!caps.contains { ($0.offset..<($0.offset + $0.length)).overlaps(r) }, "range \(r) is in no capability",
                    sourceLocation: sourceLocation)
            for i in r { covered[i] = true }
        }
        #expect(covered[0x100..<0x1000].allSatisfy { $0 }, "capabilities and free ranges cover 0x100-0xFFF", sourceLocation: sourceLocation)
        // Writes into the free ranges are ignored (first, last and a middle dword of each).
        for r in ranges {
            for o in Set([r.lowerBound, r.upperBound - 4, (r.lowerBound + r.count / 2) & ~3]) {
                try s.client.writeConfig32(UInt64(o), 0xFFFF_FFFF)
                #expect(try s.client.readConfig32(UInt64(o)) == 0, sourceLocation: sourceLocation)
            }
        }
        return ranges
    }

    @Test func pasidSpecPlacesPASIDAndAnHonestFreeSpaceDVSEC() throws {
        let s = try Served(try loadSpec("pasid.json"))
        #expect(s.binding.driver.name == "generic")
        let cfg = try s.config()
        let caps = walkExtended(cfg)
        #expect(caps.map(\.id) == [0x23, 0x1B, 0x03])
        #expect(caps[0].offset == 0x100 && caps[2].offset == 0x400)
        // PASID: max width 20, execute, not privileged; control starts at 0.
        let p = caps[1].offset
        #expect(cfg.le32(at: p) & 0xF_FFFF == 0x1_001B)
        #expect(cfg.le16(at: p + 4) == 0x1402)
        #expect(cfg.le16(at: p + 6) == 0)
        try s.client.writeConfig16(UInt64(p + 6), 0xFFFF)
        #expect(try s.client.readConfig16(UInt64(p + 6)) == 0x0003)  // enable + execute enable
        #expect(try s.client.readConfig16(UInt64(p + 4)) == 0x1402)
        // DSN.
        #expect(cfg.le64(at: 0x404) == 0x0011_2233_4455_6677)
        let ranges = try checkFreeSpace(s, vendor: 0x1B36)
        // The DVSEC (12 + 4·2 bytes) and PASID sit at 0x100; the gap up to the DSN and the tail are free.
        #expect(ranges == [(p + 8)..<0x400, 0x40C..<0x1000])
        // QEMU's synthetic PASID spot (0xFF8) is among the free bytes.
        #expect(ranges.contains { $0.contains(0xFF8) && $0.contains(0xFFF) })
    }

    @Test func anExplicitlyPlacedDVSECListsEveryGapAroundIt() throws {
        let spec = try parseSpec("""
            {"name": "gaps", "ids": {"vendor": "0x1b36", "device": "0x12"}, "express": true,
             "extendedCapabilities": [
               {"id": "dsn", "serial": 1},
               {"id": "vsec", "vsecId": 5, "bytes": "0102030405060708", "offset": "0x200"},
               {"id": "free-space-dvsec", "offset": "0x800", "vendor": "0x1af4", "dvsecId": "0x1234", "revision": 1},
               {"id": "pasid", "offset": "0xff0"}
             ]}
            """)
        let s = try Served(spec)
        let ranges = try checkFreeSpace(s, vendor: 0x1AF4, dvsecID: 0x1234)
        // DSN 0x100-0x10B, VSEC 0x200-0x20F, DVSEC at 0x800 (12 + 4·4 = 28 bytes), PASID 0xFF0-0xFF7.
        #expect(ranges == [0x10C..<0x200, 0x210..<0x800, 0x81C..<0xFF0, 0xFF8..<0x1000])
    }

    @Test func variantsGetTheFreeSpaceDVSECToo() throws {
        // An IGD (a variant building on the core) with the DVSEC: its ranges are free as well.
        let spec = try parseSpec("""
            {"name": "igd-fs", "ids": {"vendor": "0x8086", "device": "0x3e92", "classCode": "0x030000"},
             "express": {"offset": "0x70"}, "extendedCapabilities": [{"id": "free-space-dvsec"}, {"id": "dsn", "serial": 7}],
             "igd": {"asls": "0x7a5f8018", "opRegion": {"generate": true}}}
            """)
        let s = try Served(spec)
        #expect(s.binding.driver.name == "igd")
        #expect(try checkFreeSpace(s, vendor: 0x8086) == [0x11C..<0x1000])
    }

    @Test func freeSpaceDVSECSpecErrorsNameTheField() {
        expectSpecError(field: "extendedCapabilities[1]", reason: "only one free-space DVSEC") {
            _ = try parseSpec(#"{"name": "x", "ids": {"vendor": 1, "device": 2}, "express": true, "extendedCapabilities": [{"id": "free-space-dvsec"}, {"id": "free-space-dvsec"}]}"#)
        }
        expectSpecError(field: "extendedCapabilities[0]", reason: "need \"express\": true") {
            _ = try parseSpec(#"{"name": "x", "ids": {"vendor": 1, "device": 2}, "extendedCapabilities": [{"id": "free-space-dvsec"}]}"#)
        }
        expectSpecError(field: "extendedCapabilities[0].bytes", reason: "unknown key") {
            _ = try parseSpec(#"{"name": "x", "ids": {"vendor": 1, "device": 2}, "express": true, "extendedCapabilities": [{"id": "free-space-dvsec", "bytes": "00"}]}"#)
        }
    }

    @Test func freeSpaceDVSECSettlesWhenItsGrowthMovesOtherCapabilities() throws {
        // Auto-placed capabilities after a growing DVSEC move with it; the list must match the final layout.
        var c = PCIDeviceConfiguration(name: "grow", identity: PCIIdentity(vendor: 1, device: 2))
        c.express = true
        c.extendedCapabilities = [
            FreeSpaceDVSEC.capability(vendor: 1, ranges: []),
            .serialNumber(1), .pasid(maxWidth: 8, execute: false, privileged: false, offset: 0x300),
            .serialNumber(2, offset: 0x500), .serialNumber(3, offset: 0x700),
        ]
        let (final, ranges) = try FreeSpaceDVSEC.resolve(c, at: 0)
        let placed = try final.validate()
        #expect(CapabilityLayout.freeExtendedRanges(placed) == ranges)
        #expect(ranges.count == 4)
        #expect(placed.extended.first { $0.id == 0x23 }?.length == 12 + 4 * ranges.count)
    }

    @Test func atomicOpCompleterBitsReachDevCap2() throws {
        // express-endpoint.json: completer32 and completer64.
        let s = try Served(try loadSpec("express-endpoint.json"))
        let cfg = try s.config()
        let e = try #require(walkStandard(cfg).first { $0.id == 0x10 }).offset
        #expect(cfg.le32(at: e + 0x24) == 0x0000_0190)   // completion-timeout disable + COMP32 + COMP64
        // Every combination, routing included, and DevCap2 is read-only.
        for (flags, expected) in [("\"completer128\": true", UInt32(0x210)), ("\"routing\": true, \"completer32\": true", 0xD0),
                                  ("\"completer32\": true, \"completer64\": true, \"completer128\": true", 0x390), ("", 0x10)] {
            let t = try Served(try parseSpec(#"{"name": "a", "ids": {"vendor": 1, "device": 2}, "express": {"atomicOps": {"# + flags + "}}}"))
            let tc = try t.config()
            let off = try #require(walkStandard(tc).first { $0.id == 0x10 }).offset
            #expect(tc.le32(at: off + 0x24) == expected, "\(flags)")
            try t.client.writeConfig32(UInt64(off + 0x24), 0)
            #expect(try t.client.readConfig32(UInt64(off + 0x24)) == expected)
        }
    }
}
