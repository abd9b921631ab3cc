import DeviceSpecs
import PCICore

/// One entry of a variant's id table, like the kernel's `struct pci_device_id`:
/// nil fields match anything; the class matches under `classMask`.
public struct PCIMatch: Sendable, Equatable, CustomStringConvertible {
    /// Vendor ID, or any.
    public var vendor: UInt16?
    /// Device ID, or any.
    public var device: UInt16?
    /// Subsystem vendor ID, or any.
    public var subsystemVendor: UInt16?
    /// Subsystem ID, or any.
    public var subsystem: UInt16?
    /// Class code to match under `classMask`.
    public var classCode: UInt32
    /// Class bits that must match (0: any class).
    public var classMask: UInt32

    /// An entry; every field left out matches anything.
    public init(vendor: UInt16? = nil, device: UInt16? = nil, subsystemVendor: UInt16? = nil, subsystem: UInt16? = nil,
                classCode: UInt32 = 0, classMask: UInt32 = 0) {
        self.vendor = vendor
        self.device = device
        self.subsystemVendor = subsystemVendor
        self.subsystem = subsystem
        self.classCode = classCode
        self.classMask = classMask
    }

    /// Whether `id` matches every pinned field.
    public func matches(_ id: PCIIdentity) -> Bool {
        (vendor.map { $0 == id.vendor } ?? true) && (device.map { $0 == id.device } ?? true)
            && (subsystemVendor.map { $0 == id.subsystemVendor } ?? true) && (subsystem.map { $0 == id.subsystem } ?? true)
            && (id.classCode & classMask) == (classCode & classMask)
    }

    /// How specific the entry is: more fields pinned = a better match (the kernel
    /// takes the first matching driver; we rank so the order of registration does not matter).
    public var specificity: Int {
        [vendor != nil, device != nil, subsystemVendor != nil, subsystem != nil].filter { $0 }.count * 32
            + classMask.nonzeroBitCount
    }

    /// "vvvv:dddd sub ssss:ssss" (with the class when one is pinned).
    public var description: String {
        func h(_ v: UInt16?) -> String { v.map { String(format4($0)) } ?? "*" }
        var s = "\(h(vendor)):\(h(device)) sub \(h(subsystemVendor)):\(h(subsystem))"
        if classMask != 0 { s += " class 0x\(format6(classCode))/0x\(format6(classMask))" }
        return s
    }
}

func format6(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 6 - s.count)) + s
}

func format4(_ v: UInt16) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 4 - s.count)) + s
}

/// What a probe decided.
public enum ProbeResult: Sendable, Equatable {
    /// The spec has what the driver needs: it builds the device.
    case accept
    /// It does not; the reason is logged and the next candidate is tried.
    case decline(String)
}

/// A variant device driver: which devices it claims, whether a spec has what it
/// needs, and how to build the device on top of the core's public API.
public protocol VariantDriver: Sendable {
    /// A short unique name (`--variant`, the spec's `variant`).
    var name: String { get }
    /// One line for `vfu variants`.
    var summary: String { get }
    /// The devices the driver claims (like the kernel's `pci_device_id` table).
    var idTable: [PCIMatch] { get }
    /// Top-level spec sections this variant reads (they are unknown keys to others).
    var sectionKeys: Set<String> { get }
    /// Checks the prerequisites the spec must declare.
    func probe(_ spec: DeviceSpec) -> ProbeResult
    /// Builds the device. Errors name the spec field at fault.
    func build(_ spec: DeviceSpec) throws(SpecError) -> PCIDevice
}

extension VariantDriver {
    /// No spec sections of its own.
    public var sectionKeys: Set<String> { [] }
}
