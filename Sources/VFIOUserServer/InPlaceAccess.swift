import Glibc
@_spi(Server) import PCICore
import VFIOUserProtocol
import VFIOUserTransport

/// The region-access hot path: REGION_READ, REGION_WRITE and REGION_WRITE_MULTI
/// served from the receive buffer in place, with no allocation, one receive call
/// per small request and one send per reply.
///
/// A read's reply goes out in one sendmsg from where the bytes lie: RAM straight
/// from the region's memory (header and data as two iovecs), registers and config
/// space through a scratch buffer the connection keeps. A write's data is handed to
/// the region as a slice of the receive buffer, or, for a large write to RAM,
/// received straight into the region's memory. Anything else (a message with fds,
/// one whose size does not fit its layout, a client that does not own the device
/// yet, tracing, errors before anything was consumed) goes through `Dispatcher`,
/// which decides exactly as it always has.
extension Connection {
    /// Serves the next message in place when it is a region access that needs
    /// nothing more; false, with nothing consumed, otherwise.
    func serveInPlace() -> Bool {
        // Tracing, a capture or validation (observer), and a control plane that watches or
        // has a fault armed (hooks), see every message: they take the general path. A
        // control plane that only counts is told of each access before its reply.
        guard versioned, !seesEveryMessage else { return false }
        let peeked: (header: MessageHeader, hasFDs: Bool)?
        do {
            peeked = try socket.peekMessage(maxMessageSize: options.maxMessageSize, maxFDs: options.maxMsgFDs,
                                            prefix: MessageHeader.size + RegionAccess.headerSize)
        } catch {
            return false  // receive() meets the same error and handles it
        }
        guard let (h, hasFDs) = peeked, !hasFDs, h.kind == .command else { return false }
        // Asked once the message is here (the peek may have waited long for it).
        if let hooks, hooks.needsEveryCommand { return false }
        let token = hooks?.commandWillStart(h, session: session) ?? 0
        switch h.command {
        case .regionRead: return readInPlace(h, token: token)
        case .regionWrite: return writeInPlace(h, token: token)
        case .regionWriteMulti: return writeMultiInPlace(h, token: token)
        default: return false
        }
    }

