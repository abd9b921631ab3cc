import VFIOUserProtocol

/// The VMM side of VFIO migration v2 over vfio-user (reference §5; docs/migration.md).
extension VFIOUserClient {
    /// Our PRECOPY_INFO extension feature (the server has the same constant).
    public static let precopyInfoFeature: UInt16 = 0x8015

    /// MIGRATION GET: what the device supports (STOP_COPY, P2P, PRE_COPY).
    public func migrationFlags() throws(ClientError) -> MigrationFeatureFlags {
        let d = try feature(DeviceFeature.migration, get: true, replyDataSize: 8)
        do { return try MigrationFeatureFlags(payload: d) } catch { throw .malformedReply(.deviceFeature, "\(error)") }
    }

    /// MIG_DEVICE_STATE GET.
    public func migrationState() throws(ClientError) -> MigrationState {
        let d = try feature(DeviceFeature.migDeviceState, get: true, replyDataSize: 8)
        guard d.count >= 8, let s = MigrationState(rawValue: d.le32(at: 0)) else {
            throw .malformedReply(.deviceFeature, "device state")
        }
        return s
    }

    /// MIG_DEVICE_STATE SET: the server walks every arc before it answers.
    @discardableResult
    public func setMigrationState(_ state: MigrationState) throws(ClientError) -> MigrationState {
        try setMigrationState(raw: state.rawValue)
    }

    /// SET with any raw value (tests send values outside the enum).
    @discardableResult
    public func setMigrationState(raw: UInt32) throws(ClientError) -> MigrationState {
        let d = try feature(DeviceFeature.migDeviceState, set: true, data: MigDeviceState(deviceState: raw).encoded)
        guard d.count >= 8, let s = MigrationState(rawValue: d.le32(at: 0)) else {
            throw .malformedReply(.deviceFeature, "device state")
        }
        return s
    }

    /// MIG_DATA_SIZE GET: estimated STOP_COPY bytes, nil if the server does not say.
    public func migrationDataSize() -> UInt64? {
        guard let d = try? feature(DeviceFeature.migDataSize, get: true, replyDataSize: 8), d.count >= 8 else { return nil }
        return d.le64(at: 0)
    }

    /// PRECOPY_INFO (our extension): bytes of the first pass still unread, and of
    /// state that changed after it was read. Starts a new round on the server when
    /// everything queued has been read.
    public func precopyInfo() throws(ClientError) -> (initial: UInt64, dirty: UInt64) {
        let d = try feature(Self.precopyInfoFeature, get: true, replyDataSize: 24)
        guard d.count >= 24 else { throw .malformedReply(.deviceFeature, "precopy info") }
        return (d.le64(at: 8), d.le64(at: 16))
    }

    /// MIG_DATA_READ: up to `max` bytes of the stream as a chunk that can be handed
    /// unchanged to `writeMigrationChunk` (the two payloads share a layout). An empty
    /// chunk means no more data now (PRE_COPY) or the end of the stream (STOP_COPY).
    public func readMigrationChunk(max: Int) throws(ClientError) -> MigrationChunk {
        var p = try call(.migDataRead, payload: MigDataRead(argsz: UInt32(8 + max), size: UInt32(max)).encoded)
        guard p.count >= 8 else { throw .malformedReply(.migDataRead, "short reply") }
        let n = Int(p.le32(at: 4))
        guard n <= max, p.count >= 8 + n else { throw .malformedReply(.migDataRead, "size \(n) of \(p.count - 8) bytes") }
        if p.count > 8 + n { p.removeLast(p.count - 8 - n) }   // libvfio-user pads to the requested size
        p.setLE32(UInt32(8 + n), at: 0)
        return MigrationChunk(payload: p)
    }

    /// MIG_DATA_READ of at most `max` bytes, copied out; empty when the device has nothing more for now.
    public func readMigrationData(max: Int) throws(ClientError) -> [UInt8] { Array(try readMigrationChunk(max: max).data) }

    /// MIG_DATA_WRITE of a chunk.
    public func writeMigrationChunk(_ chunk: MigrationChunk) throws(ClientError) {
        try call(.migDataWrite, payload: chunk.payload)
    }

    /// MIG_DATA_WRITE of `data`.
    public func writeMigrationData<C: Collection>(_ data: C) throws(ClientError) where C.Element == UInt8 {
        try writeMigrationChunk(MigrationChunk(data: data))
    }

    // MARK: Dirty page logging

    /// DMA_LOGGING_START; returns the page size the device chose.
    @discardableResult
    public func startDirtyLogging(pageSize: UInt64, ranges: [DMALoggingRange] = []) throws(ClientError) -> UInt64 {
        let d = try feature(DeviceFeature.dmaLoggingStart, set: true, data: DMALoggingStart(pageSize: pageSize, ranges: ranges).encoded)
        guard d.count >= 8 else { throw .malformedReply(.deviceFeature, "logging start") }
        return d.le64(at: 0)
    }

    /// DMA_LOGGING_STOP: ends dirty logging of every range.
    public func stopDirtyLogging() throws(ClientError) {
        _ = try feature(DeviceFeature.dmaLoggingStop, set: true)
    }

