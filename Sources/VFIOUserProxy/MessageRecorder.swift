import Logging
import VFIOUserCapture
import VFIOUserProtocol
import VFIOUserTransport

/// What happens to every message a proxy forwards or a server moves: a trace line,
/// a capture record, protocol validation. One per process; `connection(_:)` gives
/// each connection its own validator state.
public final class MessageRecorder: Sendable {
    /// What to do with each message besides capturing it.
    public struct Settings: Sendable {
        /// Log each message decoded, with its fds.
        public var trace = false
        /// Check each message against the protocol and log deviations.
        public var validate = false
        /// Bytes kept of each packet (pseudo-header included), at most `Pcapng.maxSnapLength`.
        public var snapLength = Pcapng.defaultSnapLength
        /// Nothing but capture (if a file is given), at the default snap length.
        public init() {}
    }

    /// Where records go, if anywhere.
    public let capture: CaptureFile?
    /// Tracing, validation and the snap length.
    public let settings: Settings
    let logger: Logger

    /// A recorder writing to `capture` and logging traces and deviations to `logger`.
    public init(capture: CaptureFile?, settings: Settings, logger: Logger) {
        self.capture = capture
        self.settings = settings
        self.logger = logger
    }

    /// Whether anything is recorded at all (a plain proxy skips framing entirely).
    public var isActive: Bool { capture != nil || settings.trace || settings.validate }

    /// A recorder for connection `number`, with its own validator state.
    public func connection(_ number: UInt32) -> ConnectionRecorder { ConnectionRecorder(number: number, parent: self) }
}

/// One connection's recorder; safe to call from both of its directions' threads.
public final class ConnectionRecorder: Sendable {
    /// The connection number (1, 2, ... in accept order), as written in each record.
    public let number: UInt32
    let parent: MessageRecorder
    private let validator = Locked(ProtocolValidator())
    private let logger: Logger

    init(number: UInt32, parent: MessageRecorder) {
        self.number = number
        self.parent = parent
        var l = parent.logger
        l[metadataKey: "conn"] = "\(number)"
        logger = l
    }

    /// Records one message (or raw run of bytes) and returns the deviations it shows.
    @discardableResult
    public func record(_ direction: CaptureDirection, message: [UInt8], originalLength: Int? = nil,
                       fds: [CapturedFD] = [], flags: CaptureRecord.Flags = [], validate: Bool = true) -> [Deviation] {
        let length = originalLength ?? message.count
        // The snap length counts the whole packet, pseudo-header included.
        let snap = max(parent.settings.snapLength - CaptureRecord.fixedHeaderSize - CaptureRecord.fdEntrySize * fds.count,
                       MessageHeader.size)
        var kept = message
        var recordFlags = flags
        if kept.count > snap {
            kept = Array(kept.prefix(snap))
            recordFlags.insert(.truncated)
        }
        parent.capture?.write(CaptureRecord(timestampMicros: 0, connection: number, direction: direction,
                                            flags: recordFlags, fds: fds, message: kept, originalLength: length))
        if parent.settings.trace {
            logger.info("\(direction) \(Self.describe(message: kept, originalLength: length, fds: fds, flags: recordFlags))")
        }
        guard validate, parent.settings.validate else { return [] }
        return check(direction, message: kept, originalLength: length, fdCount: fds.count, flags: recordFlags)
    }

    /// Checks a message against the protocol and logs each deviation. A server checks
    /// a client's commands when it dispatches them, in the order it applies them.
    public func check(_ direction: CaptureDirection, message: [UInt8], originalLength: Int? = nil, fdCount: Int,
                      flags: CaptureRecord.Flags = []) -> [Deviation] {
        let deviations = validator.withLock {
            $0.check(message: message, originalLength: originalLength ?? message.count, fdCount: fdCount,
                     direction: direction, flags: flags)
        }
        for d in deviations { logger.warning("deviation: \(d)") }
        return deviations
    }

    /// The trace line: the server's `--trace` format plus the fds.
    public static func describe(message: [UInt8], originalLength: Int, fds: [CapturedFD], flags: CaptureRecord.Flags) -> String {
        var line: String
        if flags.contains(.raw) {
            line = "raw \(originalLength) bytes (the stream cannot be framed)"
        } else if flags.contains(.incomplete) {
            line = "incomplete message: the stream ended after \(originalLength) bytes"
        } else {
            line = traceDescription(message: message)
            if flags.contains(.truncated) { line += " (captured \(message.count) of \(originalLength) bytes)" }
        }
        if !fds.isEmpty { line += " fds=[\(fds.map(\.description).joined(separator: ","))]" }
        return line
    }
}
