/// `vfio_irq_info` flags (reference §3.6).
public struct IRQInfoFlags: OptionSet, Hashable, Sendable {
    /// The flag bits as carried on the wire.
    public var rawValue: UInt32
    /// Wraps raw flag bits.
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
    /// Encoded size in bytes.
    public static let size = 16

    /// Size of the struct the sender can take (16).
    public var argsz: UInt32
    /// What the IRQ index supports; 0 in the request.
    public var flags: IRQInfoFlags
    /// The IRQ index asked about (`IRQIndex`).
    public var index: UInt32
    /// Vectors/lines; 0 = type not implemented.
    public var count: UInt32

    /// A request (`flags` and `count` 0) or a reply.
    public init(argsz: UInt32 = 16, flags: IRQInfoFlags = [], index: UInt32, count: UInt32 = 0) {
        self.argsz = argsz
        self.flags = flags
        self.index = index
        self.count = count
    }

    /// Decodes the 16 bytes; throws `.truncated` when they are not all there.
    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = IRQInfoFlags(rawValue: try r.u32()); index = try r.u32(); count = try r.u32()
    }

    /// Writes the 16 bytes.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags.rawValue); w.u32(index); w.u32(count)
    }
}

/// `vfio_irq_set` flags: one DATA bit and one ACTION bit (reference §3.7).
public struct SetIRQFlags: OptionSet, Hashable, Sendable {
    /// The flag bits as carried on the wire.
    public var rawValue: UInt32
    /// Wraps raw flag bits.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// `VFIO_IRQ_SET_DATA_NONE`: no data; the action applies to the whole range.
    public static let dataNone = SetIRQFlags(rawValue: 0x1)
    /// `VFIO_IRQ_SET_DATA_BOOL`: one byte per vector selects where the action applies.
    public static let dataBool = SetIRQFlags(rawValue: 0x2)
    /// `VFIO_IRQ_SET_DATA_EVENTFD`: one fd per vector (assign), or none (de-assign).
    public static let dataEventFD = SetIRQFlags(rawValue: 0x4)
    /// `VFIO_IRQ_SET_ACTION_MASK`: mask the vectors.
    public static let actionMask = SetIRQFlags(rawValue: 0x8)
    /// `VFIO_IRQ_SET_ACTION_UNMASK`: unmask the vectors.
    public static let actionUnmask = SetIRQFlags(rawValue: 0x10)
    /// `VFIO_IRQ_SET_ACTION_TRIGGER`: fire the vectors, or set the fds that signal them.
    public static let actionTrigger = SetIRQFlags(rawValue: 0x20)

    /// All DATA bits; exactly one must be set.
    public static let dataMask: SetIRQFlags = [.dataNone, .dataBool, .dataEventFD]
    /// All ACTION bits; exactly one must be set.
    public static let actionMaskBits: SetIRQFlags = [.actionMask, .actionUnmask, .actionTrigger]
}

/// DEVICE_SET_IRQS request payload: 20 bytes plus optional data.
///
/// Eventfds are not in the payload: they travel as SCM_RIGHTS, one per
/// sub-index, and zero fds with DATA_EVENTFD means "de-assign".
public struct SetIRQs: WirePayload, Hashable {
    /// Bytes before `data`.
    public static let fixedSize = 20

    /// Careful: `dataType` is optional, so compare an unwrapped value with
    /// `.none`, or spell it `DataType.none`; `dataType == .none` means nil.
    /// Which DATA bit is set.
    public enum DataType: Sendable, Hashable {
        /// `dataNone`: no data.
        case none
        /// `dataBool`: one byte per vector.
        case bool
        /// `dataEventFD`: fds travel with the message.
        case eventfd
    }
    /// Which ACTION bit is set.
    public enum Action: Sendable, Hashable {
        /// `actionMask`.
        case mask
        /// `actionUnmask`.
        case unmask
        /// `actionTrigger`.
        case trigger
    }

    /// Size of the whole request, data included.
    public var argsz: UInt32
    /// One DATA bit and one ACTION bit.
    public var flags: SetIRQFlags
    /// The IRQ index (`IRQIndex`).
    public var index: UInt32
    /// The first vector of the range.
    public var start: UInt32
    /// Vectors in the range; 0 with DATA_NONE and TRIGGER disables the index.
    public var count: UInt32
    /// Bytes after the fixed 20: for DATA_BOOL one u8 per sub-index.
    public var data: [UInt8]

    /// A request; `argsz` defaults to `fixedSize + data.count`.
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

    /// Decodes the fixed part; the rest of the payload becomes `data`.
    public init(from r: inout WireReader) throws(ProtocolError) {
        argsz = try r.u32(); flags = SetIRQFlags(rawValue: try r.u32())
        index = try r.u32(); start = try r.u32(); count = try r.u32()
        data = Array(r.rest())
    }

    /// Writes the fixed part and `data`.
    public func encode(into w: inout WireWriter) {
        w.u32(argsz); w.u32(flags.rawValue); w.u32(index); w.u32(start); w.u32(count)
        w.append(data)
    }
}
