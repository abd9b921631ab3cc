import Glibc
@_spi(Server) import PCICore
import VFIOUserProtocol
import VFIOUserTransport

/// DEVICE_FEATURE (migration and DMA logging) and the migration data stream
/// (reference §3.12, §5; docs/migration.md).
enum MigrationDispatch {
    /// Our extension: VFIO_MIG_GET_PRECOPY_INFO as a DEVICE_FEATURE GET (Linux has it
    /// as an ioctl on the data fd, vfio-user has no equivalent). Data: argsz u32,
    /// flags u32, initial_bytes u64, dirty_bytes u64. Valid in PRE_COPY and
    /// PRE_COPY_P2P only. The client library has the same constant.
    static let precopyInfoFeature: UInt16 = 0x8015
    /// Our extension "mig-data-fd" (docs/protocol-extensions.md): move the migration
    /// stream through an fd the client passes, instead of MIG_DATA_READ/WRITE messages.
    static let migDataFDFeature: UInt16 = 0x8016
    /// Logging page sizes we choose from (START's page_size is a hint, LINUX).
    static let loggingPageSizes: ClosedRange<UInt64> = 4096...(1 << 30)

    static func feature(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: DeviceFeature = try Dispatcher.decode(msg)
        try req.validate()
        let device = c.device
        let mig = device.migration
        let get = req.isGet, set = req.isSet, probe = req.isProbe
        func supported(get g: Bool, set s: Bool) -> Bool { (!get || g) && (!set || s) }
        func probeReply() -> Outcome { .reply(msg.payload.map { $0 }) }

        guard msg.fds.isEmpty || req.feature == migDataFDFeature else { return .error(.EINVAL) }
        switch req.feature {
        case migDataFDFeature:
            guard let mig, c.agreedExtensions.contains("mig-data-fd"), supported(get: false, set: true) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            guard msg.fds.count == 1, req.data.count >= 8, req.argsz >= 24 else { return .error(.EINVAL) }
            let direction = req.data.le32(at: 0)
            let bytes: UInt64
            switch direction {
            case 0: bytes = try saveStream(to: msg.fds[0].rawValue, mig, device, zeroCopy: c.options.migrationZeroCopy,
                                           stallTimeoutMs: c.options.clientReplyTimeoutMs)
            case 1: bytes = try loadStream(from: msg.fds[0].rawValue, mig, device, stallTimeoutMs: c.options.clientReplyTimeoutMs)
            default: return .error(.EINVAL)
            }
            var data = [UInt8](repeating: 0, count: 16)
            data.setLE32(direction, at: 0)
            data.setLE64(bytes, at: 8)
            return .reply(DeviceFeature(argsz: 24, flags: req.flags, data: data).encoded)
        case DeviceFeature.migration:
            guard let mig, supported(get: true, set: false) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            guard req.argsz >= 16 else { return .error(.EINVAL) }
            return .reply(DeviceFeature(argsz: 16, flags: req.flags, data: mig.featureFlags.encoded).encoded)

        case DeviceFeature.migDeviceState:
            guard let mig, supported(get: true, set: true) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            guard req.argsz >= 16 else { return .error(.EINVAL) }
            if set {
                let s: MigDeviceState = try req.decodeData()
                guard let target = s.state else { return .error(.EINVAL) }
                do {
                    try device.lock.withLock { () throws(VFIOErrno) in try mig.set(target) }
                    c.logger.debug("migration state \(target) via \(device.lock.withLock { mig.lastPath })")
                } catch {
                    let (now, why) = device.lock.withLock { (mig.state, mig.lastFailure) }
                    if let why { c.logger.warning("migration: \(why); device now \(now)") }
                    else { c.logger.debug("migration: \(now)→\(target) refused: \(error)") }
                    return .error(error)
                }
            }
            let now = device.lock.withLock { mig.state }
            return .reply(DeviceFeature(argsz: 16, flags: req.flags, data: MigDeviceState(state: now).encoded).encoded)

        case DeviceFeature.migDataSize:
            guard let mig, supported(get: true, set: false) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            guard req.argsz >= 16 else { return .error(.EINVAL) }
            let n = device.lock.withLock { mig.handler.stopCopySize() }
            return .reply(DeviceFeature(argsz: 16, flags: req.flags, data: MigDataSize(stopCopyLength: n).encoded).encoded)

        case precopyInfoFeature:
            guard let mig, supported(get: true, set: false) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            guard req.argsz >= 8 + 24 else { return .error(.EINVAL) }
            let info: (UInt64, UInt64)? = device.lock.withLock {
                guard mig.state == .preCopy || mig.state == .preCopyP2P else { return nil }
                let p = mig.handler.pendingBytes()
                return (p.initial, p.dirty)
            }
            guard let info else { return .error(.EINVAL) }
            var w = WireWriter(capacity: 24)
            w.u32(24); w.u32(0); w.u64(info.0); w.u64(info.1)
            return .reply(DeviceFeature(argsz: 32, flags: req.flags, data: w.bytes).encoded)

        case DeviceFeature.dmaLoggingStart:
            guard supported(get: false, set: true) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            var start: DMALoggingStart = try req.decodeData()
            // page_size is a hint: any power of two; we log at 4 KiB .. 1 GiB and say which.
            guard start.pageSize.nonzeroBitCount == 1 else { return .error(.EINVAL) }
            let chosen = min(max(start.pageSize, loggingPageSizes.lowerBound), loggingPageSizes.upperBound)
            let sorted = start.ranges.sorted { $0.iova < $1.iova }
            for (i, r) in sorted.enumerated() {
                guard r.length > 0, r.iova <= UInt64.max - r.length else { return .error(.EINVAL) }
                if i > 0 && sorted[i - 1].iova + sorted[i - 1].length > r.iova { return .error(.EINVAL) }
            }
            try device.startDirtyLogging(pageSize: chosen, ranges: start.ranges)
            start.pageSize = chosen
            return .reply(DeviceFeature(argsz: req.argsz, flags: req.flags, data: start.encoded).encoded)

        case DeviceFeature.dmaLoggingStop:
            guard supported(get: false, set: true) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            try device.stopDirtyLogging()
            return .reply(msg.payload.map { $0 })

        case DeviceFeature.dmaLoggingReport:
            guard supported(get: true, set: false) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            let r: DMALoggingReport = try req.decodeData()
            guard r.pageSize >= 1, r.pageSize.nonzeroBitCount == 1, r.length > 0,
                  r.iova <= UInt64.max - r.length else { return .error(.EINVAL) }
            let words = DMALoggingReport.bitmapWords(length: r.length, pageSize: r.pageSize)
            // A bitmap no message can carry is E2BIG, whatever argsz says.
            guard 8 + DMALoggingReport.fixedSize + 8 * words <= c.options.maxDataXferSize else { return .error(.E2BIG) }
            guard Int(req.argsz) >= 8 + DMALoggingReport.fixedSize + 8 * words else { return .error(.EINVAL) }
            let bitmap = try device.reportDirtyPages(iova: r.iova, length: r.length, pageSize: r.pageSize)
            let out = DMALoggingReport(iova: r.iova, length: r.length, pageSize: r.pageSize, bitmap: bitmap)
            let data = out.encoded
            return .reply(DeviceFeature(argsz: UInt32(8 + data.count), flags: req.flags, data: data).encoded)

        default:
            return .error(.EINVAL)
        }
    }

