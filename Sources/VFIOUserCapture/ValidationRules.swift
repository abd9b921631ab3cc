// The protocol rules `--validate` checks, each with a stable id, the rule in one
// sentence and where it comes from (sections of the reference,
// shared/reference/vfio-user-protocol.md, which follows QEMU's docs/interop/vfio-user.rst).
// docs/debugging.md lists them.

/// One rule of the protocol.
public struct ValidationRule: Hashable, Sendable, CustomStringConvertible {
    /// Stable identifier (`header.msg-size`), used in reports and to filter.
    public var id: String
    /// The rule in one sentence.
    public var text: String
    /// Where the protocol states it (`§1.2`).
    public var section: String

    /// `id: text (section)`.
    public var description: String { "\(id): \(text) (\(section))" }
}

extension ValidationRule {
    static func r(_ id: String, _ text: String, _ section: String) -> ValidationRule {
        ValidationRule(id: id, text: text, section: section)
    }

    /// `msg_size` covers header and payload.
    public static let msgSize = r("header.msg-size", "msg_size counts the 16-byte header and the whole payload", "§1.2")
    /// The type bits say command or reply.
    public static let type = r("header.type", "the type bits of flags are 0 (command) or 1 (reply)", "§1.2")
    /// Only defined flag bits, each in its direction.
    public static let reservedFlags = r("header.flags", "only bits 0-5 of flags are defined; NO_REPLY only on commands, ERROR only on replies", "§1.2")
    /// Commands carry no errno.
    public static let commandErrno = r("header.error-no", "a command's error_no is 0", "§1.2")
    /// Error replies have no payload.
    public static let errorReply = r("error.header-only", "an error reply is the 16-byte header only", "§1.2")
    /// Error replies carry a positive errno.
    public static let errnoRange = r("error.errno", "an error reply carries a positive errno (libvfio-user maps anything outside 1...4096 to EINVAL)", "§1.5, §6")
    /// Only known command numbers.
    public static let unknownCommand = r("command.unknown", "command numbers are 1...18; 14 (DIRTY_PAGES) was removed with migration v2", "§3.0")
    /// Each command goes in its own direction.
    public static let direction = r("command.direction", "DMA_READ/DMA_WRITE go server to client, every other command client to server", "§3.0")
    /// VERSION comes first, once.
    public static let versionFirst = r("version.first", "the client sends VERSION first and once", "§2.2")
    /// VERSION's layout and capability types.
    public static let versionLayout = r("version.layout", "VERSION: major u16, minor u16, a NUL-terminated JSON object with well-typed capabilities", "§2.1-2.3")
    /// The VERSION reply does not raise the version.
    public static let versionReply = r("version.reply", "the reply's major equals the proposal's and its minor is not larger", "§2.2")
    /// Every reply answers an outstanding command.
    public static let replyUnmatched = r("reply.unmatched", "every reply answers an outstanding command of the peer with the same msg_id", "§1.2")
    /// A reply repeats its command.
    public static let replyCommand = r("reply.command", "a reply repeats its command's number", "§1.2")
    /// NO_REPLY commands get no reply.
    public static let replyToNoReply = r("reply.no-reply", "a command sent with NO_REPLY gets no reply", "§1.2")
    /// No msg_id reused while outstanding.
    public static let idInUse = r("request.id-in-use", "a msg_id is not reused while its command still waits for a reply", "§1.2")
    /// No more fds than `max_msg_fds`.
    public static let fdLimit = r("fds.limit", "no message carries more fds than the receiver's max_msg_fds", "§1.4, §2.3")
    /// Only some messages carry fds.
    public static let fdUnexpected = r("fds.unexpected", "only DMA_MAP, SET_IRQS (eventfds) and the VERSION, REGION_INFO and REGION_IO_FDS replies carry fds", "§1.4")
    /// The right number of fds per message.
    public static let fdCount = r("fds.count", "DMA_MAP carries 0 or 1 fd, SET_IRQS with DATA_EVENTFD 0 or count, a REGION_INFO reply at most 1 (exactly 1 with MMAP)", "§1.4, §3.1, §3.4, §3.7")
    /// Payloads exactly as long as their layout.
    public static let payloadSize = r("size.layout", "the payload is exactly as long as the command's layout says", "§3")
    /// `argsz` covers the struct and bounds the reply.
    public static let argsz = r("size.argsz", "argsz covers the fixed struct, and a reply is not longer than the request's argsz", "§3.0")
    /// Data counts within `max_data_xfer_size`.
    public static let maxTransfer = r("size.max-data-xfer", "a data count does not exceed the receiver's max_data_xfer_size", "§1.5")
    /// Read replies return at most what was asked.
    public static let replyCount = r("size.reply-count", "a read reply returns at most the bytes asked for", "§3.8, §5.3")
    /// Only READ and WRITE in DMA_MAP flags.
    public static let dmaMapFlags = r("dma-map.flags", "DMA_MAP flags are READ (0x1) and WRITE (0x2) only", "§3.1")
    /// Only defined DMA_UNMAP flags, and ALL with no range.
    public static let dmaUnmapFlags = r("dma-unmap.flags", "DMA_UNMAP flags are 0, GET_DIRTY_BITMAP (0x1) or ALL (0x2); ALL has address and size 0", "§3.2")
    /// A valid `cap_offset` with CAPS.
    public static let regionInfoCaps = r("region-info.caps", "with CAPS set, cap_offset points at or after byte 32 and inside argsz", "§3.4")
    /// One DATA and one ACTION bit in SET_IRQS.
    public static let setIRQsFlags = r("set-irqs.flags", "SET_IRQS sets exactly one DATA bit and one ACTION bit", "§3.7")
    /// GET_REGION_IO_FDS requests have flags and count 0.
    public static let ioFDsRequest = r("io-fds.request", "GET_REGION_IO_FDS requests have flags 0 and count 0", "§3.5")
    /// REGION_WRITE_MULTI only when agreed, with valid entries.
    public static let writeMulti = r("write-multi", "REGION_WRITE_MULTI only after write_multiple was agreed, with 1...8-byte entries", "§3.11")
    /// DEVICE_FEATURE's GET/SET/PROBE combinations.
    public static let featureFlags = r("feature.flags", "DEVICE_FEATURE sets GET or SET, both only with PROBE", "§3.12")
    /// Known: QEMU 10.1 puts DMA data at message offset 28 (u32 count) and answers
    /// DMA_WRITE with a header-only reply (QEMU 11.1.3 follows the spec: docs/debugging.md).
    public static let dmaLayout = r("dma.layout", "DMA_READ/DMA_WRITE carry address u64, count u64, then the data at offset 32; the DMA_WRITE reply echoes address and count", "§3.9")

