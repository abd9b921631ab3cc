/// vfio-user command numbers (reference §3.0).
public struct Command: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(_ v: UInt16) { rawValue = v }

    public static let version = Command(1)
    public static let dmaMap = Command(2)
    public static let dmaUnmap = Command(3)
    public static let deviceGetInfo = Command(4)
    public static let deviceGetRegionInfo = Command(5)
    public static let deviceGetRegionIOFDs = Command(6)
    public static let deviceGetIRQInfo = Command(7)
    public static let deviceSetIRQs = Command(8)
    public static let regionRead = Command(9)
    public static let regionWrite = Command(10)
    public static let dmaRead = Command(11)
    public static let dmaWrite = Command(12)
    public static let deviceReset = Command(13)
    public static let dirtyPages = Command(14)
    public static let regionWriteMulti = Command(15)
    public static let deviceFeature = Command(16)
    public static let migDataRead = Command(17)
    public static let migDataWrite = Command(18)

    public var description: String {
        switch rawValue {
        case 1: "VERSION"; case 2: "DMA_MAP"; case 3: "DMA_UNMAP"; case 4: "DEVICE_GET_INFO"
        case 5: "DEVICE_GET_REGION_INFO"; case 6: "DEVICE_GET_REGION_IO_FDS"; case 7: "DEVICE_GET_IRQ_INFO"
        case 8: "DEVICE_SET_IRQS"; case 9: "REGION_READ"; case 10: "REGION_WRITE"; case 11: "DMA_READ"
        case 12: "DMA_WRITE"; case 13: "DEVICE_RESET"; case 14: "DIRTY_PAGES"; case 15: "REGION_WRITE_MULTI"
        case 16: "DEVICE_FEATURE"; case 17: "MIG_DATA_READ"; case 18: "MIG_DATA_WRITE"
        default: "command \(rawValue)"
        }
    }
}

/// The 16-byte header in front of every message (reference §1.2).
public struct MessageHeader: Hashable, Sendable {
    public static let size = 16

    /// Bits 0-3 of `flags`.
    public enum Kind: UInt32, Sendable { case command = 0, reply = 1 }
    public static let typeMask: UInt32 = 0xF
    public static let noReplyFlag: UInt32 = 0x10
    public static let errorFlag: UInt32 = 0x20

    public var messageID: UInt16
    public var command: Command
    /// Total size including this header.
    public var messageSize: UInt32
    public var flags: UInt32
    public var errorNumber: UInt32

    public init(messageID: UInt16, command: Command, messageSize: UInt32, flags: UInt32 = 0, errorNumber: UInt32 = 0) {
        self.messageID = messageID
        self.command = command
        self.messageSize = messageSize
        self.flags = flags
        self.errorNumber = errorNumber
    }

    /// nil when the type bits are neither command nor reply.
    public var kind: Kind? { Kind(rawValue: flags & Self.typeMask) }
    public var isReply: Bool { flags & Self.typeMask == Kind.reply.rawValue }
    public var noReply: Bool { flags & Self.noReplyFlag != 0 }
    public var isError: Bool { flags & Self.errorFlag != 0 }
    public var payloadSize: Int { Int(messageSize) - Self.size }

    public func encode(into w: inout WireWriter) {
        w.u16(messageID); w.u16(command.rawValue); w.u32(messageSize); w.u32(flags); w.u32(errorNumber)
    }

    public var bytes: [UInt8] {
        var w = WireWriter(capacity: 16)
        encode(into: &w)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8], at offset: Int = 0) throws(ProtocolError) -> MessageHeader {
        var r = WireReader(bytes, from: offset)
        return MessageHeader(
            messageID: try r.u16(), command: Command(try r.u16()), messageSize: try r.u32(),
            flags: try r.u32(), errorNumber: try r.u32())
    }

    /// Checks that do not depend on negotiated state: a framing failure here means
    /// the stream can no longer be trusted.
    public func validateFraming(maxMessageSize: Int) throws(ProtocolError) {
        guard messageSize >= UInt32(Self.size) else { throw .invalid("msg_size \(messageSize) < 16") }
        guard Int(messageSize) <= maxMessageSize else { throw .invalid("msg_size \(messageSize) > \(maxMessageSize)") }
    }

    public static func reply(to request: MessageHeader, payloadSize: Int) -> MessageHeader {
        MessageHeader(messageID: request.messageID, command: request.command,
                      messageSize: UInt32(Self.size + payloadSize), flags: Kind.reply.rawValue)
    }

    public static func errorReply(to request: MessageHeader, errno: VFIOErrno) -> MessageHeader {
        MessageHeader(messageID: request.messageID, command: request.command, messageSize: UInt32(Self.size),
                      flags: Kind.reply.rawValue | errorFlag, errorNumber: errno.rawValue)
    }
}
