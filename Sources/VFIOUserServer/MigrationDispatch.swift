import PCICore
import VFIOUserProtocol
import VFIOUserTransport

/// DEVICE_FEATURE (migration and DMA logging) and the migration data stream
/// (reference §3.12, §5).
enum MigrationDispatch {
    static func feature(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: DeviceFeature = try Dispatcher.decode(msg)
        try req.validate()
        let device = c.device
        let mig = device.migration
        let get = req.isGet, set = req.isSet, probe = req.isProbe
        func supported(get g: Bool, set s: Bool) -> Bool { (!get || g) && (!set || s) }
        func probeReply() -> Outcome { .reply(msg.payload.map { $0 }) }

        switch req.feature {
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
                try device.lock.withLock { () throws(VFIOErrno) in try mig.set(target) }
            }
            let now = device.lock.withLock { mig.state }
            return .reply(DeviceFeature(argsz: 16, flags: req.flags, data: MigDeviceState(state: now).encoded).encoded)

        case DeviceFeature.migDataSize:
            guard let mig, supported(get: true, set: false) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            guard req.argsz >= 16 else { return .error(.EINVAL) }
            let p = device.lock.withLock { mig.handler.pendingBytes() }
            return .reply(DeviceFeature(argsz: 16, flags: req.flags,
                                        data: MigDataSize(stopCopyLength: p.initial + p.dirty).encoded).encoded)

        case DeviceFeature.dmaLoggingStart:
            guard supported(get: false, set: true) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            let start: DMALoggingStart = try req.decodeData()
            try device.lock.withLock { () throws(VFIOErrno) in try device.dma.startLogging(pageSize: start.pageSize, ranges: start.ranges) }
            return .reply(msg.payload.map { $0 })

        case DeviceFeature.dmaLoggingStop:
            guard supported(get: false, set: true) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            let running = device.lock.withLock { device.dma.dirtyLog != nil }
            guard running else { return .error(.EINVAL) }
            device.lock.withLock { device.dma.stopLogging() }
            return .reply(msg.payload.map { $0 })

        case DeviceFeature.dmaLoggingReport:
            guard supported(get: true, set: false) else { return .error(.EINVAL) }
            if probe { return probeReply() }
            let r: DMALoggingReport = try req.decodeData()
            guard r.pageSize >= 1, r.pageSize.nonzeroBitCount == 1, r.length > 0,
                  r.iova <= UInt64.max - r.length else { return .error(.EINVAL) }
            let words = DMALoggingReport.bitmapWords(length: r.length, pageSize: r.pageSize)
            guard Int(req.argsz) >= 8 + DMALoggingReport.fixedSize + 8 * words else { return .error(.EINVAL) }
            guard 8 + DMALoggingReport.fixedSize + 8 * words <= c.options.maxDataXferSize else { return .error(.E2BIG) }
            let bitmap: [UInt64] = try device.lock.withLock { () throws(VFIOErrno) -> [UInt64] in
                guard var log = device.dma.dirtyLog else { throw .EINVAL }
                let b = log.report(iova: r.iova, length: r.length, reportPageSize: r.pageSize)
                device.dma.setDirtyLog(log)
                return b
            }
            let out = DMALoggingReport(iova: r.iova, length: r.length, pageSize: r.pageSize, bitmap: bitmap)
            let data = out.encoded
            return .reply(DeviceFeature(argsz: UInt32(8 + data.count), flags: req.flags, data: data).encoded)

        default:
            return .error(.EINVAL)
        }
    }

    static func dataRead(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: MigDataRead = try Dispatcher.decode(msg)
        guard let mig = c.device.migration else { return .error(.EINVAL) }
        guard Int(req.size) <= c.options.maxDataXferSize, UInt64(req.argsz) >= 8 + UInt64(req.size) else { return .error(.EINVAL) }
        let data: [UInt8] = try c.device.lock.withLock { () throws(VFIOErrno) -> [UInt8] in
            guard mig.state == .preCopy || mig.state == .stopCopy || mig.state == .preCopyP2P else { throw .EINVAL }
            return try mig.handler.readStateData(max: Int(req.size))
        }
        return .reply(MigDataReadReply(data: data).encoded)
    }

    static func dataWrite(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: MigDataWrite = try Dispatcher.decode(msg)
        guard let mig = c.device.migration else { return .error(.EINVAL) }
        guard Int(req.size) <= c.options.maxDataXferSize, req.data.count >= Int(req.size) else { return .error(.EINVAL) }
        try c.device.lock.withLock { () throws(VFIOErrno) in
            guard mig.state == .resuming else { throw .EINVAL }
            try mig.handler.writeStateData(req.data[0..<Int(req.size)])
        }
        return .reply([])
    }
}
