@_spi(Server) import PCICore
import VFIOUserProtocol
import VFIOUserTransport

/// What handling a command produced.
enum Outcome {
    /// Success: the reply payload, fds to attach, and whether the request's fds now
    /// belong to the device (else they are closed).
    case reply([UInt8], fds: [Int32] = [], consumedFDs: Bool = false)
    case error(VFIOErrno, consumedFDs: Bool = false)
    /// The connection cannot go on (e.g. negotiation failed): reply, then close.
    case errorThenClose(VFIOErrno)
}

/// Maps each command to the device. Pure request → outcome, except for VERSION,
/// which updates the connection's negotiated state.
enum Dispatcher {
    static func handle(_ msg: ReceivedMessage, on c: Connection) -> Outcome {
        let h = msg.header
        guard c.versioned || h.command == .version else {
            // libvfio-user does the same: anything before VERSION ends the connection.
            return .errorThenClose(.EINVAL)
        }
        // Only these commands carry fds; anything else with fds is ambiguous.
        // (DEVICE_FEATURE takes one only for our mig-data-fd extension; MigrationDispatch checks.)
        if !msg.fds.isEmpty && h.command != .dmaMap && h.command != .deviceSetIRQs && h.command != .deviceFeature {
            return h.command == .version ? .errorThenClose(.EINVAL) : .error(.EINVAL)
        }
        switch RequestLayout.check(h.command, payload: msg.payload) {
        case .fits: break
        case .short(let expected, let actual):
            c.logger.debug("\(h.command) #\(h.messageID): \(actual)-byte payload, its layout needs \(expected)")
            return .error(.EINVAL)
        case .long(let expected, let actual):
            c.logger.warning("\(h.command) #\(h.messageID): \(actual)-byte payload where its layout has \(expected); the stream cannot be trusted")
            return .errorThenClose(.EINVAL)
        }
        if requiresOwnership(h.command), !isMigrationRecovery(h.command, c) {
            do { try claim(h.command, c) } catch { return .error(error) }
        }
        do {
            switch h.command {
            case .version: return version(msg, c)
            case .dmaMap: return try dmaMap(msg, c)
            case .dmaUnmap: return try dmaUnmap(msg, c)
            case .deviceGetInfo: return try deviceInfo(msg, c)
            case .deviceGetRegionInfo: return try regionInfo(msg, c)
            case .deviceGetRegionIOFDs: return try regionIOFDs(msg, c)
            case .deviceGetIRQInfo: return try irqInfo(msg, c)
            case .deviceSetIRQs: return try setIRQs(msg, c)
            case .regionRead: return try regionRead(msg, c)
            case .regionWrite: return try regionWrite(msg, c)
            case .regionWriteMulti: return try writeMulti(msg, c)
            case .deviceReset:
                guard c.device.configuration.resetSupported else { return .error(.EINVAL) }
                c.device.reset(.deviceReset)
                return .reply([])
            case .deviceFeature: return try MigrationDispatch.feature(msg, c)
            case .migDataRead: return try MigrationDispatch.dataRead(msg, c)
            case .migDataWrite: return try MigrationDispatch.dataWrite(msg, c)
            default:
                // DMA_READ/DMA_WRITE go server→client only; DIRTY_PAGES was removed
                // with migration v1; anything else is unknown.
                return .error(.EINVAL)
            }
        } catch let e as VFIOErrno {
            return .error(e)
        } catch let e as ProtocolError {
            return .error(e.errno)
        } catch {
            return .error(.EINVAL)
        }
    }

    // MARK: Ownership

    /// Commands that act on the device's DMA address space, interrupt wiring, state
    /// or reset: only the owning session (the VMM) may send them. Others may ask for
    /// information, read regions and drive migration (docs/architecture.md).
    /// How long a claim waits for a departing owner's cleanup before EBUSY.

    static func requiresOwnership(_ command: Command) -> Bool {
        switch command {
        case .dmaMap, .dmaUnmap, .deviceSetIRQs, .regionWrite, .regionWriteMulti, .deviceReset: true
        default: false
        }
    }

    /// Only a reset leaves the migration ERROR state, and migration is driven from the
    /// management side (QEMU 11.1 does not migrate vfio-user devices): the tool whose
    /// migration failed may reset the device out of ERROR without owning it.
    static func isMigrationRecovery(_ command: Command, _ c: Connection) -> Bool {
        guard command == .deviceReset, let mig = c.device.migration else { return false }
        return c.device.lock.withLock { mig.state == .error }
    }

