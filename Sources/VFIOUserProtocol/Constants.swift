// Index and type numbers shared by the kernel's vfio-pci and vfio-user
// (reference §4). Indices are typed (compare `index == RegionIndex.config.rawValue`
// against the raw `index` fields of the wire structs); region types, subtypes
// and capability IDs are plain integers because they are open-ended.

/// A PCI region index (`VFIO_PCI_*_REGION_INDEX`, reference §4.1). A struct
/// rather than an enum because indices ≥ 9 are device-specific.
public struct RegionIndex: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The index as the wire's `index` fields carry it.
    public var rawValue: UInt32
    /// Wraps a raw index.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Wraps a raw index.
    public init(_ v: UInt32) { rawValue = v }

    /// `VFIO_PCI_BAR0_REGION_INDEX`.
    public static let bar0 = RegionIndex(0)
    /// `VFIO_PCI_BAR1_REGION_INDEX`.
    public static let bar1 = RegionIndex(1)
    /// `VFIO_PCI_BAR2_REGION_INDEX`.
    public static let bar2 = RegionIndex(2)
    /// `VFIO_PCI_BAR3_REGION_INDEX`.
    public static let bar3 = RegionIndex(3)
    /// `VFIO_PCI_BAR4_REGION_INDEX`.
    public static let bar4 = RegionIndex(4)
    /// `VFIO_PCI_BAR5_REGION_INDEX`.
    public static let bar5 = RegionIndex(5)
    /// `VFIO_PCI_ROM_REGION_INDEX`: the expansion ROM.
    public static let rom = RegionIndex(6)
    /// `VFIO_PCI_CONFIG_REGION_INDEX`: PCI configuration space.
    public static let config = RegionIndex(7)
    /// `VFIO_PCI_VGA_REGION_INDEX`: legacy VGA ranges.
    public static let vga = RegionIndex(8)
    /// Indices from here on are device-specific and must carry a TYPE capability.
    public static let firstDeviceSpecific = RegionIndex(9)
    /// `VFIO_PCI_NUM_REGIONS`: the size of the standard PCI set.
    public static let standardCount = 9

    /// BAR `n` (0...5).
    public static func bar(_ n: Int) -> RegionIndex { RegionIndex(UInt32(truncatingIfNeeded: n)) }

    /// 0...5.
    public var isBAR: Bool { rawValue <= 5 }
    /// Index 9 or above: a device-specific region.
    public var isDeviceSpecific: Bool { rawValue >= 9 }

    /// `BAR0`...`BAR5`, `ROM`, `CONFIG`, `VGA` or `region N`.
    public var description: String {
        switch rawValue {
        case 0 ... 5: "BAR\(rawValue)"
        case 6: "ROM"; case 7: "CONFIG"; case 8: "VGA"
        default: "region \(rawValue)"
        }
    }
}

/// A PCI IRQ index (`VFIO_PCI_*_IRQ_INDEX`, reference §4.2).
public struct IRQIndex: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The index as the wire's `index` fields carry it.
    public var rawValue: UInt32
    /// Wraps a raw index.
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Wraps a raw index.
    public init(_ v: UInt32) { rawValue = v }

    /// `VFIO_PCI_INTX_IRQ_INDEX`: the legacy pin interrupt.
    public static let intx = IRQIndex(0)
    /// `VFIO_PCI_MSI_IRQ_INDEX`.
    public static let msi = IRQIndex(1)
    /// `VFIO_PCI_MSIX_IRQ_INDEX`.
    public static let msix = IRQIndex(2)
    /// `VFIO_PCI_ERR_IRQ_INDEX`: AER error notification.
    public static let err = IRQIndex(3)
    /// `VFIO_PCI_REQ_IRQ_INDEX`: the device asks the user to release it.
    public static let req = IRQIndex(4)
    /// `VFIO_PCI_NUM_IRQS`.
    public static let count = 5

    /// `INTX`, `MSI`, `MSIX`, `ERR`, `REQ` or `irq index N`.
    public var description: String {
        switch rawValue {
        case 0: "INTX"; case 1: "MSI"; case 2: "MSIX"; case 3: "ERR"; case 4: "REQ"
        default: "irq index \(rawValue)"
        }
    }
}