    /// DMA_LOGGING_REPORT: one bit per `pageSize` of [iova, iova+length), cleared on read.
    public func dirtyBitmap(iova: UInt64, length: UInt64, pageSize: UInt64) throws(ClientError) -> [UInt64] {
        let words = DMALoggingReport.bitmapWords(length: length, pageSize: pageSize)
        let d = try feature(DeviceFeature.dmaLoggingReport, get: true,
                            data: DMALoggingReport(iova: iova, length: length, pageSize: pageSize).encoded,
                            replyDataSize: DMALoggingReport.fixedSize + 8 * words)
        do {
            let r = try DMALoggingReport(payload: d)
            return Array(r.bitmap.prefix(words))
        } catch {
            throw .malformedReply(.deviceFeature, "logging report: \(error)")
        }
    }

    /// The addresses of the dirty pages the report names.
    public func dirtyPages(iova: UInt64, length: UInt64, pageSize: UInt64) throws(ClientError) -> [UInt64] {
        let bits = try dirtyBitmap(iova: iova, length: length, pageSize: pageSize)
        var out: [UInt64] = []
        for (w, word) in bits.enumerated() where word != 0 {
            for b in 0..<64 where word & (1 << UInt64(b)) != 0 { out.append(iova + UInt64(w * 64 + b) * pageSize) }
        }
        return out
    }
}

/// One MIG_DATA_READ reply payload (argsz, size, data), which is also a valid
/// MIG_DATA_WRITE payload: the stream moves without being copied again.
public struct MigrationChunk: Sendable {
    /// `argsz` u32, `size` u32, then the data: ready to send as a MIG_DATA_WRITE payload.
    public let payload: [UInt8]
    init(payload: [UInt8]) { self.payload = payload }

    /// A chunk carrying a copy of `data`.
    public init<C: Collection>(data: C) where C.Element == UInt8 {
        var p = [UInt8](repeating: 0, count: 8)
        p.reserveCapacity(8 + data.count)
        p.setLE32(UInt32(8 + data.count), at: 0)
        p.setLE32(UInt32(data.count), at: 4)
        p.append(contentsOf: data)
        payload = p
    }

    /// Stream bytes in the chunk.
    public var count: Int { payload.count - 8 }
    /// Whether the chunk carries no stream bytes (the end of a phase).
    public var isEmpty: Bool { count == 0 }
    /// The stream bytes, without copying.
    public var data: ArraySlice<UInt8> { payload[8...] }
}

/// What a refused migration stream means, from the errno of the RESUMING→STOP arc
/// (docs/migration.md, "Errors").
public enum MigrationStreamVerdict: Equatable, Sendable, CustomStringConvertible {
    /// `EBADMSG`: a checksum, header or sequence check failed.
    case corrupted
    /// `ENODATA`: the stream ended before its END record.
    case truncated
    /// `ENODEV`: the stream is from another kind of device or another configuration.
    case wrongDevice
    /// `EPROTO`: not a stream of ours, or a format this device does not read.
    case notAStream
    /// `EOPNOTSUPP`: a mandatory record this device does not know.
    case unknownRecord
    /// Any other errno.
    case other(VFIOErrno)

    /// The verdict for the errno of the refused RESUMING→STOP arc.
    public init(_ e: VFIOErrno) {
        switch e.rawValue {
        case 74: self = .corrupted
        case 61: self = .truncated
        case 19: self = .wrongDevice
        case 71: self = .notAStream
        case 95: self = .unknownRecord
        default: self = .other(e)
        }
    }

    /// What happened to the stream, for people.
    public var description: String {
        switch self {
        case .corrupted: "the stream is corrupted (a checksum or framing check failed)"
        case .truncated: "the stream is truncated (it ended before its END record)"
        case .wrongDevice: "the stream comes from a different kind of device"
        case .notAStream: "the data is not a migration stream this device reads"
        case .unknownRecord: "the stream has a record this device does not know"
        case .other(let e): "the device refused the stream (\(e))"
        }
    }
}

// MARK: Direct data path (our "mig-data-fd" extension, docs/protocol-extensions.md)

extension VFIOUserClient {
    /// DEVICE_FEATURE index of the mig-data-fd extension.
    public static let migDataFDFeature: UInt16 = 0x8016

    /// Whether the server agreed to move migration data through an fd.
    public var supportsMigrationDataFD: Bool { hasExtension("mig-data-fd") }

    /// Has the server write its outgoing stream into `fd` (until no more is available
    /// now, or the stream ends) or, with `load`, read a stream from `fd` until end of
    /// file. Blocks until the server is done; returns the bytes moved.
    public func transferMigrationStream(fd: Int32, load: Bool) throws(ClientError) -> UInt64 {
        var data = [UInt8](repeating: 0, count: 8)
        data.setLE32(load ? 1 : 0, at: 0)
        let req = DeviceFeature(argsz: 24, flags: UInt32(Self.migDataFDFeature) | DeviceFeature.set, data: data)
        let saved = timeoutMs
        timeoutMs = 600_000   // the whole stream moves before the reply
        defer { timeoutMs = saved }
        let reply = try call(.deviceFeature, payload: req.encoded, fds: [fd])
        guard reply.count >= 8 + 16 else { throw .malformedReply(.deviceFeature, "short mig-data-fd reply") }
        return reply.le64(at: 8 + 8)
    }
}
