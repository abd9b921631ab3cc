// Migration v2 payloads (reference §5): DEVICE_FEATURE data layouts and the
// MIG_DATA_READ/WRITE stream commands. QEMU 10.1 sends none of these; they
// serve libvfio-user-compatible clients.

/// Data of the MIGRATION feature (GET): a u64 of these flags.
public struct MigrationFeatureFlags: OptionSet, Hashable, WirePayload {
    /// The flag bits as carried on the wire.
    public var rawValue: UInt64
    /// Wraps raw flag bits.
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Mandatory.
    public static let stopCopy = MigrationFeatureFlags(rawValue: 0x1)
    /// Not for vfio-user.
    public static let p2p = MigrationFeatureFlags(rawValue: 0x2)
    /// `VFIO_MIGRATION_PRE_COPY`: the device supports PRE_COPY (iterative pre-copy rounds).
    public static let preCopy = MigrationFeatureFlags(rawValue: 0x4)

    /// Reads the u64 of flags.
    public init(from r: inout WireReader) throws(ProtocolError) { rawValue = try r.u64() }
    /// Writes the u64 of flags.
    public func encode(into w: inout WireWriter) { w.u64(rawValue) }
}

/// `enum vfio_device_mig_state`.
public enum MigrationState: UInt32, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// `VFIO_DEVICE_STATE_ERROR`: the device failed a transition; only a reset leaves it.
    case error = 0
    /// `VFIO_DEVICE_STATE_STOP`: not running, state frozen.
    case stop = 1
    /// `VFIO_DEVICE_STATE_RUNNING`: normal operation.
    case running = 2
    /// `VFIO_DEVICE_STATE_STOP_COPY`: stopped, the final state is read from the data stream.
    case stopCopy = 3
    /// `VFIO_DEVICE_STATE_RESUMING`: stopped, state is written into the data stream.
    case resuming = 4
    /// `VFIO_DEVICE_STATE_RUNNING_P2P`: running without peer-to-peer DMA (not for vfio-user).
    case runningP2P = 5
    /// `VFIO_DEVICE_STATE_PRE_COPY`: running while initial state is read.
    case preCopy = 6
    /// `VFIO_DEVICE_STATE_PRE_COPY_P2P`: PRE_COPY without peer-to-peer DMA (not for vfio-user).
    case preCopyP2P = 7

    /// The kernel's name without the prefix (`"STOP_COPY"`).
    public var description: String {
        switch self {
        case .error: "ERROR"; case .stop: "STOP"; case .running: "RUNNING"; case .stopCopy: "STOP_COPY"
        case .resuming: "RESUMING"; case .runningP2P: "RUNNING_P2P"; case .preCopy: "PRE_COPY"
        case .preCopyP2P: "PRE_COPY_P2P"
        }
    }
}

/// Data of the MIG_DEVICE_STATE feature (GET/SET), 8 bytes.
public struct MigDeviceState: WirePayload, Hashable {
    /// The raw state number (`MigrationState` when known).
    public var deviceState: UInt32
    /// Unused in vfio-user (the stream goes over MIG_DATA_READ/WRITE); send 0.
    public var dataFD: UInt32

    /// A payload with a raw state number.
    public init(deviceState: UInt32, dataFD: UInt32 = 0) {
        self.deviceState = deviceState
        self.dataFD = dataFD
    }

    /// A payload asking for `state`.
    public init(state: MigrationState, dataFD: UInt32 = 0) { self.init(deviceState: state.rawValue, dataFD: dataFD) }

    /// nil for values outside the enum.
    public var state: MigrationState? { MigrationState(rawValue: deviceState) }

    /// Reads `device_state` and `data_fd`.
    public init(from r: inout WireReader) throws(ProtocolError) { deviceState = try r.u32(); dataFD = try r.u32() }
    /// Writes `device_state` and `data_fd`.
    public func encode(into w: inout WireWriter) { w.u32(deviceState); w.u32(dataFD) }
}

/// An IOVA range for DMA logging.
public struct DMALoggingRange: Hashable, Sendable {
    /// First IOVA of the range.
    public var iova: UInt64
    /// Bytes in the range.
    public var length: UInt64
    /// A range of `length` bytes from `iova`.
    public init(iova: UInt64, length: UInt64) {
        self.iova = iova
        self.length = length
    }
}

/// Data of DMA_LOGGING_START (SET): `page_size` u64, `num_ranges` u32,
/// reserved u32, ranges inline (Linux passes a pointer instead). No ranges
/// means "log everything". The reply echoes it with the chosen page size.
public struct DMALoggingStart: WirePayload, Hashable {
    /// Logging granularity in bytes (a power of two).
    public var pageSize: UInt64
    /// The ranges to log; empty logs every mapping.
    public var ranges: [DMALoggingRange]

    /// A request for `ranges` at `pageSize`.
    public init(pageSize: UInt64, ranges: [DMALoggingRange] = []) {
        self.pageSize = pageSize
        self.ranges = ranges
    }

    /// Decodes page size, range count and ranges; throws `.truncated` when the ranges are short.
    public init(from r: inout WireReader) throws(ProtocolError) {
        pageSize = try r.u64()
        let n = Int(try r.u32())
        try r.skip(4)
        guard n <= r.remaining / 16 else { throw .truncated(needed: 16 * n, available: r.remaining) }
        ranges = []
        ranges.reserveCapacity(n)
        for _ in 0 ..< n { ranges.append(DMALoggingRange(iova: try r.u64(), length: try r.u64())) }
    }

