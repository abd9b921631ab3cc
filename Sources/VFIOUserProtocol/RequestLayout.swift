/// How a client request's size compares with its command's layout.
public enum RequestSizeCheck: Equatable, Sendable {
    /// The payload is exactly as long as its fixed fields say, or the command's
    /// layout is variable (VERSION's JSON, DEVICE_FEATURE's feature data).
    case fits
    /// Fewer bytes than the layout needs: refused with EINVAL. The message ended
    /// where its header said, so the stream is still in step.
    case short(expected: Int, actual: Int)
    /// More bytes than the layout needs: refused with EINVAL, and the connection must
    /// close. The header's size cannot be right, and the bytes it swallowed may have
    /// been the start of the next request: reading on would parse the rest of that
    /// request as a header and answer a message that was never sent.
    case long(expected: Int, actual: Int)
}

/// The exact request payload size of each client → server command (reference §3),
/// computed from the fixed fields that size the rest (a write's `count`, SET_IRQS's
/// data type and count, WRITE_MULTI's `wr_cnt`, MIG_DATA_WRITE's `size`).
public enum RequestLayout {
    /// The payload size a request of `command` must have, or nil where the layout is
    /// variable or the command is not a client request. `payload` is the bytes after
    /// the 16-byte header; fields it is too short to hold count as zero (the check
    /// then reports it short of the fixed part).
    public static func expectedPayloadSize(_ command: Command, payload: ArraySlice<UInt8>) -> Int? {
        func u32(_ at: Int) -> UInt32 {
            guard payload.count >= at + 4 else { return 0 }
            let b = payload.startIndex + at
            return UInt32(payload[b]) | UInt32(payload[b + 1]) << 8 | UInt32(payload[b + 2]) << 16 | UInt32(payload[b + 3]) << 24
        }
        func u64(_ at: Int) -> UInt64 { UInt64(u32(at)) | UInt64(u32(at + 4)) << 32 }
        // Sizes beyond any message we accept are capped so the arithmetic cannot overflow.
        func capped(_ fixed: Int, _ variable: UInt64) -> Int { fixed + Int(min(variable, 1 << 40)) }
        switch command {
        case .dmaMap: return 32
        case .dmaUnmap:
            // The legacy GET_DIRTY_BITMAP form carries a 16-byte bitmap header.
            return u32(4) & 0x1 != 0 ? 40 : 24
        case .deviceGetRegionIOFDs: return 16
        case .deviceGetInfo, .deviceGetIRQInfo, .deviceGetRegionInfo:
            // Like the kernel's ioctls, a client may send its whole in/out buffer
            // (`argsz` bytes; the device-info-caps extension sends the kernel's 24-byte
            // struct): longer is fine as long as argsz covers it.
            let fixed = command == .deviceGetRegionInfo ? 32 : 16
            return payload.count > fixed && payload.count <= Int(u32(0)) ? payload.count : fixed
        case .deviceSetIRQs:
            let flags = SetIRQFlags(rawValue: u32(4))
            return flags.contains(.dataBool) ? capped(20, UInt64(u32(16))) : 20
        case .regionRead: return 16
        case .regionWrite: return capped(16, UInt64(u32(12)))
        case .deviceReset: return 0
        case .regionWriteMulti:
            let n = u64(0)
            return n > 1 << 32 ? Int.max : 8 + 24 * Int(n)
        case .migDataRead: return 8
        case .migDataWrite: return capped(8, UInt64(u32(4)))
        default:
            // VERSION and DEVICE_FEATURE are variable (their decoders check them);
            // DMA_READ/DMA_WRITE and unknown commands are refused before sizes matter.
            return nil
        }
    }

    /// Compares a request's payload with its layout.
    public static func check(_ command: Command, payload: ArraySlice<UInt8>) -> RequestSizeCheck {
        guard let expected = expectedPayloadSize(command, payload: payload) else { return .fits }
        if payload.count < expected { return .short(expected: expected, actual: payload.count) }
        if payload.count > expected { return .long(expected: expected, actual: payload.count) }
        return .fits
    }
}
