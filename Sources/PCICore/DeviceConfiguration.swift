/// The identity registers of a function.
public struct PCIIdentity: Sendable, Equatable {
    /// Vendor ID (0x00).
    public var vendor: UInt16
    /// Device ID (0x02).
    public var device: UInt16
    /// Subsystem Vendor ID (0x2C).
    public var subsystemVendor: UInt16
    /// Subsystem ID (0x2E).
    public var subsystem: UInt16
    /// Revision ID (0x08).
    public var revision: UInt8
    /// 24 bits: base class << 16 | subclass << 8 | programming interface.
    public var classCode: UInt32

    /// An identity; the class defaults to 0xFF0000 (unassigned).
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
    /// What the BAR decodes: 32-bit memory, 64-bit memory (two slots) or I/O.
    public enum Kind: String, Sendable, Equatable {
        /// 32-bit memory.
        case memory32
        /// 64-bit memory: takes this slot and the next.
        case memory64
        /// I/O space (4-256 bytes, register-backed).
        case io
    }
    /// What serves the BAR's bytes.
    public enum Backing: Sendable, Equatable {
        /// Registers served by handlers (a `RegisterFile` plus whatever the device adds).
        case registers
        /// Shared memory (a memfd); `mmap` offers it to clients; `preserveOnReset`
        /// keeps its contents across resets.
        case ram(mmap: Bool, preserveOnReset: Bool)
    }

    /// BAR number, 0-5 (a 64-bit BAR also takes the next one).
    public var index: Int
    /// Size in bytes, a power of two.
    public var size: UInt64
    /// Memory (32/64-bit) or I/O.
    public var kind: Kind
    /// The Prefetchable bit of a memory BAR.
    public var prefetchable: Bool
    /// Registers or shared memory.
    public var backing: Backing

    /// A BAR; register-backed 32-bit memory unless said otherwise.
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

/// The MSI capability a function offers.
public struct MSIConfiguration: Sendable, Equatable {
    /// 1, 2, 4, 8, 16 or 32 (Multiple Message Capable).
    public var vectors: Int
    /// 64-bit message address.
    public var address64: Bool
    /// Per-vector masking (Mask and Pending Bits).
    public var perVectorMask: Bool
    /// Where to place the capability; nil = automatic.
    public var offset: Int?
    /// MSI with `vectors` vectors.
    public init(vectors: Int, address64: Bool = true, perVectorMask: Bool = true, offset: Int? = nil) {
        self.vectors = vectors
        self.address64 = address64
        self.perVectorMask = perVectorMask
        self.offset = offset
    }
}

/// The MSI-X capability, table and PBA a function offers.
public struct MSIXConfiguration: Sendable, Equatable {
    /// Table size, 1-2048.
    public var vectors: Int
    /// The register-backed memory BAR holding the table.
    public var tableBAR: Int
    /// Table offset in that BAR (8-byte aligned).
    public var tableOffset: UInt32
    /// The BAR holding the Pending Bit Array.
    public var pbaBAR: Int
    /// PBA offset in that BAR (8-byte aligned).
    public var pbaOffset: UInt32
    /// Where to place the capability; nil = automatic.
    public var offset: Int?
    /// MSI-X with `vectors` entries, table and PBA where given.
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
    /// The register-backed BAR.
    public var bar: Int
    /// Offset in the BAR.
    public var offset: UInt64
    /// 1, 2, 4 or 8 bytes.
    public var width: Int
    /// Power-on value (little-endian).
    public var value: UInt64
    /// Bits software may change.
    public var writeMask: UInt64
    /// A register definition.
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
    /// A short name (logs, memfd names).
    public var name: String
    /// Vendor, device, subsystem, revision, class.
    public var identity: PCIIdentity
    /// A PCI Express function: 4 KiB config space and a PCI Express capability.
    public var express: Bool = false
    /// What the PCI Express capability advertises.
    public var expressParameters = ExpressParameters()
    /// Where to place the PCI Express capability; nil = automatic.
    public var expressOffset: Int?
    /// The BARs.
    public var bars: [BARDescriptor] = []
    /// Expansion ROM size (0 = none; else a power of two, 2 KiB-16 MiB).
    public var romSize: UInt64 = 0
    /// The ROM image (zero-padded to `romSize`).
    public var romContents: [UInt8] = []
    /// 0 = no INTx, 1...4 = INTA...INTD.
    public var interruptPin: UInt8 = 0
    /// MSI, if offered.
    public var msi: MSIConfiguration?
    /// MSI-X, if offered.
    public var msix: MSIXConfiguration?
    /// Offer the ERR index on a conventional function (Express ones always have it).
    public var errInterrupt = false
    /// Offer the REQ index.
    public var reqInterrupt = false
    /// Add a Power Management capability.
    public var powerManagement = false
    /// Where to place it; nil = automatic.
    public var powerManagementOffset: Int?
    /// Extra standard capabilities (vendor-specific, ...).
    public var capabilities: [PCICapability] = []
    /// Extra extended capabilities (DSN, PASID, DVSEC, ...).
    public var extendedCapabilities: [PCIExtendedCapability] = []
    /// Initial values of registers in register-backed BARs.
    public var registers: [RegisterDefinition] = []
    /// Whether DEVICE_RESET works (GET_INFO's RESET flag).
    public var resetSupported = true

    /// A function with `identity` and nothing else (no BARs, no interrupts).
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