    /// Writes page size, range count and ranges.
    public func encode(into w: inout WireWriter) {
        w.u64(pageSize); w.u32(UInt32(truncatingIfNeeded: ranges.count)); w.u32(0)
        for range in ranges { w.u64(range.iova); w.u64(range.length) }
    }
}

/// Data of DMA_LOGGING_REPORT (GET): `iova`, `length`, `page_size` (u64 each),
/// and in the reply the bitmap: bit k (LSB-first in u64 word k / 64) is page
/// `iova + k * page_size`. The request carries no bitmap.
public struct DMALoggingReport: WirePayload, Hashable {
    /// Bytes before the bitmap.
    public static let fixedSize = 24

    /// First IOVA of the reported range.
    public var iova: UInt64
    /// Bytes in the range.
    public var length: UInt64
    /// Page size of the bitmap's bits.
    public var pageSize: UInt64
    /// One bit per page, least significant first; empty in the request.
    public var bitmap: [UInt64]

    /// A request (no bitmap) or a reply.
    public init(iova: UInt64, length: UInt64, pageSize: UInt64, bitmap: [UInt64] = []) {
        self.iova = iova
        self.length = length
        self.pageSize = pageSize
        self.bitmap = bitmap
    }

    /// u64 words the bitmap needs: ⌈length / pageSize / 64⌉ (pages rounded up). 0 for page size 0.
    public static func bitmapWords(length: UInt64, pageSize: UInt64) -> Int {
        guard pageSize > 0 else { return 0 }
        let pages = length / pageSize + (length % pageSize == 0 ? 0 : 1)
        return Int(clamping: pages / 64 + (pages % 64 == 0 ? 0 : 1))
    }

    /// Decodes the bitmap as all whole u64 words after the fixed part.
    public init(from r: inout WireReader) throws(ProtocolError) {
        iova = try r.u64(); length = try r.u64(); pageSize = try r.u64()
        let n = r.remaining / 8
        bitmap = []
        bitmap.reserveCapacity(n)
        for _ in 0 ..< n { bitmap.append(try r.u64()) }
    }

    /// Writes the fixed fields, then the bitmap words.
    public func encode(into w: inout WireWriter) {
        w.u64(iova); w.u64(length); w.u64(pageSize)
        for word in bitmap { w.u64(word) }
    }
}

/// Data of MIG_DATA_SIZE (GET; Linux only): estimated bytes left for STOP_COPY.
public struct MigDataSize: WirePayload, Hashable {
    /// Bytes the device still expects to produce in STOP_COPY.
    public var stopCopyLength: UInt64
    /// A payload with the given estimate.
    public init(stopCopyLength: UInt64) { self.stopCopyLength = stopCopyLength }
    /// Reads the u64 estimate.
    public init(from r: inout WireReader) throws(ProtocolError) { stopCopyLength = try r.u64() }
    /// Writes the u64 estimate.
    public func encode(into w: inout WireWriter) { w.u64(stopCopyLength) }
}

/// MIG_DATA_READ request (reference §5.3).
public struct MigDataRead: WirePayload, Hashable {
    /// Largest reply payload (≥ 8 + size).
    public var argsz: UInt32
    /// Bytes wanted.
    public var size: UInt32

    /// A request for `size` bytes with room for `argsz`.
    public init(argsz: UInt32, size: UInt32) {
        self.argsz = argsz
        self.size = size
    }

    /// Reads `argsz` and `size`.
    public init(from r: inout WireReader) throws(ProtocolError) { argsz = try r.u32(); size = try r.u32() }
    /// Writes `argsz` and `size`.
    public func encode(into w: inout WireWriter) { w.u32(argsz); w.u32(size) }
}

/// `argsz`, `size`, then `size` bytes of the migration stream: the layout of both a
/// MIG_DATA_READ reply (`argsz` = 8 + returned bytes; a short `size` means no more
/// data for now) and a MIG_DATA_WRITE request (whose reply is empty).
///
/// Decoding takes exactly `size` bytes and fails if fewer are present: libvfio-user
/// pads a read reply to the requested size, so `msg_size` does not give the length.
public struct MigDataChunk: WirePayload, Hashable {
    /// Header plus data bytes, as sent.
    public var argsz: UInt32
    /// Stream bytes in `data`.
    public var size: UInt32
    /// The stream bytes.
    public var data: [UInt8]

    /// A chunk with explicit fields.
    public init(argsz: UInt32, size: UInt32, data: [UInt8]) {
        self.argsz = argsz
        self.size = size
        self.data = data
    }

    /// A chunk carrying `data`, with `argsz` and `size` derived from it.
    public init(data: [UInt8]) {
        self.init(argsz: UInt32(8 + data.count), size: UInt32(data.count), data: data)
    }

    /// Decodes the 8-byte prefix and exactly `size` data bytes; throws `.truncated` when fewer are there.
    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); size = try r.u32()
        data = Array(try r.bytes(Int(size)))
    }

    /// Writes `argsz`, `size` and the data.
    public func encode(into w: inout WireWriter) { w.u32(argsz); w.u32(size); w.append(data) }
}

/// MIG_DATA_READ reply.
public typealias MigDataReadReply = MigDataChunk
/// MIG_DATA_WRITE request.
public typealias MigDataWrite = MigDataChunk