    /// MIG_DATA_READ: the reply payload is built in place (argsz, size, then the
    /// handler appends the data), so a chunk is copied once, from the device.
    static func dataRead(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: MigDataRead = try Dispatcher.decode(msg)
        guard let mig = c.device.migration else { return .error(.EINVAL) }
        guard Int(req.size) <= c.options.maxDataXferSize, UInt64(req.argsz) >= 8 + UInt64(req.size) else { return .error(.EINVAL) }
        var out = [UInt8]()
        out.reserveCapacity(8 + Int(req.size))
        out.append(contentsOf: repeatElement(0, count: 8))
        try c.device.lock.withLock { () throws(VFIOErrno) in
            guard mig.state == .preCopy || mig.state == .stopCopy || mig.state == .preCopyP2P else { throw .EINVAL }
            try mig.handler.readStateData(into: &out, max: Int(req.size))
        }
        let n = out.count - 8
        guard n <= Int(req.size) else { return .error(.EIO) }
        out.setLE32(UInt32(8 + n), at: 0)
        out.setLE32(UInt32(n), at: 4)
        return .reply(out)
    }

    /// MIG_DATA_WRITE: the data goes to the handler as a slice of the received
    /// message, without a copy. Stream errors are kept by the device and reported
    /// when RESUMING ends (docs/migration.md).
    static func dataWrite(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        guard let mig = c.device.migration else { return .error(.EINVAL) }
        let p = MessageHeader.size
        guard msg.bytes.count >= p + 8 else { return .error(.EINVAL) }
        let argsz = msg.bytes.le32(at: p), size = Int(msg.bytes.le32(at: p + 4))
        guard size <= c.options.maxDataXferSize, UInt64(argsz) >= 8 + UInt64(size),
              msg.bytes.count - p - 8 >= size else { return .error(.EINVAL) }
        try c.device.lock.withLock { () throws(VFIOErrno) in
            guard mig.state == .resuming else { throw .EINVAL }
            try mig.handler.writeStateData(msg.bytes[(p + 8)..<(p + 8 + size)])
        }
        return .reply([])
    }

