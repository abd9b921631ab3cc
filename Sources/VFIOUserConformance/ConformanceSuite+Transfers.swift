import VFIOUserProtocol
import VFIOUserTransport

// Transfers as large as the server's own max_data_xfer_size (§1.5), both ways. A
// server must take in the whole body of such a message before answering it, however
// the kernel splits it, and answer within the timeout: a bounded wait that runs out
// is a failure (QEMU gives up after 5 s and the device is lost).
extension ConformanceSuite {
    func maxDataXferSize(_ links: Connections) -> Int {
        guard case .message(let m) = links.firstVersion, let v = try? VersionPayload(payload: Array(m.payload)) else { return 1 << 20 }
        return min(max(v.effectiveCapabilities.effectiveMaxDataXferSize, 4096), 64 << 20)
    }

    func transfers(_ r: inout Recorder, _ info: DeviceInfo, _ links: Connections) {
        let max = maxDataXferSize(links)
        // A write of max bytes past config space's end: refused once the body is in.
        // The body is DEVICE_GET_INFO requests end to end, so a server that reads only
        // part of it answers requests nobody sent.
        if let p = links.negotiated(&r, "transfer.write-max") {
            let filler = Self.message(id: 0xC0DE, .deviceGetInfo, DeviceInfo(argsz: 16).encoded)
            var data = [UInt8](); data.reserveCapacity(max)
            while data.count < max { data += filler }
            data.removeLast(data.count - max)
            let start = monotonicMs()
            let x = p.call(.regionWrite, RegionAccess(offset: 0, region: 7, data: data).encoded)
            let ms = monotonicMs() - start
            let step = x.isTimeout || x.isClosed ? .noAnswer : probeStep(p)
            let detail = "REGION_WRITE of \(max) bytes (max_data_xfer_size) at config offset 0: \(show(x)) after \(ms) ms; then \(describe(step))"
            r.check(isError(x) && step == .inStep, "transfer.write-max",
                    x.isTimeout ? detail + " (no reply within the \(timeoutMs) ms bound)" : detail, "§1.5, §3.8")
            if step != .inStep { links.dropShared() }   // later checks must not inherit a stream out of step
        }
        // The largest mmappable region (plain memory: reading it has no side effects)
        // read in one message of up to max bytes, and written back unchanged.
        guard let p = links.negotiated(&r, "transfer.read-max") else { return }
        var best: (index: UInt32, size: UInt64)?
        for i in 0..<min(info.numRegions, 9) where i != 7 {
            guard let (ri, fds) = regionInfo(p, i) else { continue }
            fds.forEach { $0.close() }
            let whole = ri.flags.contains(.mmap) && !ri.capabilities.contains { if case .sparseMmap = $0 { return true }; return false }
            if whole && ri.flags.contains(.read) && ri.size >= 8192 && ri.size > best?.size ?? 0 { best = (i, ri.size) }
        }
        guard let (index, size) = best else {
            r.skip("transfer.read-max", "no wholly mmappable region of 8 KiB or more to read", "§1.5")
            r.skip("transfer.write-back-max", "no wholly mmappable region of 8 KiB or more", "§1.5")
            return
        }
        if withDecoding(p, { bigTransfer(&r, p, index: index, size: size, max: max) }) == nil {
            r.skip("transfer.read-max", "memory decoding is off: run with --disruptive or --server-cmd to turn it on", "§1.5")
        }
    }

    func bigTransfer(_ r: inout Recorder, _ p: RawPeer, index: UInt32, size: UInt64, max: Int) {
        let count = Int(min(UInt64(max), size))
        let x = p.call(.regionRead, RegionAccess(offset: 0, region: index, count: UInt32(count)).encoded)
        guard case .message(let m) = x, !m.header.isError, let a = try? RegionAccess(payload: Array(m.payload)),
              Int(a.count) == count, a.data.count >= count else {
            r.fail("transfer.read-max", "REGION_READ of \(count) bytes of region \(index): \(show(x))", "§1.5, §3.8"); return
        }
        r.pass("transfer.read-max", "REGION_READ of \(count) bytes of region \(index) in one message", "§1.5, §3.8")
        guard mutating else {
            r.skip("transfer.write-back-max", "writes device memory: run with --disruptive or --server-cmd", "§1.5"); return
        }
        let bytes = Array(a.data.prefix(count))
        let w = p.call(.regionWrite, RegionAccess(offset: 0, region: index, data: bytes).encoded)
        let again = p.call(.regionRead, RegionAccess(offset: 0, region: index, count: UInt32(count)).encoded)
        var same = false
        if case .message(let am) = again, let aa = try? RegionAccess(payload: Array(am.payload)) { same = Array(aa.data.prefix(count)) == bytes }
        r.check(!isError(w) && { if case .message = w { return true }; return false }() && same, "transfer.write-back-max",
                "REGION_WRITE of the \(count) bytes read back into region \(index): \(show(w)); read again \(same ? "unchanged" : "different or unreadable")",
                "§1.5, §3.8")
    }
}
