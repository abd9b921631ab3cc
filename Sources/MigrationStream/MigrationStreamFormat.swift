import CXXHash
import VFIOUserProtocol

// The migration stream of our migratable devices (docs/migration.md): framed,
// versioned, checksummed records. This file has the record framing and the
// incremental loader; Checksums.swift the hashes; VariantDevices/MigratableVF.swift
// decides what goes in.

/// Record framing (docs/migration.md, "Stream format").
public enum MigrationRecord {
    /// "VFUR" little-endian.
    public static let magic: UInt32 = 0x5255_4656
    /// The stream format this build writes and reads. 2: XXH3 checksums (1 had XXH64).
    public static let formatMajor: UInt16 = 2
    /// The minor format version; a reader accepts any minor of its major.
    public static let formatMinor: UInt16 = 0
    /// Bytes of a record header: magic, tag, flags, length u64, seq u32, header check u32.
    public static let headerSize = 24
    /// Bytes of a record trailer: the XXH3 of header and payload.
    public static let trailerSize = 8
    /// Header flag bit: a reader that does not know the tag skips the record.
    public static let optionalFlag: UInt16 = 1
    /// Largest payload a loader accepts (RAM records are cut far below this).
    public static let maxPayload: UInt64 = 64 << 20

    /// Record types (docs/migration.md, "Stream format").
    public enum Tag: UInt16, Sendable {
        /// BEGIN: first and mandatory; format version and the device's identity.
        case begin = 0x01
        /// STOP_COPY_SIZE: optional; the source's u64 estimate of what is left.
        case stopCopySize = 0x02
        /// RAM: offset u64, then page data.
        case ram = 0x10
        /// CORE: config space, MSI-X table and programmed vectors (`PCIDevice.saveCoreState`).
        case core = 0x11
        /// DEVICE: the device model's registers.
        case device = 0x12
        /// END: last and mandatory; record count, byte count and the chain of all trailers.
        case end = 0x7F
    }

    /// The 24-byte header; its last u32 checks the first 20 bytes.
    public static func header(tag: UInt16, flags: UInt16 = 0, length: UInt64, seq: UInt32) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: headerSize)
        h.setLE32(magic, at: 0)
        h.setLE16(tag, at: 4)
        h.setLE16(flags, at: 6)
        h.setLE64(length, at: 8)
        h.setLE32(seq, at: 16)
        h.setLE32(UInt32(truncatingIfNeeded: XXH3.hash(h[0..<20])), at: 20)
        return h
    }

    /// A whole small record: header, payload, trailer (XXH3 of header and payload).
    public static func encode(tag: Tag, flags: UInt16 = 0, payload: [UInt8], seq: UInt32) -> (bytes: [UInt8], checksum: UInt64) {
        var out = header(tag: tag.rawValue, flags: flags, length: UInt64(payload.count), seq: seq)
        out.append(contentsOf: payload)
        let sum = XXH3.hash(out)
        var t = [UInt8](repeating: 0, count: 8)
        t.setLE64(sum, at: 0)
        out.append(contentsOf: t)
        return (out, sum)
    }
}

/// Why a stream was refused: an errno for the wire and a reason for people.
public struct MigrationStreamError: Error, Sendable, CustomStringConvertible {
    /// What goes on the wire: `EPROTO` for another format, `EBADMSG` for corruption, `ENODEV` for another device, ...
    public var errno: VFIOErrno
    /// For people: what was wrong and where in the stream.
    public var reason: String
    /// An error with its errno and reason.
    public init(_ errno: VFIOErrno, _ reason: String) {
        self.errno = errno
        self.reason = reason
    }
    /// The reason followed by the errno.
    public var description: String { "\(reason) (\(errno))" }
}

/// What the loader hands to the device.
public protocol MigrationStreamConsumer: AnyObject {
    /// The BEGIN record: nil accepts it, else why this device cannot load the stream.
    func begin(_ payload: [UInt8]) -> MigrationStreamError?
    /// RAM bytes at `offset`, applied as they arrive (the record is checked at its end).
    func ram(offset: UInt64, _ bytes: UnsafeRawBufferPointer) -> MigrationStreamError?
    /// Whether RAM `offset..<offset+length` exists.
    func ramRangeValid(offset: UInt64, length: UInt64) -> Bool
    /// Any other record, after its checksum passed.
    func record(_ tag: MigrationRecord.Tag, _ payload: [UInt8]) -> MigrationStreamError?
    /// Where RAM `offset..<offset+length` lives, so a RAM record's payload can be read
    /// straight into place; nil sends those bytes through `ram(offset:_:)`.
    func ramBuffer(offset: UInt64, length: Int) -> UnsafeMutableRawBufferPointer?
}

extension MigrationStreamConsumer {
    /// No direct placement: every RAM byte goes through `ram(offset:_:)`.
    public func ramBuffer(offset: UInt64, length: Int) -> UnsafeMutableRawBufferPointer? { nil }
}