    /// Writes the outgoing stream into `fd` until the device has no more for now
    /// (PRE_COPY) or the stream ends (STOP_COPY). The device lock is held per chunk only.
    /// Pieces the handler marks stable (a stopped device's memory) go out by reference
    /// when `fd` takes spliced pages (StreamWriter), so they are never copied here.
    /// Writes happen under the device lock, so a reader that stops reading must not
    /// stall the device's other clients for ever: a write that makes no progress for
    /// `stallTimeoutMs` ends the save with EIO.
    static func saveStream(to fd: Int32, _ mig: MigrationController, _ device: PCIDevice,
                           zeroCopy: Bool, stallTimeoutMs: Int) throws(VFIOErrno) -> UInt64 {
        let writer = StreamWriter(fd: fd, zeroCopy: zeroCopy, stallTimeoutMs: stallTimeoutMs)
        var total: UInt64 = 0
        var failed = false
        while true {
            let n = try device.lock.withLock { () throws(VFIOErrno) -> Int in
                guard mig.state == .preCopy || mig.state == .stopCopy || mig.state == .preCopyP2P else { throw .EINVAL }
                // Pieces may point into device memory: each is sent before the next is made.
                return try mig.handler.readStateData(max: streamChunk) { piece in
                    do {
                        if piece.isStable { try writer.writeByReference(piece.bytes) } else { try writer.write(piece.bytes) }
                        return true
                    } catch {
                        failed = true
                        return false
                    }
                }
            }
            if failed { throw .EIO }
            if n == 0 { return total }
            total += UInt64(n)
        }
    }

    /// Feeds everything read from `fd` until end of file into the RESUMING device.
    /// A writer that sends nothing for `stallTimeoutMs` ends the load with EIO: the
    /// connection's thread must not wait for ever on an fd that never ends.
    static func loadStream(from fd: Int32, _ mig: MigrationController, _ device: PCIDevice,
                           stallTimeoutMs: Int) throws(VFIOErrno) -> UInt64 {
        guard device.lock.withLock({ mig.state == .resuming }) else { throw .EINVAL }
        let wait = Int32(clamping: stallTimeoutMs > 0 ? stallTimeoutMs : -1)
        var total: UInt64 = 0
        var buf = [UInt8](repeating: 0, count: streamChunk)
        while true {
            // Bulk data (device memory) is read straight into place when the device allows.
            let (target, limit) = try device.lock.withLock { () throws(VFIOErrno) -> (UnsafeMutableRawBufferPointer?, Int?) in
                guard mig.state == .resuming else { throw .EINVAL }
                let t = mig.handler.directWriteTarget(max: directChunk)
                return (t, t == nil ? mig.handler.indirectWriteLimit() : nil)
            }
            guard waitReadable(fd, timeoutMs: wait) else { throw .EIO }
            if let target, let base = target.baseAddress, target.count > 0 {
                let n = read(fd, base, target.count)
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { throw .EIO }
                if n == 0 { return total }
                try device.lock.withLock { () throws(VFIOErrno) in
                    guard mig.state == .resuming else { throw .EINVAL }
                    try mig.handler.directWriteCommitted(UnsafeRawBufferPointer(start: base, count: n))
                }
                total += UInt64(n)
                continue
            }
            let want = max(1, min(streamChunk, limit ?? streamChunk))
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, want) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw .EIO }
            if n == 0 { return total }
            try device.lock.withLock { () throws(VFIOErrno) in
                guard mig.state == .resuming else { throw .EINVAL }
                try mig.handler.writeStateData(buf[0..<n])
            }
            total += UInt64(n)
        }
    }

    static let streamChunk = 1 << 20
    /// Device memory is read into place in pieces that stay in the L2 cache, so the
    /// device's check of each (a checksum) reads it from there and not from memory.
    static let directChunk = 256 << 10
}
