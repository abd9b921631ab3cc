/// DEVICE_FEATURE request and reply payload (reference §3.12): `argsz` u32,
/// `flags` u32 (feature index in bits 0-15, GET/SET/PROBE above), then
/// feature-specific data. Typed data layouts are in Migration.swift; decode
/// them with ``decodeData(as:)``.
public struct DeviceFeature: WirePayload, Hashable {
    public static let prefixSize = 8

    public static let featureMask: UInt32 = 0xffff
    public static let get: UInt32 = 0x10000
    public static let set: UInt32 = 0x20000
    public static let probe: UInt32 = 0x40000

    /// Feature indices (`VFIO_DEVICE_FEATURE_*`).
    public static let migration: UInt16 = 1
    public static let migDeviceState: UInt16 = 2
    public static let dmaLoggingStart: UInt16 = 6
    public static let dmaLoggingStop: UInt16 = 7
    public static let dmaLoggingReport: UInt16 = 8
    /// Not in the vfio-user SPEC (Linux only); clients treat failure as "unknown".
    public static let migDataSize: UInt16 = 9

    /// Largest reply payload the client can take (8 + data).
    public var argsz: UInt32
    public var flags: UInt32
    public var data: [UInt8]

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

    public var feature: UInt16 { UInt16(truncatingIfNeeded: flags & Self.featureMask) }
    public var isGet: Bool { flags & Self.get != 0 }
    public var isSet: Bool { flags & Self.set != 0 }
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

    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = try r.u32()
        data = Array(r.rest())
    }

    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags); w.append(data)
    }
}
