import VFIOUserProtocol
import VFIOUserTransport

// The commands the other groups do not reach, and their documented errors:
// GET_REGION_IO_FDS (optional), REGION_WRITE_MULTI (when advertised), the legacy
// DIRTY_PAGES, DEVICE_FEATURE outside the vfio-user set, MIG_DATA_WRITE outside
// RESUMING, DMA_MAP with unknown flags or a short payload, SET_IRQS with more fds
// than vectors.
extension ConformanceSuite {
    func commands(_ r: inout Recorder, _ links: Connections) {
        guard let p = links.negotiated(&r, "command.region-io-fds") else { return }
        func answered(_ x: RawPeer.Received) -> Bool { if case .message(let m) = x { m.closeFDs(); return true }; return false }

        // Optional: an error says "not supported"; a reply must be well-formed.
        let io = p.call(.deviceGetRegionIOFDs, RegionIOFDsRequest(argsz: 16, index: 0).encoded)
        if case .message(let m) = io, !m.header.isError {
            let reply = try? RegionIOFDsReply(payload: Array(m.payload))
            m.closeFDs()
            let badFlags = p.call(.deviceGetRegionIOFDs, RegionIOFDsRequest(argsz: 16, flags: 1, index: 0).encoded)
            r.check(reply?.index == 0 && isError(badFlags, .EINVAL), "command.region-io-fds",
                    "BAR0: \(reply.map { "argsz \($0.argsz), \($0.count) entries" } ?? "a reply that does not decode"); flags 1: \(show(badFlags))", "§3.5")
        } else {
            r.check(isError(io), "command.region-io-fds", "not supported: \(show(io))", "§3.5")
        }

        // REGION_WRITE_MULTI: applied in order when advertised, refused when not.
        let advertised: Bool = {
            guard case .message(let m) = links.firstVersion, let v = try? VersionPayload(payload: Array(m.payload)) else { return false }
            return v.effectiveCapabilities.effectiveWriteMultiple
        }()
        var w = WireWriter()
        w.u64(2)
        for value: UInt8 in [0x05, 0x0B] { w.u64(0x3C); w.u32(7); w.u32(1); w.u64(UInt64(value)) }
        let multi = p.call(.regionWriteMulti, w.bytes)
        if advertised {
            let line = readConfig(p, 0x3C, 1)?.first
            var count: UInt64?
            if case .message(let m) = multi, !m.header.isError, m.payload.count >= 8 { count = Array(m.payload).le64(at: 0) }
            r.check(count == 2 && line == 0x0B, "command.write-multi",
                    "two interrupt-line writes: \(show(multi)), wr_cnt \(count.map(String.init) ?? "missing"), then the line reads \(line.map { "0x\(String($0, radix: 16))" } ?? "unreadable") (want 0xb)",
                    "§3.11")
        } else {
            r.check(isError(multi), "command.write-multi", "not advertised in VERSION: \(show(multi))", "§3.11, §2.3")
        }

        // Command 14 (DIRTY_PAGES) left the protocol with migration v1.
        let legacy = p.call(.dirtyPages, [16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        r.check(isError(legacy), "command.legacy-dirty-pages", "command 14: \(show(legacy))", "§3.14")

        // DEVICE_FEATURE: a feature outside the vfio-user set, and GET with SET.
        let vfToken = p.call(.deviceFeature, DeviceFeature(argsz: 16, flags: 0 | DeviceFeature.get | DeviceFeature.probe).encoded)
        let both = p.call(.deviceFeature, DeviceFeature(argsz: 16, flags: UInt32(DeviceFeature.migration) | DeviceFeature.get | DeviceFeature.set).encoded)
        r.check(isError(vfToken) && isError(both), "command.feature-errors",
                "PCI_VF_TOKEN probe: \(show(vfToken)); MIGRATION GET|SET: \(show(both))", "§3.12")

        // MIG_DATA_WRITE outside RESUMING.
        let stray = p.call(.migDataWrite, MigDataWrite(data: [1, 2, 3, 4, 5, 6, 7, 8]).encoded)
        r.check(isError(stray), "command.mig-data-write-not-resuming", "MIG_DATA_WRITE while not RESUMING: \(show(stray))", "§5.3")

        // DMA_MAP: unknown flag bits, a short payload.
        let oddFlags = p.call(.dmaMap, DMAMapRequest(flags: DMAMapFlags(rawValue: 0x100 | 0x1), offset: 0, address: 0x6000_0000, size: 0x1000).encoded)
        var short = DMAMapRequest(flags: [.read], offset: 0, address: 0x6000_0000, size: 0x1000).encoded
        short.removeLast(16)
        let shortMap = p.call(.dmaMap, short)
        if !isError(oddFlags) { _ = p.call(.dmaUnmap, DMAUnmapRequest(address: 0x6000_0000, size: 0x1000).encoded) }
        r.check(isError(oddFlags) && isError(shortMap, .EINVAL), "dma.map-errors",
                "flags 0x101: \(show(oddFlags)); 16 of 32 payload bytes: \(show(shortMap))", "§3.1")

        // SET_IRQS: two eventfds for one vector.
        if let a = try? EventFD.create(), let b = try? EventFD.create() {
            let two = p.call(.deviceSetIRQs, SetIRQs(argsz: 20, flags: [.dataEventFD, .actionTrigger], index: 0, start: 0, count: 1).encoded,
                             fds: [a.rawValue, b.rawValue])
            r.check(isError(two, .EINVAL), "irq.set-fd-count", "INTx, count 1 with 2 eventfds: \(show(two))", "§3.7")
            if !isError(two) { _ = p.call(.deviceSetIRQs, SetIRQs(argsz: 20, flags: [.dataNone, .actionTrigger], index: 0, start: 0, count: 0).encoded) }
        }
        _ = answered
    }
}
