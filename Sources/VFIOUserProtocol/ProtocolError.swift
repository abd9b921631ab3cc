/// Why a message could not be decoded. Every case maps to the errno the server replies with.
public enum ProtocolError: Error, Equatable, Sendable {
    /// The payload ended before a field the layout requires.
    case truncated(needed: Int, available: Int)
    /// A field holds a value the protocol does not allow.
    case invalid(String)

    /// The errno a server replies with for an undecodable request: always `EINVAL`.
    public var errno: VFIOErrno { .EINVAL }
}

/// Linux errno values used on the wire (reference, conventions section).
public struct VFIOErrno: RawRepresentable, Hashable, Sendable, CustomStringConvertible, Error {
    /// The errno number (Linux values, on every host).
    public var rawValue: UInt32
    /// Wraps a raw errno number.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Wraps a raw errno number.
    public init(_ v: UInt32) { rawValue = v }

    /// `EPERM` (1): not allowed in the current state, e.g. DMA with bus mastering off.
    public static let EPERM = VFIOErrno(1)
    /// `ENOENT` (2): no such DMA mapping, region or entry.
    public static let ENOENT = VFIOErrno(2)
    /// `EIO` (5): the device or its backing store failed the access.
    public static let EIO = VFIOErrno(5)
    /// `E2BIG` (7): a transfer or message larger than negotiated or allowed.
    public static let E2BIG = VFIOErrno(7)
    /// `EBADF` (9): a passed file descriptor is missing or unusable.
    public static let EBADF = VFIOErrno(9)
    /// `EAGAIN` (11): try again later; nothing was done.
    public static let EAGAIN = VFIOErrno(11)
    /// `ENOMEM` (12): out of memory for the request.
    public static let ENOMEM = VFIOErrno(12)
    /// `EACCES` (13): the access is refused (e.g. a write to a read-only region).
    public static let EACCES = VFIOErrno(13)
    /// `EFAULT` (14): an address outside every mapping or region.
    public static let EFAULT = VFIOErrno(14)
    /// `EBUSY` (16): the device is owned by another client, or the operation conflicts with one in progress.
    public static let EBUSY = VFIOErrno(16)
    /// `EEXIST` (17): the range overlaps an existing mapping.
    public static let EEXIST = VFIOErrno(17)
    /// `ENODEV` (19): no such device, or a migration stream from a different device.
    public static let ENODEV = VFIOErrno(19)
    /// `EINVAL` (22): a malformed request or an argument out of range; the default for decode failures.
    public static let EINVAL = VFIOErrno(22)
    /// `ENOSPC` (28): a table is full (e.g. the client reached its DMA mapping limit).
    public static let ENOSPC = VFIOErrno(28)
    /// `ERANGE` (34): a value outside the range the field allows.
    public static let ERANGE = VFIOErrno(34)
    /// `ENOSYS` (38): an unknown or unsupported command.
    public static let ENOSYS = VFIOErrno(38)
    /// `ENOMSG` (42): an unexpected message type.
    public static let ENOMSG = VFIOErrno(42)
    /// A migration stream ended before its END record.
    public static let ENODATA = VFIOErrno(61)
    /// `EPROTO` (71): a protocol violation, or a migration stream of an unsupported format.
    public static let EPROTO = VFIOErrno(71)
    /// A migration stream failed its checksum or framing checks.
    public static let EBADMSG = VFIOErrno(74)
    /// `EOPNOTSUPP` (95): the operation or feature is not supported by this device.
    public static let EOPNOTSUPP = VFIOErrno(95)
    /// `ECONNRESET` (104): the peer closed the connection.
    public static let ECONNRESET = VFIOErrno(104)
    /// `ENOTCONN` (107): the connection is gone (e.g. a DMA request on a broken stream).
    public static let ENOTCONN = VFIOErrno(107)
    /// `ETIMEDOUT` (110): the peer did not answer in time.
    public static let ETIMEDOUT = VFIOErrno(110)
    /// A device job outlived the state it started from (the device was reset meanwhile).
    public static let ECANCELED = VFIOErrno(125)

    /// The symbolic name (`"EINVAL"`), or `errno N` for values without one.
    public var description: String {
        switch rawValue {
        case 1: "EPERM"; case 2: "ENOENT"; case 5: "EIO"; case 7: "E2BIG"; case 9: "EBADF"
        case 11: "EAGAIN"; case 12: "ENOMEM"; case 13: "EACCES"; case 14: "EFAULT"; case 16: "EBUSY"
        case 17: "EEXIST"; case 19: "ENODEV"; case 22: "EINVAL"; case 28: "ENOSPC"; case 34: "ERANGE"
        case 38: "ENOSYS"; case 42: "ENOMSG"; case 61: "ENODATA"; case 71: "EPROTO"; case 74: "EBADMSG"; case 95: "EOPNOTSUPP"
        case 104: "ECONNRESET"; case 107: "ENOTCONN"; case 110: "ETIMEDOUT"; case 125: "ECANCELED"
        default: "errno \(rawValue)"
        }
    }
}
