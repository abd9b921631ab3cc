import Glibc
import Logging
@_spi(Server) import PCICore
import Synchronization
import VFIOUserProtocol
import VFIOUserTransport

/// One client connection, served by its own OS thread.
///
/// The thread reads messages in order and dispatches client commands one at a
/// time (the protocol requires strict ordering; QEMU relies on it for posted
/// writes). Replies to the server's own requests (DMA_READ / DMA_WRITE) are
/// routed to whoever waits for them. If the device needs client memory through
/// messages while this very thread is dispatching, the thread keeps reading in a
/// nested loop: replies are consumed, commands are queued and run afterwards, so
/// neither side ever waits on the other.
final class Connection: DMAMessageTransport, @unchecked Sendable {
    // @unchecked: the `var`s are the reader thread's alone (see each); shared state is in `Locked`/`Atomic`.
    let socket: MessageSocket
    let device: PCIDevice
    let options: ServerOptions
    let logger: Logger
    let number: Int
    let session: SessionID

    // Negotiated state; touched only by the reader thread after VERSION.
    var versioned = false
    var clientCapabilities = VersionCapabilities()
    var agreedExtensions: Set<String> = []
    /// The owner that last refused this client a command (it is not made to wait again).
    var refusedBy: SessionID?

    private let readerThread = Locked(0)
    private let pending = Locked<(next: UInt16, waiters: [UInt16: Completion<ReceivedMessage?>], closed: Bool)>((1, [:], false))
    // Reader thread only.
    private var deferred: [ReceivedMessage] = []
    let inPlace = InPlaceScratch()
    /// `options.hooks`, kept here so the hot path does not copy the options' existential.
    let hooks: (any ServerHooks)?
    /// Tracing or an observer (capture, validation) sees every message, so nothing takes
    /// the in-place path; decided once (copying the optional observer costs ~60
    /// instructions a message).
    let seesEveryMessage: Bool
    // Set from any thread that fails to send on this connection.
    private let broken = Atomic<Bool>(false)
    var streamBroken: Bool {
        get { broken.load(ordering: .relaxed) }
        set { broken.store(newValue, ordering: .relaxed) }
    }

    init(socket: MessageSocket, device: PCIDevice, options: ServerOptions, logger: Logger, number: Int) {
        self.socket = socket
        self.device = device
        self.options = options
        self.hooks = options.hooks
        self.seesEveryMessage = options.trace || options.observer != nil
        self.number = number
        var l = logger
        l[metadataKey: "conn"] = "\(number)"
        self.logger = l
        session = device.openSession()
        OwnerHandOver.register(device, session, fd: socket.fd.rawValue)
    }

    var maxTransferSize: Int { clientCapabilities.effectiveMaxDataXferSize }

    // MARK: Reader loop

    func run() {
        readerThread.withLock { $0 = currentThreadID() }
        logger.info("client connected")
        defer { finish() }
        while !streamBroken {
            // Region accesses are served in the receive buffer (InPlaceAccess.swift).
            if deferred.isEmpty && serveInPlace() { continue }
            guard let msg = nextMessage() else { break }
            if options.trace { logger.info("← \(traceDescription(header: msg.header, payload: Array(msg.payload)))") }
            let h = msg.header
            guard let kind = h.kind else {
                msg.closeFDs()
                logger.warning("message #\(h.messageID) has invalid type bits in flags 0x\(String(h.flags, radix: 16)); closing")
                sendError(to: h, .EINVAL)
                break
            }
            if kind == .reply {
                route(msg)
                continue
            }
            dispatch(msg)
        }
    }

