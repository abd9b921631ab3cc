import ArgumentParser
import Logging
import VFIOUserCapture
import VFIOUserProtocol
import VFIOUserProxy
import VFIOUserServer
import VFIOUserTransport

/// `vfu serve`'s --pcap, --validate and --strict, kept apart from ServeCommand.
struct ServeRecordingOptions: ParsableArguments {
    @Option(help: "Write a pcapng capture of every message to this file (see docs/debugging.md).")
    var pcap: String?

    @Option(help: "Bytes kept of each packet (at most 262144, what Wireshark reads).")
    var snapLength = Pcapng.defaultSnapLength

    @Flag(name: .customLong("validate"), help: "Check both directions against the protocol and log each deviation.")
    var validateProtocol = false

    @Flag(help: "Refuse (EINVAL) and log every client command that deviates from the protocol, even if we could serve it.")
    var strict = false

    func validate() throws {
        guard (64...Pcapng.maxSnapLength).contains(snapLength) else {
            throw ValidationError("--snap-length must be 64...\(Pcapng.maxSnapLength)")
        }
    }

    /// What the servers of one `vfu serve` share (one capture file), or nil when no
    /// option asks for recording.
    func shared(logger: Logger) throws -> RecordingObserver.Shared? {
        guard pcap != nil || validateProtocol || strict else { return nil }
        let recorder = try makeRecorder(pcap: pcap, snapLength: snapLength, trace: false,
                                        validate: validateProtocol || strict, logger: logger)
        return RecordingObserver.Shared(recorder: recorder, strict: strict, logger: logger)
    }
}

/// Feeds a server's messages to a `MessageRecorder`. Client commands are validated
/// when they are dispatched (the order the server applies them); everything else
/// when it arrives or leaves.
final class RecordingObserver: MessageObserver {
    /// One recorder for every device a `vfu serve` serves.
    struct Shared {
        let recorder: MessageRecorder
        let strict: Bool
        let logger: Logger

        /// Device `index`'s observer. Each server numbers its connections from 1, so in a
        /// shared capture the connection number is `index << 24` plus the server's own.
        func observer(device index: Int) -> RecordingObserver {
            RecordingObserver(recorder: recorder, strict: strict, logger: logger, connectionBase: UInt32(index) << 24)
        }
    }

    let recorder: MessageRecorder
    let strict: Bool
    let logger: Logger
    let connectionBase: UInt32
    private let connections = Locked<[Int: ConnectionRecorder]>([:])

    init(recorder: MessageRecorder, strict: Bool, logger: Logger, connectionBase: UInt32) {
        self.recorder = recorder
        self.strict = strict
        self.logger = logger
        self.connectionBase = connectionBase
    }

    private func connection(_ n: Int) -> ConnectionRecorder {
        connections.withLock { c in
            if let r = c[n] { return r }
            let r = recorder.connection(connectionBase + UInt32(truncatingIfNeeded: n))
            c[n] = r
            return r
        }
    }

    func received(_ message: ReceivedMessage, connection n: Int) {
        connection(n).record(.clientToServer, message: message.bytes, fds: message.fds.map { inspectFD($0.rawValue) },
                             validate: message.header.isReply)
    }

    func sending(_ header: MessageHeader, payload: [UInt8], fds: [Int32], connection n: Int) {
        var h = header
        h.messageSize = UInt32(MessageHeader.size + payload.count)
        connection(n).record(.serverToClient, message: h.bytes + payload, fds: fds.map(inspectFD))
    }

    func refusal(for command: ReceivedMessage, connection n: Int) -> VFIOErrno? {
        guard recorder.settings.validate else { return nil }
        let deviations = connection(n).check(.clientToServer, message: command.bytes, fdCount: command.fds.count)
        guard strict, let first = deviations.first else { return nil }
        logger.warning("strict: refusing \(command.header.command) #\(command.header.messageID): \(first)")
        return .EINVAL
    }

    func closed(connection n: Int) {
        _ = connections.withLock { $0.removeValue(forKey: n) }
    }
}
