import DeviceSpecs
import PCICore


/// Options of the `migration` spec section (docs/migration.md).
public struct MigratableVFOptions: Sendable, Equatable {
    /// The register-backed BAR holding the 256-byte register block, and where.
    public var registersBAR = 0
    /// Offset of the register block in that BAR.
    public var registersOffset: UInt64 = 0
    /// The RAM-backed BAR that is the device's memory (up to 1 GiB).
    public var ramBAR = 2
    /// Offer PRE_COPY.
    public var preCopy = true
    /// Offer RUNNING_P2P.
    public var p2p = true
    /// false: the device offers no migration at all (features answer EINVAL).
    public var enabled = true
    /// Accepted for older specs; the engine is event-driven now (it runs as device
    /// jobs when the guest writes RING_TAIL or CONTROL, and when the device resumes).
    public var workerIntervalMs = 1
    /// Descriptors processed per look.
    public var batch = 32

    /// The defaults: registers at BAR0+0, RAM in BAR2, every state offered.
    public init() {}

    static let keys: Set<String> = ["registersBar", "registersOffset", "ramBar", "preCopy", "p2p", "enabled",
                                    "workerIntervalMs", "batch"]

    /// Parses and checks the section against the spec's BARs.
    public static func parse(_ spec: DeviceSpec) throws(SpecError) -> MigratableVFOptions {
        var o = MigratableVFOptions()
        if let node = spec.sections["migration"] {
            let m = try node.object(allowed: keys)
            if let v = m["registersBar"] { o.registersBAR = try v.int(in: 0...5) }
            if let v = m["registersOffset"] { o.registersOffset = try v.unsigned() }
            if let v = m["ramBar"] { o.ramBAR = try v.int(in: 0...5) }
            if let v = m["preCopy"] { o.preCopy = try v.bool() }
            if let v = m["p2p"] { o.p2p = try v.bool() }
            if let v = m["enabled"] { o.enabled = try v.bool() }
            if let v = m["workerIntervalMs"] { o.workerIntervalMs = try v.int(in: 1...1000) }
            if let v = m["batch"] { o.batch = try v.int(in: 1...4096) }
        }
        let field = spec.sections["migration"] == nil ? "bars" : "migration"
        let bars = spec.configuration.bars
        guard let rb = bars.first(where: { $0.index == o.registersBAR }), rb.backing == .registers, rb.kind != .io else {
            throw spec.error("\(field).registersBar", "BAR\(o.registersBAR) must be a register-backed memory BAR")
        }
        guard o.registersOffset % 4 == 0, o.registersOffset + MigratableVF.registerBlockSize <= min(rb.size, 1 << 20) else {
            throw spec.error("\(field).registersOffset", "the 256-byte register block does not fit in BAR\(o.registersBAR)")
        }
        guard let ram = bars.first(where: { $0.index == o.ramBAR }), case .ram = ram.backing else {
            throw spec.error("\(field).ramBar", "BAR\(o.ramBAR) must be a RAM-backed BAR (\"backing\": \"ram\")")
        }
        guard ram.size >= 4096, ram.size <= MigratableVF.maxRAM else {
            throw spec.error("\(field).ramBar", "the RAM BAR must be 4 KiB to 1 GiB, not \(ram.size) bytes")
        }
        return o
    }
}