    /// Every rule, for documentation and `--validate` listings.
    public static let all: [ValidationRule] = [
        msgSize, type, reservedFlags, commandErrno, errorReply, errnoRange, unknownCommand, direction,
        versionFirst, versionLayout, versionReply, replyUnmatched, replyCommand, replyToNoReply, idInUse,
        fdLimit, fdUnexpected, fdCount, payloadSize, argsz, maxTransfer, replyCount, dmaMapFlags, dmaUnmapFlags,
        regionInfoCaps, setIRQsFlags, ioFDsRequest, writeMulti, featureFlags, dmaLayout,
    ]
}

/// One message that breaks a rule.
public struct Deviation: Hashable, Sendable, CustomStringConvertible {
    /// The rule broken.
    public var rule: ValidationRule
    /// Which way the message went.
    public var direction: CaptureDirection
    /// The message, as `--trace` shows it.
    public var message: String
    /// What exactly was wrong with it.
    public var detail: String
    /// Set when this is a deviation a known peer always makes (e.g. "QEMU 10.1").
    public var knownFrom: String?

    /// One line: rule, direction, message, detail and the rule's text, marked when a known peer always does it.
    public var description: String {
        var s = "[\(rule.id)] \(direction) \(message): \(detail); rule: \(rule.text) (\(rule.section))"
        if let knownFrom { s += " [known \(knownFrom) deviation]" }
        return s
    }
}
