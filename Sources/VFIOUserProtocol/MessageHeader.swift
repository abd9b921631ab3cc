/// vfio-user command numbers (reference §3.0).
public struct Command: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The command number as carried in the header's `command` field.
    public var rawValue: UInt16
    /// Wraps a raw command number (unknown numbers are kept, not rejected).
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// Wraps a raw command number (unknown numbers are kept, not rejected).
    public init(_ v: UInt16) { rawValue = v }

    /// `VFIO_USER_VERSION` (1): protocol version and capability negotiation (§2).
    public static let version = Command(1)
    /// `VFIO_USER_DMA_MAP` (2): the client adds guest memory the device may reach (§3.1).
    public static let dmaMap = Command(2)
    /// `VFIO_USER_DMA_UNMAP` (3): the client removes guest memory (§3.2).
    public static let dmaUnmap = Command(3)
    /// `VFIO_USER_DEVICE_GET_INFO` (4): device flags and region/IRQ counts (§3.3).
    public static let deviceGetInfo = Command(4)
    /// `VFIO_USER_DEVICE_GET_REGION_INFO` (5): one region's size, flags and capabilities (§3.4).
    public static let deviceGetRegionInfo = Command(5)
    /// `VFIO_USER_DEVICE_GET_REGION_IO_FDS` (6): ioeventfds/ioregionfds for a region (§3.5).
    public static let deviceGetRegionIOFDs = Command(6)
    /// `VFIO_USER_DEVICE_GET_IRQ_INFO` (7): one IRQ index's count and flags (§3.6).
    public static let deviceGetIRQInfo = Command(7)
    /// `VFIO_USER_DEVICE_SET_IRQS` (8): eventfds, masks and triggers for interrupts (§3.7).
    public static let deviceSetIRQs = Command(8)
    /// `VFIO_USER_REGION_READ` (9): the client reads from a region (§3.8).
    public static let regionRead = Command(9)
    /// `VFIO_USER_REGION_WRITE` (10): the client writes to a region (§3.8).
    public static let regionWrite = Command(10)
    /// `VFIO_USER_DMA_READ` (11): the server reads client memory mapped without an fd (§3.9).
    public static let dmaRead = Command(11)
    /// `VFIO_USER_DMA_WRITE` (12): the server writes client memory mapped without an fd (§3.9).
    public static let dmaWrite = Command(12)
    /// `VFIO_USER_DEVICE_RESET` (13): a function-level reset of the device (§3.10).
    public static let deviceReset = Command(13)
    /// `VFIO_USER_DIRTY_PAGES` (14): migration v1 dirty bitmaps, removed from the protocol (§3.14).
    public static let dirtyPages = Command(14)
    /// `VFIO_USER_REGION_WRITE_MULTI` (15): several posted writes in one message (§3.11).
    public static let regionWriteMulti = Command(15)
    /// `VFIO_USER_DEVICE_FEATURE` (16): migration state, dirty logging and other features (§3.12).
    public static let deviceFeature = Command(16)
    /// `VFIO_USER_MIG_DATA_READ` (17): the client reads the migration stream (§3.13, §5.3).
    public static let migDataRead = Command(17)
    /// `VFIO_USER_MIG_DATA_WRITE` (18): the client writes the migration stream (§3.13, §5.3).
    public static let migDataWrite = Command(18)

    /// The protocol's name (`"REGION_READ"`), or `command N` for unknown numbers.
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
    /// Encoded size of the header in bytes.
    public static let size = 16

    /// Bits 0-3 of `flags`.
    public enum Kind: UInt32, Sendable {
        /// A request; the receiver answers unless `noReplyFlag` is set.
        case command = 0
        /// The answer to the command with the same `messageID`.
        case reply = 1
    }
    /// The bits of `flags` that hold the `Kind`.
    public static let typeMask: UInt32 = 0xF
    /// Flag bit: the sender wants no reply (posted write).
    public static let noReplyFlag: UInt32 = 0x10
    /// Flag bit: the reply reports an error; `errorNumber` holds the errno.
    public static let errorFlag: UInt32 = 0x20

    /// Matches a reply to its request; the sender chooses it, the reply echoes it.
    public var messageID: UInt16
    /// The command this message is or answers.
    public var command: Command
    /// Total size including this header.
    public var messageSize: UInt32
    /// Type bits (`typeMask`), `noReplyFlag` and `errorFlag`.
    public var flags: UInt32
    /// The errno of an error reply, 0 otherwise.
    public var errorNumber: UInt32

    /// A header with the given fields; `messageSize` includes the 16 header bytes.
    public init(messageID: UInt16, command: Command, messageSize: UInt32, flags: UInt32 = 0, errorNumber: UInt32 = 0) {
        self.messageID = messageID
        self.command = command
        self.messageSize = messageSize
        self.flags = flags
        self.errorNumber = errorNumber
    }

    /// nil when the type bits are neither command nor reply.
    public var kind: Kind? { Kind(rawValue: flags & Self.typeMask) }
    /// Whether the type bits say reply.
    public var isReply: Bool { flags & Self.typeMask == Kind.reply.rawValue }
    /// Whether the sender asked for no reply.
    public var noReply: Bool { flags & Self.noReplyFlag != 0 }
    /// Whether this is an error reply (`errorNumber` is then meaningful).
    public var isError: Bool { flags & Self.errorFlag != 0 }
    /// Bytes after the header, as the header claims (negative for a bad `messageSize`).
    public var payloadSize: Int { Int(messageSize) - Self.size }

    /// Appends the 16 header bytes.
    public func encode(into w: inout WireWriter) {
        w.u16(messageID); w.u16(command.rawValue); w.u32(messageSize); w.u32(flags); w.u32(errorNumber)
    }

    /// The 16 encoded header bytes.
    public var bytes: [UInt8] {
        var w = WireWriter(capacity: 16)
        encode(into: &w)
        return w.bytes
    }

    /// Decodes a header at `offset`; throws `.truncated` when fewer than 16 bytes are left. Validates nothing.
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

    /// A success reply header for `request` with a payload of `payloadSize` bytes.
    public static func reply(to request: MessageHeader, payloadSize: Int) -> MessageHeader {
        MessageHeader(messageID: request.messageID, command: request.command,
                      messageSize: UInt32(Self.size + payloadSize), flags: Kind.reply.rawValue)
    }

    /// An error reply header for `request`: header only, carrying `errno`.
    public static func errorReply(to request: MessageHeader, errno: VFIOErrno) -> MessageHeader {
        MessageHeader(messageID: request.messageID, command: request.command, messageSize: UInt32(Self.size),
                      flags: Kind.reply.rawValue | errorFlag, errorNumber: errno.rawValue)
    }
}
