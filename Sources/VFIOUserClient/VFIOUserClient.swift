import Glibc
import VFIOUserProtocol
import VFIOUserTransport

/// The VMM side of vfio-user: connects to any vfio-user server, negotiates, and
/// drives its device (regions, interrupts, DMA, reset, migration).
///
/// Calls are synchronous and serialized. While a call waits for its reply the
/// client also answers the server's own requests (DMA_READ / DMA_WRITE into memory
/// mapped without an fd), so a server may interleave them as the protocol allows.
public final class VFIOUserClient: @unchecked Sendable {
    // @unchecked: calls hold `lock` for all mutable state; `timeoutMs` is set by the owner between calls.
    /// The connection to the server.
    public let socket: MessageSocket
    /// What the server said in its VERSION reply.
    public private(set) var serverVersion = VersionPayload(major: 0, minor: 0, capabilities: nil)
    /// The server's capabilities with the protocol defaults applied.
    public var serverCapabilities: VersionCapabilities { serverVersion.effectiveCapabilities }
    /// Our own VERSION capabilities.
    public let capabilities: VersionCapabilities
    /// Milliseconds to wait for each reply.
    public var timeoutMs: Int32 = 5000
    /// Counts of server→client requests served, for tests and statistics.
    public private(set) var servedDMAReads = 0
    /// DMA_WRITE requests served.
    public private(set) var servedDMAWrites = 0

    private let lock = ClientLock()
    private var nextID: UInt16 = 1
    // Memory we mapped without an fd, which the server reaches through messages.
    private var messageDMA: [(address: UInt64, size: UInt64, memory: ClientMemory, offset: Int)] = []

    /// What we offer in VERSION: 16 fds per message, 1 MiB transfers, 4 KiB pages, 65535 mappings.
    public static let defaultCapabilities = VersionCapabilities(
        maxMsgFDs: 16, maxDataXferSize: 1 << 20, pgsizes: 4096, maxDMAMaps: 65535)

    /// Connects and negotiates. `capabilities` may ask for our protocol extensions
    /// (`extensions: ["device-info-caps": "1"]`).
    public init(path: String, capabilities: VersionCapabilities = VFIOUserClient.defaultCapabilities,
                negotiate: Bool = true) throws(ClientError) {
        do { socket = try MessageSocket.connect(path: path) } catch { throw .transport(error) }
        self.capabilities = capabilities
        if negotiate { try self.negotiate() }
    }

    /// Wraps a connected socket without negotiating (call `negotiate()` before anything else).
    public init(socket: MessageSocket, capabilities: VersionCapabilities = VFIOUserClient.defaultCapabilities) {
        self.socket = socket
        self.capabilities = capabilities
    }

    /// Closes the connection; later calls fail with `.transport` or `.disconnected`.
    public func close() { socket.fd.close() }

    deinit { socket.fd.close() }

    // MARK: Core request/reply

    /// Sends a command and waits for its reply, serving server requests meanwhile.
    /// Returns the reply's payload.
    @discardableResult
    public func call(_ command: Command, payload: [UInt8], fds: [Int32] = []) throws(ClientError) -> [UInt8] {
        try lock.withLock { () throws(ClientError) -> [UInt8] in
            let id = nextID
            nextID &+= 1
            let h = MessageHeader(messageID: id, command: command, messageSize: 0)
            do throws(TransportError) { try socket.send(header: h, payload: payload, fds: fds) } catch { throw .transport(error) }
            let reply = try awaitReply(id: id, command: command)
            reply.closeFDs()
            return Array(reply.payload)
        }
    }

    /// Like `call`, but keeps the fds the reply carried (GET_REGION_INFO).
    public func callKeepingFDs(_ command: Command, payload: [UInt8]) throws(ClientError) -> ReceivedMessage {
        try lock.withLock { () throws(ClientError) -> ReceivedMessage in
            let id = nextID
            nextID &+= 1
            let h = MessageHeader(messageID: id, command: command, messageSize: 0)
            do throws(TransportError) { try socket.send(header: h, payload: payload) } catch { throw .transport(error) }
            return try awaitReply(id: id, command: command)
        }
    }