/// Region types and subtypes carried by the TYPE region capability (reference §4.5).
public enum RegionType {
    /// `VFIO_REGION_TYPE_PCI_VENDOR_TYPE`: OR-ed with a PCI vendor ID.
    public static let pciVendorType: UInt32 = 1 << 31
    /// The vendor ID bits of a `pciVendorType` type.
    public static let pciVendorMask: UInt32 = 0xffff
    /// `VFIO_REGION_TYPE_GFX`: graphics regions (EDID).
    public static let gfx: UInt32 = 1
    /// `VFIO_REGION_TYPE_CCW`: s390 channel I/O regions.
    public static let ccw: UInt32 = 2
    /// `VFIO_REGION_TYPE_MIGRATION_DEPRECATED`: the migration v1 region.
    public static let migrationDeprecated: UInt32 = 3

    /// The vendor-specific type for `vendorID`, e.g. 0x80008086 for Intel.
    public static func pciVendor(_ vendorID: UInt16) -> UInt32 { pciVendorType | UInt32(vendorID) }

    /// Subtype numbers; they are only meaningful together with a type.
    public enum Subtype {
        /// Intel (type `pciVendor(0x8086)`).
        public static let igdOpRegion: UInt32 = 1
        /// Intel IGD host bridge config space copy (type `pciVendor(0x8086)`).
        public static let igdHostCfg: UInt32 = 2
        /// Intel IGD LPC bridge config space copy (type `pciVendor(0x8086)`).
        public static let igdLPCCfg: UInt32 = 3
        /// NVIDIA (type `pciVendor(0x10de)`), deprecated in Linux.
        public static let nvlink2RAM: UInt32 = 1
        /// IBM (type `pciVendor(0x1014)`), deprecated in Linux.
        public static let nvlink2ATSD: UInt32 = 1
        /// Type `gfx`.
        public static let gfxEDID: UInt32 = 1
        /// Type `ccw`.
        public static let ccwAsyncCmd: UInt32 = 1
        /// CCW subchannel information block (type `ccw`).
        public static let ccwSCHIB: UInt32 = 2
        /// CCW channel report words (type `ccw`).
        public static let ccwCRW: UInt32 = 3
        /// Type `migrationDeprecated` (migration v1; never expose it).
        public static let migrationDeprecated: UInt32 = 1
    }
}

/// Region-info capability IDs (`VFIO_REGION_INFO_CAP_*`, reference §4.4).
public enum RegionCapabilityID {
    /// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: the mmappable areas of a region.
    public static let sparseMmap: UInt16 = 1
    /// `VFIO_REGION_INFO_CAP_TYPE`: the region's type and subtype.
    public static let type: UInt16 = 2
    /// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`: the MSI-X table may be mmapped.
    public static let msixMappable: UInt16 = 3
    /// `VFIO_REGION_INFO_CAP_NVLINK2_SSATGT`: NVLink2 GPU RAM target address.
    public static let nvlink2SSATGT: UInt16 = 4
    /// `VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD`: NVLink2 link speed.
    public static let nvlink2LinkSpeed: UInt16 = 5
}

/// Device-info capability IDs (`VFIO_DEVICE_INFO_CAP_*`, reference §4.6).
public enum DeviceInfoCapabilityID {
    /// `VFIO_DEVICE_INFO_CAP_ZPCI_BASE`: s390 zPCI base data.
    public static let zpciBase: UInt16 = 1
    /// `VFIO_DEVICE_INFO_CAP_ZPCI_GROUP`: s390 zPCI function group data.
    public static let zpciGroup: UInt16 = 2
    /// `VFIO_DEVICE_INFO_CAP_ZPCI_UTIL`: s390 zPCI utility string.
    public static let zpciUtil: UInt16 = 3
    /// `VFIO_DEVICE_INFO_CAP_ZPCI_PFIP`: s390 zPCI PCI function interruption path.
    public static let zpciPFIP: UInt16 = 4
    /// `VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP`: the PCIe AtomicOp completer sizes the root port supports.
    public static let pciAtomicComp: UInt16 = 5
}
