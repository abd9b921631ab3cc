/// `vfio_irq_info` flags (reference §3.6).
public struct IRQInfoFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Can signal through an eventfd.
    public static let eventfd = IRQInfoFlags(rawValue: 0x1)
    /// MASK/UNMASK actions work.
    public static let maskable = IRQInfoFlags(rawValue: 0x2)
    /// Masks itself after firing (level-triggered INTx).
    public static let automasked = IRQInfoFlags(rawValue: 0x4)
    /// Enabled vectors change only by disabling the whole index first.
    public static let noresize = IRQInfoFlags(rawValue: 0x8)
}

/// DEVICE_GET_IRQ_INFO request and reply payload (16 bytes).
public struct IRQInfo: WirePayload, Hashable {
    public static let size = 16

    public var argsz: UInt32
    public var flags: IRQInfoFlags
    public var index: UInt32
    /// Vectors/lines; 0 = type not implemented.
    public var count: UInt32

    public init(argsz: UInt32 = 16, flags: IRQInfoFlags = [], index: UInt32, count: UInt32 = 0) {
        self.argsz = argsz
        self.flags = flags
        self.index = index
        self.count = count
    }

    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = IRQInfoFlags(rawValue: try r.u32()); index = try r.u32(); count = try r.u32()
    }

    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags.rawValue); w.u32(index); w.u32(count)
    }
}

/// `vfio_irq_set` flags: one DATA bit and one ACTION bit (reference §3.7).
public struct SetIRQFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let dataNone = SetIRQFlags(rawValue: 0x1)
    public static let dataBool = SetIRQFlags(rawValue: 0x2)
    public static let dataEventFD = SetIRQFlags(rawValue: 0x4)
    public static let actionMask = SetIRQFlags(rawValue: 0x8)
    public static let actionUnmask = SetIRQFlags(rawValue: 0x10)
    public static let actionTrigger = SetIRQFlags(rawValue: 0x20)

    public static let dataMask: SetIRQFlags = [.dataNone, .dataBool, .dataEventFD]
    public static let actionMaskBits: SetIRQFlags = [.actionMask, .actionUnmask, .actionTrigger]
}

/// DEVICE_SET_IRQS request payload: 20 bytes plus optional data.
///
/// Eventfds are not in the payload: they travel as SCM_RIGHTS, one per
/// sub-index, and zero fds with DATA_EVENTFD means "de-assign".
public struct SetIRQs: WirePayload, Hashable {
    public static let fixedSize = 20

    /// Careful: `dataType` is optional, so compare an unwrapped value with
    /// `.none`, or spell it `DataType.none`; `dataType == .none` means nil.
    public enum DataType: Sendable, Hashable { case none, bool, eventfd }
    public enum Action: Sendable, Hashable { case mask, unmask, trigger }

    public var argsz: UInt32
    public var flags: SetIRQFlags
    public var index: UInt32
    public var start: UInt32
    public var count: UInt32
    /// Bytes after the fixed 20: for DATA_BOOL one u8 per sub-index.
    public var data: [UInt8]

    public init(argsz: UInt32? = nil, flags: SetIRQFlags, index: UInt32, start: UInt32, count: UInt32, data: [UInt8] = []) {
        self.argsz = argsz ?? UInt32(Self.fixedSize + data.count)
        self.flags = flags
        self.index = index
        self.start = start
        self.count = count
        self.data = data
    }

    /// The data type, or nil unless exactly one DATA bit is set.
    public var dataType: DataType? {
        switch flags.intersection(.dataMask) {
        case .dataNone: DataType.none
        case .dataBool: .bool
        case .dataEventFD: .eventfd
        default: nil
        }
    }

    /// The action, or nil unless exactly one ACTION bit is set.
    public var action: Action? {
        switch flags.intersection(.actionMaskBits) {
        case .actionMask: .mask
        case .actionUnmask: .unmask
        case .actionTrigger: .trigger
        default: nil
        }
    }

    /// Checks that do not depend on the device: known flag bits, exactly one
    /// data and one action bit, `argsz` covers the fixed part, BOOL data has
    /// `count` bytes, `count` 0 only with `start` 0 and NONE|TRIGGER
    /// (disable the index). Index and range checks are the device's job.
    public func validate() throws(ProtocolError) {
        guard flags.subtracting(SetIRQFlags.dataMask.union(.actionMaskBits)).isEmpty else {
            throw .invalid("SET_IRQS unknown flags 0x\(String(flags.rawValue, radix: 16))")
        }
        guard let dataType else { throw .invalid("SET_IRQS needs exactly one DATA flag") }
        guard let action else { throw .invalid("SET_IRQS needs exactly one ACTION flag") }
        guard argsz >= UInt32(Self.fixedSize) else { throw .invalid("SET_IRQS argsz \(argsz) < 20") }
        if dataType == .bool && data.count != Int(count) {
            throw .invalid("SET_IRQS DATA_BOOL with \(data.count) bytes for count \(count)")
        }
        if count == 0 {
            guard start == 0, dataType == DataType.none, action == .trigger else {
                throw .invalid("SET_IRQS count 0 is only valid as NONE|TRIGGER with start 0")
            }
        }
    }

    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = SetIRQFlags(rawValue: try r.u32())
        index = try r.u32(); start = try r.u32(); count = try r.u32()
        data = Array(r.rest())
    }

    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags.rawValue); w.u32(index); w.u32(start); w.u32(count)
        w.append(data)
    }
}
