/// The identity registers of a function.
public struct PCIIdentity: Sendable, Equatable {
    public var vendor: UInt16
    public var device: UInt16
    public var subsystemVendor: UInt16
    public var subsystem: UInt16
    public var revision: UInt8
    /// 24 bits: base class << 16 | subclass << 8 | programming interface.
    public var classCode: UInt32

    public init(vendor: UInt16, device: UInt16, subsystemVendor: UInt16 = 0, subsystem: UInt16 = 0,
                revision: UInt8 = 0, classCode: UInt32 = 0xFF0000) {
        self.vendor = vendor
        self.device = device
        self.subsystemVendor = subsystemVendor
        self.subsystem = subsystem
        self.revision = revision
        self.classCode = classCode
    }
}

/// One Base Address Register.
public struct BARDescriptor: Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable { case memory32, memory64, io }
    public enum Backing: Sendable, Equatable {
        /// Registers served by handlers (a `RegisterFile` plus whatever the device adds).
        case registers
        /// Shared memory (a memfd); `mmap` offers it to clients; `preserveOnReset`
        /// keeps its contents across resets.
        case ram(mmap: Bool, preserveOnReset: Bool)
    }

    public var index: Int
    public var size: UInt64
    public var kind: Kind
    public var prefetchable: Bool
    public var backing: Backing

    public init(index: Int, size: UInt64, kind: Kind = .memory32, prefetchable: Bool = false, backing: Backing = .registers) {
        self.index = index
        self.size = size
        self.kind = kind
        self.prefetchable = prefetchable
        self.backing = backing
    }

    /// The low flag bits of the BAR register.
    public var flagBits: UInt32 {
        switch kind {
        case .io: return 0x1
        case .memory32: return prefetchable ? 0x8 : 0
        case .memory64: return 0x4 | (prefetchable ? 0x8 : 0)
        }
    }
}

public struct MSIConfiguration: Sendable, Equatable {
    public var vectors: Int
    public var address64: Bool
    public var perVectorMask: Bool
    public var offset: Int?
    public init(vectors: Int, address64: Bool = true, perVectorMask: Bool = true, offset: Int? = nil) {
        self.vectors = vectors
        self.address64 = address64
        self.perVectorMask = perVectorMask
        self.offset = offset
    }
}

public struct MSIXConfiguration: Sendable, Equatable {
    public var vectors: Int
    public var tableBAR: Int
    public var tableOffset: UInt32
    public var pbaBAR: Int
    public var pbaOffset: UInt32
    public var offset: Int?
    public init(vectors: Int, tableBAR: Int, tableOffset: UInt32, pbaBAR: Int, pbaOffset: UInt32, offset: Int? = nil) {
        self.vectors = vectors
        self.tableBAR = tableBAR
        self.tableOffset = tableOffset
        self.pbaBAR = pbaBAR
        self.pbaOffset = pbaOffset
        self.offset = offset
    }
}

/// A register value the device starts with (in a register-backed BAR).
public struct RegisterDefinition: Sendable, Equatable {
    public var bar: Int
    public var offset: UInt64
    public var width: Int
    public var value: UInt64
    public var writeMask: UInt64
    public init(bar: Int, offset: UInt64, width: Int, value: UInt64, writeMask: UInt64) {
        self.bar = bar
        self.offset = offset
        self.width = width
        self.value = value
        self.writeMask = writeMask
    }
}

/// Everything the core needs to build a function. Device specs (JSON) produce it;
/// variants adjust it before the device is built.
public struct PCIDeviceConfiguration: Sendable, Equatable {
    public var name: String
    public var identity: PCIIdentity
    public var express: Bool = false
    public var expressParameters = ExpressParameters()
    public var expressOffset: Int?
    public var bars: [BARDescriptor] = []
    public var romSize: UInt64 = 0
    public var romContents: [UInt8] = []
    /// 0 = no INTx, 1...4 = INTA...INTD.
    public var interruptPin: UInt8 = 0
    public var msi: MSIConfiguration?
    public var msix: MSIXConfiguration?
    public var errInterrupt = false
    public var reqInterrupt = false
    public var powerManagement = false
    public var powerManagementOffset: Int?
    public var capabilities: [PCICapability] = []
    public var extendedCapabilities: [PCIExtendedCapability] = []
    public var registers: [RegisterDefinition] = []
    /// Whether DEVICE_RESET works (GET_INFO's RESET flag).
    public var resetSupported = true

    public init(name: String, identity: PCIIdentity) {
        self.name = name
        self.identity = identity
    }
}

extension PCIDeviceConfiguration {
    /// Checks everything `PCIDevice(configuration:)` would, without allocating the
    /// device's memory: BARs, registers, interrupts and the capability layout.
    /// Returns where the capabilities would land.
    @discardableResult
    public func validate() throws(ConfigLayoutError) -> PlacedCapabilities {
        try DeviceBuilder.validate(self)
        var std: [PCICapability] = []
        if powerManagement { std.append(.powerManagement(offset: powerManagementOffset)) }
        if let m = msi { std.append(.msi(vectors: m.vectors, address64: m.address64, perVectorMask: m.perVectorMask, offset: m.offset)) }
        if let x = msix {
            std.append(.msix(vectors: x.vectors, tableBAR: x.tableBAR, tableOffset: x.tableOffset, pbaBAR: x.pbaBAR,
                             pbaOffset: x.pbaOffset, offset: x.offset))
            if x.tableBAR == x.pbaBAR {
                let t = UInt64(x.tableOffset)..<(UInt64(x.tableOffset) + UInt64(x.vectors * 16))
                let p = UInt64(x.pbaOffset)..<(UInt64(x.pbaOffset) + UInt64((x.vectors + 63) / 64 * 8))
                if t.overlaps(p) { throw ConfigLayoutError(subject: "interrupts.msix.pbaOffset", reason: "the PBA overlaps the MSI-X table") }
            }
        }
        if express { std.append(.express(expressParameters, offset: expressOffset)) }
        std += capabilities
        return try CapabilityLayout.apply(standard: std, extended: extendedCapabilities, to: ConfigSpace(size: express ? 4096 : 256))
    }
}
