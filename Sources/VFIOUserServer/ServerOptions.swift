import VFIOUserProtocol

/// Limits and behaviour of a server, fixed before it listens.
public struct ServerOptions: Sendable {
    /// Largest data count we accept in one region or migration transfer.
    public var maxDataXferSize = 1 << 20
    /// Most fds we accept in one message (QEMU accepts at most 16 from a server).
    public var maxMsgFDs = 16
    /// Most DMA mappings one client may have at once (advertised as `max_dma_maps`; more fail with ENOSPC).
    public var maxDMAMaps = 65535
    /// Advertise REGION_WRITE_MULTI (we implement it).
    public var writeMultiple = true
    /// Log every message decoded, both directions.
    public var trace = false
    /// How long to wait for a client: its reply to a DMA_READ / DMA_WRITE, or the other
    /// end of a mig-data-fd transfer that makes no progress (the transfer fails with EIO).
    public var clientReplyTimeoutMs = 5000
    /// Extensions we offer to clients that ask (see docs/protocol-extensions.md).
    public var extensions: [String: String] = ["device-info-caps": "1", "mig-data-fd": "1"]
    /// Over `mig-data-fd`, send a stopped device's memory by reference (vmsplice and
    /// splice) instead of copying it. Off: every byte is copied, as through a socket.
    public var migrationZeroCopy = true
    /// Sees every message in both directions (captures, validation, strict mode).
    public var observer: (any MessageObserver)?
    /// A control plane watching and steering every command (docs/control.md); nil: none.
    public var hooks: (any ServerHooks)?

    /// The defaults: 1 MiB transfers, 16 fds, 65535 mappings.
    public init() {}

    /// The largest message we are prepared to read: a data transfer plus its headers.
    public var maxMessageSize: Int { maxDataXferSize + 64 }
}