    /// The next message to handle: a queued one first, else one from the socket.
    /// nil ends the connection.
    private func nextMessage() -> ReceivedMessage? {
        if !deferred.isEmpty { return deferred.removeFirst() }
        while true {
            do {
                let m = try socket.receive(maxMessageSize: options.maxMessageSize, maxFDs: options.maxMsgFDs)
                if let m { options.observer?.received(m, connection: number) }
                return m
            } catch .framing(let h, let why) {
                logger.warning("framing error (\(why)); closing")
                sendError(to: h, .EINVAL)
                return nil
            } catch .tooManyFDs(let h, let n, let limit) {
                logger.warning("\(h.command) #\(h.messageID) carried \(n) fds (limit \(limit)); rejected")
                if !h.noReply && !h.isReply { sendError(to: h, .EINVAL) }
                continue
            } catch {
                if case .transport(let t) = error, t != .closed { logger.warning("connection error: \(t)") }
                return nil
            }
        }
    }

    private func route(_ msg: ReceivedMessage) {
        let waiter = pending.withLock { $0.waiters.removeValue(forKey: msg.header.messageID) }
        if let waiter {
            waiter.fulfil(msg)
        } else {
            msg.closeFDs()
            // Answered, so a client that mislabelled a command learns of it; never when
            // it asked for no reply (a reply it does not expect would desync it).
            logger.warning("unexpected reply #\(msg.header.messageID) (\(msg.header.command))")
            if !msg.header.noReply { sendError(to: msg.header, .EINVAL) }
        }
    }

    private func dispatch(_ msg: ReceivedMessage) {
        let h = msg.header
        if let refused = options.observer?.refusal(for: msg, connection: number) {
            msg.closeFDs()
            if !h.noReply { sendError(to: h, refused) }
            return
        }
        // A control plane sees every command (ServerHooks.swift); without one, one nil check.
        if let hooks { dispatchHooked(msg, hooks); return }
        // A region write may start device work (a doorbell): its reply goes out under the
        // device lock, so the job's first DMA request cannot overtake it on the wire.
        if h.command == .regionWrite || h.command == .regionWriteMulti {
            device.lock.withLock { deliver(Dispatcher.handle(msg, on: self), for: msg) }
        } else {
            deliver(Dispatcher.handle(msg, on: self), for: msg)
        }
    }

    /// Sends what handling `msg` produced (or nothing, for NO_REPLY) and closes its
    /// fds unless the device kept them.
    func deliver(_ outcome: Outcome, for msg: ReceivedMessage) {
        let h = msg.header
        switch outcome {
        case .reply(let payload, let fds, let consumedFDs):
            if !consumedFDs { msg.closeFDs() }
            if !h.noReply { send(MessageHeader.reply(to: h, payloadSize: payload.count), payload, fds: fds) }
        case .error(let e, let consumedFDs):
            if !consumedFDs { msg.closeFDs() }
            logger.debug("\(h.command) #\(h.messageID) failed: \(e)")
            if !h.noReply { sendError(to: h, e) }
        case .errorThenClose(let e):
            msg.closeFDs()
            logger.warning("\(h.command) #\(h.messageID) failed: \(e); closing")
            if !h.noReply { sendError(to: h, e) }
            streamBroken = true
        }
    }

    // MARK: Sending

    func send(_ header: MessageHeader, _ payload: [UInt8], fds: [Int32] = []) {
        if options.trace { logger.info("→ \(traceDescription(header: header, payload: payload))") }
        options.observer?.sending(header, payload: payload, fds: fds, connection: number)
        do { try socket.send(header: header, payload: payload, fds: fds) } catch {
            logger.debug("send failed: \(error)")
            streamBroken = true
        }
    }

    func sendError(to h: MessageHeader, _ e: VFIOErrno) {
        send(MessageHeader.errorReply(to: h, errno: e), [])
    }

    // MARK: Server → client requests