/// Parses a stream incrementally, in chunks of any size. The first error sticks:
/// later bytes are ignored, and `finish()` reports it.
public final class MigrationStreamLoader {
    private enum Phase { case header, ramOffset, payload, trailer, done }
    private unowned let consumer: any MigrationStreamConsumer
    private var phase = Phase.header
    private var small: [UInt8] = []          // header, RAM offset, trailer or a small payload being gathered
    private var tag: UInt16 = 0
    private var flags: UInt16 = 0
    private var remaining: UInt64 = 0         // payload bytes still to come
    private var ramOffset: UInt64 = 0
    private var hasher = XXH3()
    private var chain = XXH3()
    private var seq: UInt32 = 0
    private var bytesBeforeRecord: UInt64 = 0
    /// Stream bytes consumed so far.
    public private(set) var bytesSeen: UInt64 = 0
    /// The first error, which stops the load; nil while the stream is good.
    public private(set) var error: MigrationStreamError?
    /// RAM payload bytes applied.
    public private(set) var ramBytes: UInt64 = 0

    /// A loader feeding `consumer`, which must outlive it (it is held unowned).
    public init(consumer: any MigrationStreamConsumer) { self.consumer = consumer }

    private func fail(_ e: VFIOErrno, _ why: String) {
        if error == nil { error = MigrationStreamError(e, why + " (at stream byte \(bytesSeen), record \(seq))") }
    }

    /// Feeds the next stream bytes (any chunking); after an error they are ignored.
    public func write(_ data: UnsafeRawBufferPointer) {
        var p = 0
        while p < data.count && error == nil {
            let rest = data.count - p
            switch phase {
            case .done:
                fail(.EBADMSG, "\(rest) bytes after the END record")
            case .header:
                let take = min(MigrationRecord.headerSize - small.count, rest)
                small.append(contentsOf: UnsafeRawBufferPointer(rebasing: data[p..<(p + take)]))
                p += take; bytesSeen += UInt64(take)
                if small.count == MigrationRecord.headerSize { startRecord() }
            case .ramOffset:
                let take = min(8 - small.count, rest)
                let piece = UnsafeRawBufferPointer(rebasing: data[p..<(p + take)])
                small.append(contentsOf: piece)
                hasher.update(piece)
                p += take; bytesSeen += UInt64(take); remaining -= UInt64(take)
                if small.count == 8 {
                    ramOffset = small.le64(at: 0)
                    small = []
                    guard consumer.ramRangeValid(offset: ramOffset, length: remaining) else {
                        fail(.EBADMSG, "RAM record for 0x\(String(ramOffset, radix: 16))+\(remaining) lies outside the device's RAM")
                        return
                    }
                    phase = remaining == 0 ? .trailer : .payload
                }
            case .payload:
                let take = Int(min(UInt64(rest), remaining))
                if tag == MigrationRecord.Tag.ram.rawValue {
                    // Hash and apply in 64 KiB pieces, each while it is still in cache.
                    var q = p
                    while q < p + take {
                        let n = min(64 << 10, p + take - q)
                        let piece = UnsafeRawBufferPointer(rebasing: data[q..<(q + n)])
                        hasher.update(piece)
                        if let e = consumer.ram(offset: ramOffset, piece) { error = e; return }
                        ramOffset += UInt64(n)
                        q += n
                    }
                    ramBytes += UInt64(take)
                } else {
                    let piece = UnsafeRawBufferPointer(rebasing: data[p..<(p + take)])
                    hasher.update(piece)
                    small.append(contentsOf: piece)
                }
                p += take; bytesSeen += UInt64(take); remaining -= UInt64(take)
                if remaining == 0 { phase = .trailer }
            case .trailer:
                let take = min(8 - trailer.count, rest)
                trailer.append(contentsOf: UnsafeRawBufferPointer(rebasing: data[p..<(p + take)]))
                p += take; bytesSeen += UInt64(take)
                if trailer.count == 8 {
                    let t = trailer.le64(at: 0)
                    trailer = []
                    let payload = small
                    small = []
                    endRecord(payload: payload, trailer: t)
                }
            }
        }
    }

    private var trailer: [UInt8] = []

    /// Feeds the next stream bytes (any chunking); after an error they are ignored.
    public func write(_ data: ArraySlice<UInt8>) {
        data.withUnsafeBytes { write($0) }
    }

    /// Where up to `max` of the next stream bytes may be read straight into their
    /// final place (the payload of a RAM record), or nil if they must go through
    /// `write`. After reading into it, call `commitDirect` with the count.
    public func directTarget(max: Int) -> UnsafeMutableRawBufferPointer? {
        guard error == nil, phase == .payload, tag == MigrationRecord.Tag.ram.rawValue, remaining > 0, max > 0 else { return nil }
        return consumer.ramBuffer(offset: ramOffset, length: Int(min(UInt64(max), remaining)))
    }

