import FoundationEssentials
import Glibc
import PCICore

/// Where the built-in doorbell model sits.
public struct DoorbellPlacement: Sendable, Equatable {
    /// The register-backed BAR.
    public var bar: Int
    /// Offset of the model's registers in it.
    public var offset: UInt64
    /// A placement.
    public init(bar: Int, offset: UInt64) {
        self.bar = bar
        self.offset = offset
    }
}

/// A device described by a JSON spec file (docs/spec-format.md): the core
/// configuration it builds, plus the sections a variant reads for itself.
public struct DeviceSpec: Sendable {
    /// The spec file's path (errors name it).
    public var file: String
    /// The device's name.
    public var name: String
    /// A line about the device (free text).
    public var description: String
    /// A variant forced by the spec (like the kernel's driver_override).
    public var variant: String?
    /// What the core builds: identity, BARs, interrupts, capabilities, registers.
    public var configuration: PCIDeviceConfiguration
    /// Where the built-in doorbell model sits, if the spec places one.
    public var doorbell: DoorbellPlacement?
    /// Top-level sections that belong to variants (igd, nvlink2, ...), unparsed.
    public var sections: [String: SpecNode]
    /// The folder of the spec file, for files it names (OpRegion images, ...).
    public var directory: String
    /// Index in `configuration.extendedCapabilities` of the free-space DVSEC
    /// placeholder (`"id": "free-space-dvsec"`), which `buildCoreDevice` fills in
    /// with the ranges left free by the final layout.
    public var freeSpaceDVSEC: Int? = nil

    /// Top-level keys the core understands.
    public static let coreKeys: Set<String> = [
        "name", "description", "variant", "ids", "express", "bars", "rom", "interrupts", "capabilities",
        "extendedCapabilities", "registers", "doorbell", "reset", "faults",
    ]

    /// Loads and validates a spec. `sectionKeys` are the extra top-level keys the
    /// known variants accept; any other unknown key is an error.
    public static func load(path: String, sectionKeys: Set<String> = []) throws(SpecError) -> DeviceSpec {
        let bytes: [UInt8]
        do { bytes = try readFile(path) } catch {
            throw SpecError(file: path, field: "", reason: "cannot read the file: \(error.reason)")
        }
        return try parse(bytes, file: path, sectionKeys: sectionKeys)
    }

    /// Parses spec JSON; `sectionKeys` are the variants' top-level sections (others are errors).
    public static func parse(_ bytes: [UInt8], file: String, sectionKeys: Set<String> = []) throws(SpecError) -> DeviceSpec {
        let json = try JSONValue.parse(bytes, file: file)
        let root = SpecNode(file: file, path: "", value: json)
        var spec = try SpecParser.parse(root, sectionKeys: sectionKeys)
        spec.directory = file.contains("/") ? String(file[..<file.lastIndex(of: "/")!]) : "."
        return spec
    }

    /// Builds the core device, turning core validation failures into spec errors.
    public func buildCoreDevice(_ configuration: PCIDeviceConfiguration? = nil) throws(SpecError) -> PCIDevice {
        do { return try PCIDevice(configuration: try finalConfiguration(configuration ?? self.configuration)) } catch {
            throw SpecError(file: file, field: error.subject, reason: error.reason)
        }
    }

    /// `c` with the free-space DVSEC (if the spec asks for one) listing the ranges
    /// that the layout of `c` leaves free. Variants that adjust the configuration
    /// must only append capabilities, so the placeholder keeps its index.
    public func finalConfiguration(_ c: PCIDeviceConfiguration) throws(ConfigLayoutError) -> PCIDeviceConfiguration {
        guard let i = freeSpaceDVSEC else { return c }
        return try FreeSpaceDVSEC.resolve(c, at: i).0
    }

    /// An error about `field` of this spec.
    public func error(_ field: String, _ reason: String) -> SpecError { SpecError(file: file, field: field, reason: reason) }
}

/// Why a file could not be read: the OS's own words (strerror), e.g. "No such file or directory".
struct FileReadError: Error {
    var reason: String
}

/// The whole file, or the OS's reason it cannot be read.
func readFile(_ path: String) throws(FileReadError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FileReadError(reason: String(cString: strerror(errno))) }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw FileReadError(reason: String(cString: strerror(errno))) }
    guard (st.st_mode & S_IFMT) != S_IFDIR else { throw FileReadError(reason: String(cString: strerror(EISDIR))) }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n >= 0 else { throw FileReadError(reason: String(cString: strerror(errno))) }
        if n == 0 { return out }
        out += buf[0..<n]
    }
}