    /// Sends a command with NO_REPLY (a posted write). Nothing comes back.
    public func post(_ command: Command, payload: [UInt8]) throws(ClientError) {
        try lock.withLock { () throws(ClientError) in
            let id = nextID
            nextID &+= 1
            let h = MessageHeader(messageID: id, command: command, messageSize: 0, flags: MessageHeader.noReplyFlag)
            do throws(TransportError) { try socket.send(header: h, payload: payload) } catch { throw .transport(error) }
        }
    }

    /// Waits for reply `id`, serving the server's own requests meanwhile, for at most
    /// `timeoutMs` in all (a server that keeps sending other things times out too).
    private func awaitReply(id: UInt16, command: Command) throws(ClientError) -> ReceivedMessage {
        let deadline = monotonicMs() + Int(timeoutMs)
        while true {
            let left = deadline - monotonicMs()
            guard left > 0, socket.waitReadable(timeoutMs: Int32(clamping: left)) else { throw .timeout(command) }
            let m: ReceivedMessage?
            do { m = try socket.receive(maxMessageSize: capabilities.effectiveMaxDataXferSize + 64, maxFDs: 16) } catch {
                if case .transport(let t) = error { throw .transport(t) }
                throw .malformedReply(command, "\(error)")
            }
            guard let m else { throw .disconnected }
            if m.header.isReply {
                guard m.header.messageID == id else { m.closeFDs(); continue }
                if m.header.isError {
                    m.closeFDs()
                    throw .server(command, VFIOErrno(m.header.errorNumber))
                }
                return m
            }
            serveServerRequest(m)
        }
    }

    /// Answers a DMA_READ / DMA_WRITE from the server out of memory we mapped
    /// without an fd; anything else is ENOSYS, as QEMU does.
    private func serveServerRequest(_ m: ReceivedMessage) {
        defer { m.closeFDs() }
        let h = m.header
        func error(_ e: VFIOErrno) { try? socket.send(header: .errorReply(to: h, errno: e), payload: []) }
        guard m.fds.isEmpty else { return error(.EINVAL) }
        guard h.command == .dmaRead || h.command == .dmaWrite else { return error(.ENOSYS) }
        var r = m.payloadReader
        guard let access = try? DMAAccess(from: &r) else { return error(.EINVAL) }
        guard access.count <= UInt64(capabilities.effectiveMaxDataXferSize) else { return error(.E2BIG) }
        let n = Int(access.count)
        guard let e = messageDMA.first(where: { access.address >= $0.address && access.address - $0.address <= $0.size &&
                                                UInt64(n) <= $0.size - (access.address - $0.address) }) else {
            return error(.EFAULT)
        }
        let at = e.offset + Int(access.address - e.address)
        if h.command == .dmaRead {
            servedDMAReads += 1
            let data = e.memory.read(at: at, count: n)
            let reply = DMAAccess(address: access.address, count: access.count, data: data).encoded
            try? socket.send(header: .reply(to: h, payloadSize: reply.count), payload: reply)
        } else {
            guard access.data.count >= n else { return error(.EINVAL) }
            servedDMAWrites += 1
            e.memory.write(at: at, Array(access.data.prefix(n)))
            let reply = DMAAccess(address: access.address, count: access.count).encoded
            try? socket.send(header: .reply(to: h, payloadSize: reply.count), payload: reply)
        }
    }