    /// How many bytes to read through `write` before asking for a `directTarget`
    /// again: exactly what is left of the framing in front of the next payload, so a
    /// read never swallows RAM data that could have gone straight into place.
    public var indirectReadLimit: Int? {
        switch phase {
        case .header: return MigrationRecord.headerSize - small.count
        case .ramOffset: return 8 - small.count
        case .trailer: return 8 - trailer.count
        case .payload: return tag == MigrationRecord.Tag.ram.rawValue ? nil : Int(clamping: remaining)
        case .done: return nil
        }
    }

    /// Accounts for `count` bytes read into the last `directTarget`: checksums them
    /// (still in cache) and moves on, exactly as `write` would have.
    public func commitDirect(_ bytes: UnsafeRawBufferPointer) {
        guard error == nil, phase == .payload, UInt64(bytes.count) <= remaining else {
            fail(.EBADMSG, "direct RAM data out of step with the stream")
            return
        }
        hasher.update(bytes)
        ramOffset += UInt64(bytes.count)
        ramBytes += UInt64(bytes.count)
        bytesSeen += UInt64(bytes.count)
        remaining -= UInt64(bytes.count)
        if remaining == 0 { phase = .trailer }
    }

    private func startRecord() {
        let h = small
        small = []
        let known = MigrationRecord.Tag(rawValue: h.le16(at: 4))
        guard h.le32(at: 0) == MigrationRecord.magic else {
            if seq == 0 { fail(.EPROTO, "not a vfu migration stream (bad magic)") } else { fail(.EBADMSG, "record header corrupted (bad magic)") }
            return
        }
        guard h.le32(at: 20) == UInt32(truncatingIfNeeded: XXH3.hash(h[0..<20])) else {
            // Format 1 checked its headers with XXH64: name it rather than call it corrupt.
            if seq == 0 && h.le32(at: 20) == UInt32(truncatingIfNeeded: XXH64.hash(h[0..<20])) {
                fail(.EPROTO, "stream format 1 (XXH64 checksums) is not supported (this device reads \(MigrationRecord.formatMajor).x)")
            } else {
                fail(.EBADMSG, "record header corrupted (header check failed)")
            }
            return
        }
        guard h.le32(at: 16) == seq else { fail(.EBADMSG, "record \(h.le32(at: 16)) where \(seq) was expected (reordered or lost data)"); return }
        tag = h.le16(at: 4)
        flags = h.le16(at: 6)
        remaining = h.le64(at: 8)
        guard remaining <= MigrationRecord.maxPayload else { fail(.EBADMSG, "record of \(remaining) bytes exceeds the \(MigrationRecord.maxPayload)-byte limit"); return }
        if seq == 0 && known != .begin { fail(.EPROTO, "stream does not start with a BEGIN record"); return }
        if known == nil && flags & MigrationRecord.optionalFlag == 0 {
            fail(.EOPNOTSUPP, "unknown mandatory record type 0x\(String(tag, radix: 16))"); return
        }
        hasher = XXH3()
        hasher.update(h)
        if known == .ram {
            guard remaining >= 8 else { fail(.EBADMSG, "RAM record shorter than its offset"); return }
            phase = .ramOffset
        } else {
            phase = remaining == 0 ? .trailer : .payload
        }
    }

    private func endRecord(payload: [UInt8], trailer: UInt64) {
        let sum = hasher.digest()
        guard sum == trailer else { fail(.EBADMSG, "record \(seq) (type 0x\(String(tag, radix: 16))) failed its checksum"); return }
        let known = MigrationRecord.Tag(rawValue: tag)
        if known == .end {
            guard payload.count >= 24 else { fail(.EBADMSG, "END record too short"); return }
            let count = payload.le32(at: 0), total = payload.le64(at: 8), digest = payload.le64(at: 16)
            guard count == seq, total == bytesBeforeRecord, digest == chain.digest() else {
                fail(.EBADMSG, "END record does not match the stream (records \(count)/\(seq), bytes \(total)/\(bytesBeforeRecord))")
                return
            }
            phase = .done
        } else {
            var t = [UInt8](repeating: 0, count: 8)
            t.setLE64(sum, at: 0)
            chain.update(t)
            if known == .begin {
                if let e = consumer.begin(payload) { error = e; return }
            } else if let known, known != .ram {
                if let e = consumer.record(known, payload) { error = e; return }
            }
            phase = .header
        }
        seq += 1
        bytesBeforeRecord = bytesSeen
    }

    /// Whether the whole stream, up to a valid END record, has been seen.
    public var complete: Bool { phase == .done && error == nil }

    /// The verdict at the end of RESUMING.
    public func finish() -> MigrationStreamError? {
        if let error { return error }
        if phase == .done { return nil }
        if bytesSeen == 0 { return MigrationStreamError(.ENODATA, "no migration data was written") }
        return MigrationStreamError(.ENODATA, "stream truncated after \(bytesSeen) bytes (record \(seq) incomplete or no END record)")
    }
}