    /// Makes the connection the device's owner if nobody is; EBUSY (logged) if another is.
    ///
    /// An owner that has just hung up may not have been cleaned up yet (its thread is
    /// waking from its read): a VMM restarted at once, or a tool's next connection,
    /// waits a moment for that rather than being refused.
    static func claim(_ command: Command, _ c: Connection) throws(VFIOErrno) {
        // Wait once per owner: a second VMM's every command is not slowed down. An
        // owner that is still connected gets a short grace; one that has hung up is
        // waited for until its connection has released the device (OwnerHandOver.swift).
        let waitOnce = c.device.owner != c.refusedBy
        let start = monotonicMs()
        while true {
            do {
                if try c.device.claimOwnership(c.session) {
                    c.logger.info("this client now owns the device (first \(command))")
                }
                return
            } catch {
                let waited = monotonicMs() - start
                guard let owner = c.device.owner else { continue }  // released meanwhile: try again
                guard waitOnce else { break }
                let limit = OwnerHandOver.hasHungUp(c.device, owner) ? OwnerHandOver.hungUpOwnerMs : OwnerHandOver.graceMs
                if waited >= limit { break }
                sleepMs(1)
            }
        }
        c.refusedBy = c.device.owner
        c.logger.warning("\(command) refused (EBUSY): the device is owned by another client (session \(c.device.owner.map { "\($0)" } ?? "?")); this one may only inspect it and drive migration")
        throw .EBUSY
    }

    static func decode<T: WirePayload>(_ msg: ReceivedMessage, as: T.Type = T.self) throws(ProtocolError) -> T {
        var r = msg.payloadReader
        return try T(from: &r)
    }

    // MARK: VERSION

    static func version(_ msg: ReceivedMessage, _ c: Connection) -> Outcome {
        guard !c.versioned else { return .error(.EINVAL) }  // a second VERSION
        let req: VersionPayload
        do { req = try decode(msg) } catch { return .errorThenClose(.EINVAL) }
        guard req.major == 0 else { return .errorThenClose(.EINVAL) }
        let theirs = req.effectiveCapabilities
        guard theirs.effectiveMaxDataXferSize > 0 else { return .errorThenClose(.EINVAL) }
        c.clientCapabilities = theirs
        c.versioned = true
        let o = c.options
        var offered: [String: String] = [:]
        for (k, v) in o.extensions where theirs.hasExtension(k) { offered[k] = v; c.agreedExtensions.insert(k) }
        // Richest first; the reply must never be longer than the request (QEMU sizes
        // its receive buffer from its own request).
        let candidates: [VersionCapabilities] = [
            VersionCapabilities(maxMsgFDs: o.maxMsgFDs, maxDataXferSize: o.maxDataXferSize, pgsizes: 4096,
                                maxDMAMaps: o.maxDMAMaps, writeMultiple: o.writeMultiple ? true : nil,
                                extensions: offered.isEmpty ? nil : offered),
            VersionCapabilities(maxMsgFDs: o.maxMsgFDs, maxDataXferSize: o.maxDataXferSize,
                                writeMultiple: o.writeMultiple ? true : nil, extensions: offered.isEmpty ? nil : offered),
            VersionCapabilities(maxMsgFDs: o.maxMsgFDs, maxDataXferSize: o.maxDataXferSize),
            VersionCapabilities(maxMsgFDs: o.maxMsgFDs),
            VersionCapabilities(),
        ]
        let limit = msg.header.payloadSize
        // Below those, `{}`, and for a request without JSON (it is optional) none at all:
        // the bare 4-byte payload always fits, since the request had one.
        var reply = VersionPayload(major: 0, minor: 0, capabilities: nil, rawJSON: []).encoded
        let encodings = candidates.map { VersionPayload(major: 0, minor: 0, capabilities: $0).encoded }
            + [VersionPayload(major: 0, minor: 0, capabilities: nil).encoded]
        for p in encodings where p.count <= limit {
            reply = p
            break
        }
        // What we did not manage to say in the reply is not agreed.
        if let agreed = (try? VersionPayload(payload: reply))?.capabilities {
            if !(agreed.writeMultiple ?? false) { c.clientCapabilities.writeMultiple = false }
            c.agreedExtensions = c.agreedExtensions.filter { agreed.hasExtension($0) }
        } else {
            c.clientCapabilities.writeMultiple = false
            c.agreedExtensions = []
        }
        return .reply(reply)
    }

    // MARK: DMA

    static func dmaMap(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: DMAMapRequest = try decode(msg)
        guard req.argsz >= 32, msg.fds.count <= 1 else { return .error(.EINVAL) }
        try c.device.dmaMap(req, fd: msg.fds.first, session: c.session, transport: c, limit: c.options.maxDMAMaps)
        return .reply([], consumedFDs: true)
    }

