/// Why a message could not be decoded. Every case maps to the errno the server replies with.
public enum ProtocolError: Error, Equatable, Sendable {
    /// The payload ended before a field the layout requires.
    case truncated(needed: Int, available: Int)
    /// A field holds a value the protocol does not allow.
    case invalid(String)

    public var errno: VFIOErrno { .EINVAL }
}

/// Linux errno values used on the wire (reference, conventions section).
public struct VFIOErrno: RawRepresentable, Hashable, Sendable, CustomStringConvertible, Error {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ v: UInt32) { rawValue = v }

    public static let EPERM = VFIOErrno(1)
    public static let ENOENT = VFIOErrno(2)
    public static let EIO = VFIOErrno(5)
    public static let E2BIG = VFIOErrno(7)
    public static let EBADF = VFIOErrno(9)
    public static let EAGAIN = VFIOErrno(11)
    public static let ENOMEM = VFIOErrno(12)
    public static let EACCES = VFIOErrno(13)
    public static let EFAULT = VFIOErrno(14)
    public static let EBUSY = VFIOErrno(16)
    public static let EEXIST = VFIOErrno(17)
    public static let ENODEV = VFIOErrno(19)
    public static let EINVAL = VFIOErrno(22)
    public static let ENOSPC = VFIOErrno(28)
    public static let ERANGE = VFIOErrno(34)
    public static let ENOSYS = VFIOErrno(38)
    public static let ENOMSG = VFIOErrno(42)
    /// A migration stream ended before its END record.
    public static let ENODATA = VFIOErrno(61)
    public static let EPROTO = VFIOErrno(71)
    /// A migration stream failed its checksum or framing checks.
    public static let EBADMSG = VFIOErrno(74)
    public static let EOPNOTSUPP = VFIOErrno(95)
    public static let ECONNRESET = VFIOErrno(104)
    public static let ENOTCONN = VFIOErrno(107)
    public static let ETIMEDOUT = VFIOErrno(110)
    /// A device job outlived the state it started from (the device was reset meanwhile).
    public static let ECANCELED = VFIOErrno(125)

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