    /// Waits up to `timeoutMs` for server requests and answers them (for a client
    /// that is idle while the device works).
    public func serveRequests(timeoutMs: Int32) throws(ClientError) {
        try lock.withLock { () throws(ClientError) in
            while socket.waitReadable(timeoutMs: timeoutMs) {
                let m: ReceivedMessage?
                do { m = try socket.receive(maxMessageSize: capabilities.effectiveMaxDataXferSize + 64, maxFDs: 16) } catch {
                    throw .disconnected
                }
                guard let m else { throw .disconnected }
                if m.header.isReply { m.closeFDs(); continue }
                serveServerRequest(m)
            }
        }
    }

    // MARK: Negotiation and information

    /// VERSION: sends our capabilities and records the server's reply in `serverVersion`; throws `.malformedReply` for a major version other than 0.
    public func negotiate() throws(ClientError) {
        let req = VersionPayload(major: 0, minor: 0, capabilities: capabilities)
        let reply = try call(.version, payload: req.encoded)
        do { serverVersion = try VersionPayload(payload: reply) } catch { throw .malformedReply(.version, "\(error)") }
        guard serverVersion.major == 0 else { throw .malformedReply(.version, "major \(serverVersion.major)") }
    }

    /// Whether the server agreed to one of our protocol extensions.
    public func hasExtension(_ name: String) -> Bool { serverCapabilities.hasExtension(name) }

    /// DEVICE_GET_INFO with `argsz` (16 for the standard form, 24 for ours with capabilities).
    public func deviceInfo(argsz: UInt32 = 16) throws(ClientError) -> DeviceInfo {
        let reply = try call(.deviceGetInfo, payload: DeviceInfo(argsz: argsz).encoded)
        do { return try DeviceInfo(payload: reply) } catch { throw .malformedReply(.deviceGetInfo, "\(error)") }
    }

    /// Device info with capabilities (our extension), retrying with the size the server asks for.
    public func deviceInfoWithCapabilities() throws(ClientError) -> DeviceInfo {
        var info = try deviceInfo(argsz: 24)
        if info.argsz > 24 { info = try deviceInfo(argsz: info.argsz) }
        return info
    }

    /// Region info with its capability chain, retrying with a larger argsz as
    /// QEMU does. The fd comes back when the region is mmap-able.
    public func regionInfo(_ index: UInt32) throws(ClientError) -> (info: RegionInfo, fd: OwnedFD?) {
        var argsz: UInt32 = 32
        for _ in 0..<3 {
            let m = try callKeepingFDs(.deviceGetRegionInfo, payload: RegionInfoRequest(argsz: argsz, index: index).encoded)
            let info: RegionInfo
            do { info = try RegionInfo(payload: Array(m.payload)) } catch {
                m.closeFDs()
                throw .malformedReply(.deviceGetRegionInfo, "\(error)")
            }
            if info.argsz > argsz {
                m.closeFDs()
                argsz = info.argsz
                continue
            }
            if m.fds.count > 1 { m.closeFDs(); throw .malformedReply(.deviceGetRegionInfo, "more than one fd") }
            return (info, m.fds.first)
        }
        throw .malformedReply(.deviceGetRegionInfo, "argsz kept growing")
    }

    /// Maps a region's memory (or one sparse area of it) into this process.
    public func mapRegion(_ index: UInt32, writable: Bool = true) throws(ClientError) -> (RegionInfo, MemoryMapping) {
        let (info, fd) = try regionInfo(index)
        guard let fd, info.flags.contains(.mmap) else { throw .server(.deviceGetRegionInfo, .EINVAL) }
        defer { fd.close() }
        var offset = info.offset, length = info.size
        for case .sparseMmap(let areas) in info.capabilities {
            if let a = areas.first { offset += a.offset; length = a.size }
        }
        do {
            return (info, try MemoryMapping(fd: fd.rawValue, offset: offset, length: Int(length), writable: writable))
        } catch {
            throw .transport(error)
        }
    }

