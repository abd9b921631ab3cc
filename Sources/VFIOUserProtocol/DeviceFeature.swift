/// DEVICE_FEATURE request and reply payload (reference §3.12): `argsz` u32,
/// `flags` u32 (feature index in bits 0-15, GET/SET/PROBE above), then
/// feature-specific data. Typed data layouts are in Migration.swift; decode
/// them with ``decodeData(as:)``.
public struct DeviceFeature: WirePayload, Hashable {
    /// Bytes before the feature data: `argsz` u32 and `flags` u32.
    public static let prefixSize = 8

    /// The bits of `flags` that hold the feature index.
    public static let featureMask: UInt32 = 0xffff
    /// `VFIO_DEVICE_FEATURE_GET`: read the feature's data.
    public static let get: UInt32 = 0x10000
    /// `VFIO_DEVICE_FEATURE_SET`: write the feature's data.
    public static let set: UInt32 = 0x20000
    /// `VFIO_DEVICE_FEATURE_PROBE`: ask whether the feature is supported, moving no data.
    public static let probe: UInt32 = 0x40000

    /// Feature indices (`VFIO_DEVICE_FEATURE_*`).
    public static let migration: UInt16 = 1
    /// `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`: get or set the migration state.
    public static let migDeviceState: UInt16 = 2
    /// `VFIO_DEVICE_FEATURE_DMA_LOGGING_START`: start dirty logging of DMA ranges.
    public static let dmaLoggingStart: UInt16 = 6
    /// `VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP`: stop dirty logging.
    public static let dmaLoggingStop: UInt16 = 7
    /// `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT`: read and clear a range's dirty bitmap.
    public static let dmaLoggingReport: UInt16 = 8
    /// Not in the vfio-user SPEC (Linux only); clients treat failure as "unknown".
    public static let migDataSize: UInt16 = 9

    /// Largest reply payload the client can take (8 + data).
    public var argsz: UInt32
    /// Feature index (`featureMask`) and the `get`/`set`/`probe` bits.
    public var flags: UInt32
    /// The feature-specific data after the 8-byte prefix.
    public var data: [UInt8]

    /// A request or reply with raw fields.
    public init(argsz: UInt32, flags: UInt32, data: [UInt8] = []) {
        self.argsz = argsz
        self.flags = flags
        self.data = data
    }

    /// Builds flags from a feature index and the operations.
    public init(feature: UInt16, get: Bool = false, set: Bool = false, probe: Bool = false,
                argsz: UInt32? = nil, data: [UInt8] = []) {
        var f = UInt32(feature)
        if get { f |= Self.get }
        if set { f |= Self.set }
        if probe { f |= Self.probe }
        self.init(argsz: argsz ?? UInt32(Self.prefixSize + data.count), flags: f, data: data)
    }

    /// `feature` with typed data.
    public init(feature: UInt16, get: Bool = false, set: Bool = false, probe: Bool = false,
                argsz: UInt32? = nil, payload: some WirePayload) {
        self.init(feature: feature, get: get, set: set, probe: probe, argsz: argsz, data: payload.encoded)
    }

    /// The feature index (`migration`, `migDeviceState`, ...).
    public var feature: UInt16 { UInt16(truncatingIfNeeded: flags & Self.featureMask) }
    /// Whether the GET bit is set.
    public var isGet: Bool { flags & Self.get != 0 }
    /// Whether the SET bit is set.
    public var isSet: Bool { flags & Self.set != 0 }
    /// Whether the PROBE bit is set.
    public var isProbe: Bool { flags & Self.probe != 0 }

    /// GET and SET are exclusive unless PROBE is set; no unknown flag bits.
    public func validate() throws(ProtocolError) {
        guard flags & ~(Self.featureMask | Self.get | Self.set | Self.probe) == 0 else {
            throw .invalid("DEVICE_FEATURE unknown flags 0x\(String(flags, radix: 16))")
        }
        guard isGet || isSet || isProbe else { throw .invalid("DEVICE_FEATURE without GET, SET or PROBE") }
        guard isProbe || !(isGet && isSet) else { throw .invalid("DEVICE_FEATURE GET and SET without PROBE") }
    }

    /// Decodes `data` as a feature-specific layout.
    public func decodeData<T: WirePayload>(as type: T.Type = T.self) throws(ProtocolError) -> T {
        try T(payload: data)
    }

    /// Decodes the prefix; the rest of the payload becomes `data`.
    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = try r.u32()
        data = Array(r.rest())
    }

    /// Writes `argsz`, `flags` and `data`.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags); w.append(data)
    }
}