    static func dmaUnmap(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: DMAUnmapRequest = try decode(msg)
        guard req.argsz >= 24 else { return .error(.EINVAL) }
        try c.device.dmaUnmap(req, session: c.session)
        var echo = req
        echo.bitmap = nil
        echo.argsz = 24
        return .reply(echo.encoded)
    }

    // MARK: Info

    static func deviceInfo(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: DeviceInfo = try decode(msg)
        guard req.argsz >= 16 else { return .error(.EINVAL) }
        let info = c.device.deviceInfo()
        let caps = c.device.deviceInfoCapabilities
        if c.agreedExtensions.contains("device-info-caps"), req.argsz > 16, !caps.isEmpty {
            let full = DeviceInfo.extended(flags: info.flags, numRegions: info.numRegions, numIRQs: info.numIRQs,
                                           capabilities: caps)
            return .reply(full.reply(forArgsz: req.argsz).encoded)
        }
        return .reply(info.encoded)
    }

    static func regionInfo(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: RegionInfoRequest = try decode(msg)
        guard req.argsz >= 32 else { return .error(.EINVAL) }
        let (info, fd) = try c.device.regionInfo(index: req.index)
        let reply = info.reply(forArgsz: req.argsz)
        // The fd goes only with a complete reply, as libvfio-user does; QEMU
        // closes any fd of the first, truncated answer anyway.
        let complete = reply.argsz <= req.argsz
        // Device memory is the owner's to map: another client sees the region but
        // gets no fd while someone owns the device.
        let owner = c.device.owner
        let mayMap = owner == nil || owner == c.session
        return .reply(reply.encoded, fds: complete && mayMap && reply.flags.contains(.mmap) ? fd.map { [$0] } ?? [] : [])
    }

    static func regionIOFDs(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: RegionIOFDsRequest = try decode(msg)
        guard req.argsz >= 16, req.flags == 0, req.count == 0, req.index < UInt32(c.device.regionCount) else {
            return .error(.EINVAL)
        }
        // No region of ours offers ioeventfds: every access is served by messages or mmap.
        return .reply(RegionIOFDsReply(argsz: 16, flags: 0, index: req.index, count: 0, entries: []).encoded)
    }

    static func irqInfo(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: IRQInfo = try decode(msg)
        guard req.argsz >= 16 else { return .error(.EINVAL) }
        return .reply(try c.device.irqInfo(index: req.index).encoded)
    }

    static func setIRQs(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: SetIRQs = try decode(msg)
        guard req.argsz >= 20, msg.fds.count <= c.options.maxMsgFDs else { return .error(.EINVAL) }
        do {
            try c.device.setIRQs(req, fds: msg.fds, session: c.session)
        } catch {
            return .error(error)
        }
        return .reply([], consumedFDs: true)
    }

    // MARK: Region access (the hot path)

    static func regionRead(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        guard msg.header.payloadSize >= RegionAccess.headerSize else { return .error(.EINVAL) }
        let (offset, region, count) = try RegionAccess.decodeHeader(msg.bytes, payloadOffset: MessageHeader.size)
        guard Int(count) <= c.options.maxDataXferSize else { return .error(.EINVAL) }
        let data = try c.device.readRegion(index: region, offset: offset, count: Int(count))
        var w = WireWriter(capacity: RegionAccess.headerSize + data.count)
        w.u64(offset); w.u32(region); w.u32(UInt32(data.count)); w.append(data)
        return .reply(w.bytes)
    }

    static func regionWrite(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        guard msg.header.payloadSize >= RegionAccess.headerSize else { return .error(.EINVAL) }
        let (offset, region, count) = try RegionAccess.decodeHeader(msg.bytes, payloadOffset: MessageHeader.size)
        guard msg.header.payloadSize - RegionAccess.headerSize == Int(count),
              Int(count) <= c.options.maxDataXferSize else { return .error(.EINVAL) }
        let start = MessageHeader.size + RegionAccess.headerSize
        try c.device.writeRegion(index: region, offset: offset, data: msg.bytes[start..<(start + Int(count))])
        var w = WireWriter(capacity: RegionAccess.headerSize)
        w.u64(offset); w.u32(region); w.u32(count)
        return .reply(w.bytes)
    }

    static func writeMulti(_ msg: ReceivedMessage, _ c: Connection) throws -> Outcome {
        let req: WriteMulti = try decode(msg)
        try req.validate()
        var done: UInt64 = 0
        for e in req.entries {
            var bytes = [UInt8](repeating: 0, count: 8)
            bytes.setLE64(e.data, at: 0)
            try c.device.writeRegion(index: e.region, offset: e.offset, data: bytes[0..<Int(e.count)])
            done += 1
        }
        return .reply(WriteMultiReply(completed: done).encoded)
    }
}