    /// DEVICE_GET_IRQ_INFO for IRQ `index`.
    public func irqInfo(_ index: UInt32) throws(ClientError) -> IRQInfo {
        let reply = try call(.deviceGetIRQInfo, payload: IRQInfo(argsz: 16, index: index).encoded)
        do { return try IRQInfo(payload: reply) } catch { throw .malformedReply(.deviceGetIRQInfo, "\(error)") }
    }

    /// DEVICE_SET_IRQS with explicit fields; `fds` ride along with the message.
    public func setIRQs(index: UInt32, flags: SetIRQFlags, start: UInt32, count: UInt32, data: [UInt8] = [],
                        fds: [Int32] = []) throws(ClientError) {
        let req = SetIRQs(argsz: UInt32(20 + data.count), flags: flags, index: index, start: start, count: count, data: data)
        try call(.deviceSetIRQs, payload: req.encoded, fds: fds)
    }

    /// Binds fresh eventfds to vectors start..<start+count and returns them.
    public func enableEventFDs(index: UInt32, start: UInt32 = 0, count: UInt32) throws(ClientError) -> [OwnedFD] {
        var fds: [OwnedFD] = []
        for _ in 0..<count {
            do { fds.append(try EventFD.create(nonBlocking: true)) } catch { throw .transport(error) }
        }
        try setIRQs(index: index, flags: [.dataEventFD, .actionTrigger], start: start, count: count, fds: fds.map(\.rawValue))
        return fds
    }

    /// Disables every vector of IRQ `index` (DATA_NONE | TRIGGER with count 0).
    public func disableIRQs(index: UInt32) throws(ClientError) {
        try setIRQs(index: index, flags: [.dataNone, .actionTrigger], start: 0, count: 0)
    }

    /// Masks or unmasks one vector of IRQ `index`.
    public func maskIRQ(index: UInt32, vector: UInt32, masked: Bool) throws(ClientError) {
        try setIRQs(index: index, flags: [.dataNone, masked ? .actionMask : .actionUnmask], start: vector, count: 1)
    }

    // MARK: Region access

    /// REGION_READ of `count` bytes; throws `.malformedReply` when the reply carries more than asked or fewer than it claims.
    public func read(region: UInt32, offset: UInt64, count: Int) throws(ClientError) -> [UInt8] {
        let reply = try call(.regionRead, payload: RegionAccess(offset: offset, region: region, count: UInt32(count)).encoded)
        do {
            let a = try RegionAccess(payload: reply)
            guard Int(a.count) <= count, a.data.count >= Int(a.count) else { throw ProtocolError.invalid("count \(a.count)") }
            return Array(a.data.prefix(Int(a.count)))
        } catch {
            throw .malformedReply(.regionRead, "\(error)")
        }
    }

    /// Writes a region; `posted` sends it with NO_REPLY like QEMU's MMIO writes.
    public func write(region: UInt32, offset: UInt64, _ data: [UInt8], posted: Bool = false) throws(ClientError) {
        let payload = RegionAccess(offset: offset, region: region, data: data).encoded
        if posted { try post(.regionWrite, payload: payload) } else { try call(.regionWrite, payload: payload) }
    }

    /// A little-endian u32 read at `offset` of `region`.
    public func read32(region: UInt32, offset: UInt64) throws(ClientError) -> UInt32 {
        let b = try read(region: region, offset: offset, count: 4)
        guard b.count == 4 else { throw .malformedReply(.regionRead, "short read") }
        return b.le32(at: 0)
    }

    /// A little-endian u32 write at `offset` of `region`; `posted` sends it with NO_REPLY.
    public func write32(region: UInt32, offset: UInt64, _ v: UInt32, posted: Bool = false) throws(ClientError) {
        var b = [UInt8](repeating: 0, count: 4)
        b.setLE32(v, at: 0)
        try write(region: region, offset: offset, b, posted: posted)
    }

    /// Reads `count` bytes of config space.
    public func readConfig(offset: UInt64, count: Int) throws(ClientError) -> [UInt8] {
        try read(region: RegionIndex.config.rawValue, offset: offset, count: count)
    }