    /// A read's reply: from RAM with two iovecs, else from the scratch buffer that
    /// holds the data behind room for the head.
    private func sendReadReply(_ h: MessageHeader, offset: UInt64, region: UInt32, count: UInt32, memory: SharedMemory?,
                               scratch buf: UnsafeMutableRawBufferPointer) throws(TransportError) {
        let n = Int(count)
        let replySize = MessageHeader.size + RegionAccess.headerSize + n
        var head = Self.accessReplyHead(h, size: replySize, offset: offset, region: region, count: count)
        if let memory {
            try withUnsafeBytes(of: &head) { hb throws(TransportError) in
                try socket.send(head: hb, data: UnsafeRawBufferPointer(start: memory.mapping.base + Int(offset), count: n))
            }
            withExtendedLifetime(memory) {}
        } else {
            withUnsafeBytes(of: &head) { buf.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: 32) }
            try socket.send(raw: UnsafeRawBufferPointer(rebasing: buf[0..<replySize]))
        }
    }

    /// Tells a counting control plane of an access served here, before its reply goes
    /// out (a client that has the reply and asks the control plane finds it counted).
    @inline(__always)
    private func report(_ command: Command, _ region: UInt32, _ offset: UInt64, _ size: Int, _ error: VFIOErrno?,
                        entry: Int = 0, token: UInt64) {
        guard let hooks else { return }
        hooks.regionAccessServed(ServedRegionAccess(command: command, region: region, offset: offset, size: size, error: error,
                                                    entry: entry),
                                 session: session, token: token)
    }

    /// offset, region, count of the buffered access (its first 32 bytes are buffered).
    private func accessFields() -> (offset: UInt64, region: UInt32, count: UInt32) {
        let s = MessageHeader.size
        return (socket.bufferedWord64(at: s), socket.bufferedWord32(at: s + 8), socket.bufferedWord32(at: s + 12))
    }

    private func readInPlace(_ h: MessageHeader, token: UInt64) -> Bool {
        guard h.payloadSize == RegionAccess.headerSize else { return false }
        let (offset, region, count) = accessFields()
        socket.consumeMessage(size: Int(h.messageSize))
        do {
            guard Int(count) <= options.maxDataXferSize else { throw VFIOErrno.EINVAL }
            let n = Int(count)
            let replySize = MessageHeader.size + RegionAccess.headerSize + n
            // Registers and config space are read into the scratch buffer behind the
            // reply's head; RAM is not read at all but sent from where it lies.
            // (A large read asks for the memory first, so RAM never grows the scratch buffer.)
            var memory: SharedMemory?
            let buf: UnsafeMutableRawBufferPointer
            if replySize > inPlace.capacity {
                memory = try device.regionMemory(index: region, offset: offset, count: n, write: false)
                buf = memory == nil ? inPlace.scratch(replySize) : inPlace.scratch(0)
                if memory == nil {
                    try device.readRegion(index: region, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: buf[32..<replySize]))
                }
            } else {
                buf = inPlace.scratch(replySize)
                memory = try device.readRegionOrMemory(index: region, offset: offset,
                                                       into: UnsafeMutableRawBufferPointer(rebasing: buf[32..<replySize]))
            }
            report(.regionRead, region, offset, n, nil, token: token)
            if !h.noReply { try sendReadReply(h, offset: offset, region: region, count: count, memory: memory, scratch: buf) }
        } catch let e as VFIOErrno {
            logger.debug("\(h.command) #\(h.messageID) failed: \(e)")
            report(.regionRead, region, offset, Int(count), e, token: token)
            if !h.noReply { sendError(to: h, e) }
        } catch {
            logger.debug("send failed: \(error)")
            streamBroken = true
        }
        return true
    }

    private func writeInPlace(_ h: MessageHeader, token: UInt64) -> Bool {
        guard h.payloadSize >= RegionAccess.headerSize else { return false }
        let (offset, region, count) = accessFields()
        // Sizes that do not match the layout, and a first write (ownership), take the general path.
        guard h.payloadSize == RegionAccess.headerSize + Int(count), Int(count) <= options.maxDataXferSize,
              device.owner == session else { return false }
        let total = Int(h.messageSize)
        let dataStart = MessageHeader.size + RegionAccess.headerSize
        do {
            if total <= MessageSocket.receiveBufferSize {
                _ = try socket.peekMessage(maxMessageSize: options.maxMessageSize, maxFDs: options.maxMsgFDs, prefix: total)
                let b = socket.buffered
                socket.consumeMessage(size: total)  // the slice keeps the bytes
                // The reply goes out under the device lock: work the write started
                // (a doorbell's DMA) takes the lock before its first DMA_READ, so the
                // client always sees the reply to its access first.
                try device.lock.withLock { () throws in
                    try device.writeRegion(index: region, offset: offset,
                                           data: b[(b.startIndex + dataStart)..<(b.startIndex + total)])
                    report(.regionWrite, region, offset, Int(count), nil, token: token)
                    guard !h.noReply else { return }
                    var head = Self.accessReplyHead(h, size: dataStart, offset: offset, region: region, count: count)
                    try withUnsafeBytes(of: &head) { hb throws(TransportError) in try socket.send(raw: hb) }
                }
            } else {
                // Large: checked first, then the data lands in the region's memory.
                guard let memory = try? device.regionMemory(index: region, offset: offset, count: Int(count), write: true) else {
                    return false
                }
                try socket.receiveBody(size: total, skip: dataStart,
                                       into: UnsafeMutableRawBufferPointer(start: memory.mapping.base + Int(offset), count: Int(count)))
                withExtendedLifetime(memory) {}
                report(.regionWrite, region, offset, Int(count), nil, token: token)
                if !h.noReply {
                    var head = Self.accessReplyHead(h, size: dataStart, offset: offset, region: region, count: count)
                    try withUnsafeBytes(of: &head) { hb throws(TransportError) in try socket.send(raw: hb) }
                }
            }
        } catch let e as VFIOErrno {
            logger.debug("\(h.command) #\(h.messageID) failed: \(e)")
            report(.regionWrite, region, offset, Int(count), e, token: token)
            if !h.noReply { sendError(to: h, e) }
        } catch {
            logger.debug("receive or send failed: \(error)")
            streamBroken = true
        }
        return true
    }

    private func writeMultiInPlace(_ h: MessageHeader, token: UInt64) -> Bool {
        let total = Int(h.messageSize)
        guard total <= MessageSocket.receiveBufferSize, h.payloadSize >= 8, device.owner == session,
              (try? socket.peekMessage(maxMessageSize: options.maxMessageSize, maxFDs: options.maxMsgFDs, prefix: total)) != nil
        else { return false }
        let b = socket.buffered
        let p = b.startIndex + MessageHeader.size
        let n = b.le64(at: p)
        // The layout and the entries' counts are checked here as WriteMulti.validate does;
        // anything off goes to the general path, which answers it.
        guard n >= 1, n <= UInt64(h.payloadSize - 8) / 24, UInt64(h.payloadSize) == 8 + 24 * n else { return false }
        for i in 0..<Int(n) where !(1...UInt32(WriteMultiEntry.maxCount)).contains(b.le32(at: p + 8 + 24 * i + 12)) {
            return false
        }
        socket.consumeMessage(size: total)  // the slice keeps the bytes
        // As for REGION_WRITE, the reply goes out before work the writes started can send.
        // A counting control plane hears of each entry that ran before the reply goes
        // out, so whoever has the reply finds the accesses counted.
        func reportEntries(done: Int, failure: VFIOErrno?) {
            guard hooks != nil else { return }
            for i in 0..<min(Int(n), done + (failure == nil ? 0 : 1)) {
                let e = p + 8 + 24 * i
                report(.regionWriteMulti, b.le32(at: e + 8), b.le64(at: e), Int(b.le32(at: e + 12)),
                       i < done ? nil : failure, entry: i, token: token)
            }
        }
        device.lock.withLock {
            var done = 0
            do throws(VFIOErrno) {
                for i in 0..<Int(n) {
                    let e = p + 8 + 24 * i
                    let count = Int(b.le32(at: e + 12))
                    try device.writeRegion(index: b.le32(at: e + 8), offset: b.le64(at: e), data: b[(e + 16)..<(e + 16 + count)])
                    done += 1
                }
            } catch {
                logger.debug("\(h.command) #\(h.messageID) failed: \(error)")
                reportEntries(done: done, failure: error)
                if !h.noReply { sendError(to: h, error) }
                return
            }
            reportEntries(done: done, failure: nil)
            guard !h.noReply else { return }
            let size = UInt64(MessageHeader.size + 8)
            var reply = ((UInt64(h.messageID) | UInt64(h.command.rawValue) << 16 | size << 32).littleEndian,
                         UInt64(MessageHeader.Kind.reply.rawValue).littleEndian, UInt64(done).littleEndian)
            do {
                try withUnsafeBytes(of: &reply) { rb throws(TransportError) in try socket.send(raw: rb) }
            } catch {
                logger.debug("send failed: \(error)")
                streamBroken = true
            }
        }
        return true
    }

    /// The reply's header and the access's fixed fields, as four little-endian words
    /// (a homogeneous tuple has a guaranteed layout).
    private static func accessReplyHead(_ h: MessageHeader, size: Int, offset: UInt64, region: UInt32, count: UInt32)
        -> (UInt64, UInt64, UInt64, UInt64) {
        ((UInt64(h.messageID) | UInt64(h.command.rawValue) << 16 | UInt64(UInt32(size)) << 32).littleEndian,
         UInt64(MessageHeader.Kind.reply.rawValue).littleEndian,
         offset.littleEndian,
         (UInt64(region) | UInt64(count) << 32).littleEndian)
    }
}

/// A connection's scratch memory for replies built from registers: allocated once,
/// grown to the largest reply seen.
final class InPlaceScratch {
    private var buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
    var capacity: Int { buffer.count }

    func scratch(_ n: Int) -> UnsafeMutableRawBufferPointer {
        if buffer.count < n {
            buffer.deallocate()
            buffer = .allocate(byteCount: n, alignment: 16)
        }
        return buffer
    }

    deinit { buffer.deallocate() }
}

extension ArraySlice where Element == UInt8 {
    /// Little-endian fields at absolute index `o` (the buffer's own indices).
    @inline(__always) fileprivate func le32(at o: Int) -> UInt32 {
        withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o - startIndex, as: UInt32.self).littleEndian }
    }
    @inline(__always) fileprivate func le64(at o: Int) -> UInt64 {
        withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o - startIndex, as: UInt64.self).littleEndian }
    }
}