    /// Sends a request to the client and returns its reply.
    func request(_ command: Command, payload: [UInt8]) throws(VFIOErrno) -> ReceivedMessage {
        let completion = Completion<ReceivedMessage?>()
        let id: UInt16? = pending.withLock { p in
            guard !p.closed else { return nil }
            let id = p.next
            p.next &+= 1
            p.waiters[id] = completion
            return id
        }
        // The client is gone (or going): fail now rather than wait for a reply nobody will send.
        guard let id, !streamBroken else { throw .ENOTCONN }
        let header = MessageHeader(messageID: id, command: command, messageSize: 0)
        send(header, payload)
        if streamBroken {
            pending.withLock { _ = $0.waiters.removeValue(forKey: id) }
            throw .ENOTCONN
        }
        // The DMA controller has released the device lock around this call (it
        // re-validates when we return), so the connection threads go on meanwhile.
        let onReader = readerThread.withLock { $0 } == currentThreadID()
        let reply: ReceivedMessage?
        if onReader {
            // Only a device model that does DMA inside a region handler gets here (they
            // should submit a job): keep reading so neither side waits on the other.
            reply = awaitOnReaderThread(id: id, completion: completion)
        } else {
            reply = completion.wait(timeoutMs: options.clientReplyTimeoutMs) ?? nil
        }
        pending.withLock { _ = $0.waiters.removeValue(forKey: id) }
        guard let reply else {
            let why = streamBroken ? "the connection closed" : "no reply within \(options.clientReplyTimeoutMs) ms"
            logger.warning("\(command) #\(id) to the client failed: \(why); the device's DMA fails (ETIMEDOUT)")
            throw .ETIMEDOUT
        }
        defer { reply.closeFDs() }
        if reply.header.isError { throw VFIOErrno(reply.header.errorNumber == 0 ? 5 : reply.header.errorNumber) }
        return reply
    }

    /// Reads on while we wait: replies are routed, commands are queued for later.
    private func awaitOnReaderThread(id: UInt16, completion: Completion<ReceivedMessage?>) -> ReceivedMessage? {
        var remaining = options.clientReplyTimeoutMs
        while !streamBroken {
            if let done = completion.wait(timeoutMs: 0) { return done }
            let start = monotonicMs()
            guard socket.waitReadable(timeoutMs: Int32(remaining)) else { return nil }
            remaining -= monotonicMs() - start
            do {
                guard let m = try socket.receive(maxMessageSize: options.maxMessageSize, maxFDs: options.maxMsgFDs) else {
                    streamBroken = true
                    return nil
                }
                options.observer?.received(m, connection: number)
                if m.header.isReply { route(m) } else { deferred.append(m) }
            } catch .tooManyFDs(let h, let n, let limit) {
                // As in the main loop: the body was consumed, so refuse it and go on.
                logger.warning("\(h.command) #\(h.messageID) carried \(n) fds (limit \(limit)); rejected")
                if !h.noReply && !h.isReply { sendError(to: h, .EINVAL) }
            } catch {
                streamBroken = true
                return nil
            }
            if remaining <= 0 { return completion.wait(timeoutMs: 0) ?? nil }
        }
        return nil
    }

    func dmaRead(address: UInt64, count: Int) throws(VFIOErrno) -> [UInt8] {
        let req = DMAAccess(address: address, count: UInt64(count)).encoded
        let reply = try request(.dmaRead, payload: req)
        do {
            let access = try DMAAccess.decodeDMAReadReply(Array(reply.payload), expectedCount: UInt64(count))
            return access.data
        } catch {
            throw .EIO
        }
    }

    func dmaWrite(address: UInt64, data: ArraySlice<UInt8>) throws(VFIOErrno) {
        let req = DMAAccess(address: address, count: UInt64(data.count), data: Array(data)).encoded
        _ = try request(.dmaWrite, payload: req)
    }

    // MARK: End of connection

    private func finish() {
        for m in deferred { m.closeFDs() }
        deferred.removeAll()
        let waiters = pending.withLock { p in
            let w = p.waiters
            p.waiters.removeAll()
            p.closed = true
            return w
        }
        // Drop this client's mappings and eventfds before waking anyone who waited on
        // it, so the device never again reaches memory through a dead connection.
        device.closeSession(session)
        for w in waiters.values { w.fulfil(nil) }
        OwnerHandOver.unregister(device, session)
        socket.fd.close()
        options.observer?.closed(connection: number)
        logger.info("client disconnected")
    }
}