    /// Reads a u16 of config space.
    public func readConfig16(_ offset: UInt64) throws(ClientError) -> UInt16 { try readConfig(offset: offset, count: 2).le16(at: 0) }
    /// Reads a u32 of config space.
    public func readConfig32(_ offset: UInt64) throws(ClientError) -> UInt32 { try read32(region: RegionIndex.config.rawValue, offset: offset) }

    /// Writes a u16 of config space.
    public func writeConfig16(_ offset: UInt64, _ v: UInt16) throws(ClientError) {
        var b = [UInt8](repeating: 0, count: 2)
        b.setLE16(v, at: 0)
        try write(region: RegionIndex.config.rawValue, offset: offset, b)
    }

    /// Writes a u32 of config space.
    public func writeConfig32(_ offset: UInt64, _ v: UInt32) throws(ClientError) {
        try write32(region: RegionIndex.config.rawValue, offset: offset, v)
    }

    // MARK: DMA

    /// Maps `memory` at `address` with its fd: the server mmaps it.
    public func dmaMap(_ memory: ClientMemory, address: UInt64, offset: UInt64 = 0, size: UInt64? = nil,
                       flags: DMAMapFlags = [.read, .write]) throws(ClientError) {
        let req = DMAMapRequest(flags: flags, offset: offset, address: address, size: size ?? UInt64(memory.size))
        try call(.dmaMap, payload: req.encoded, fds: [memory.fd.rawValue])
    }

    /// Maps `memory` at `address` without an fd: the server reaches it with
    /// DMA_READ / DMA_WRITE messages, which this client answers.
    public func dmaMapWithoutFD(_ memory: ClientMemory, address: UInt64, flags: DMAMapFlags = [.read, .write]) throws(ClientError) {
        let req = DMAMapRequest(flags: flags, offset: 0, address: address, size: UInt64(memory.size))
        try call(.dmaMap, payload: req.encoded)
        lock.withLock { messageDMA.append((address, UInt64(memory.size), memory, 0)) }
    }

    /// DMA_UNMAP of the mapping at `address` of `size` bytes.
    public func dmaUnmap(address: UInt64, size: UInt64) throws(ClientError) {
        try call(.dmaUnmap, payload: DMAUnmapRequest(address: address, size: size).encoded)
        lock.withLock { messageDMA.removeAll { $0.address == address && $0.size == size } }
    }

    /// DMA_UNMAP with the ALL flag: drops every mapping.
    public func dmaUnmapAll() throws(ClientError) {
        try call(.dmaUnmap, payload: DMAUnmapRequest(flags: .all, address: 0, size: 0).encoded)
        lock.withLock { messageDMA.removeAll() }
    }

    /// DEVICE_RESET.
    public func reset() throws(ClientError) { try call(.deviceReset, payload: []) }

    // MARK: Device features

    /// A DEVICE_FEATURE call; returns the reply's feature data.
    public func feature(_ feature: UInt16, get: Bool = false, set: Bool = false, probe: Bool = false,
                        data: [UInt8] = [], replyDataSize: Int = 0) throws(ClientError) -> [UInt8] {
        // A reply too large for any message is the server's to refuse (E2BIG), not a trap here.
        let argsz = UInt32(clamping: 8 + max(data.count, replyDataSize))
        let req = DeviceFeature(argsz: argsz, flags: UInt32(feature) | (get ? DeviceFeature.get : 0)
                                    | (set ? DeviceFeature.set : 0) | (probe ? DeviceFeature.probe : 0), data: data)
        let reply = try call(.deviceFeature, payload: req.encoded)
        guard reply.count >= 8 else { throw .malformedReply(.deviceFeature, "short") }
        return Array(reply[8...])
    }
}

/// Serializes client calls (one request and its reply at a time).
typealias ClientLock = ConditionLock
