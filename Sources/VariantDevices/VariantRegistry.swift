import DeviceSpecs
import PCICore

/// The outcome of binding a spec to a driver, with the reasons for the log.
public struct VariantBinding: Sendable {
    /// The driver that bound.
    public var driver: any VariantDriver
    /// Why this driver bound.
    public var reason: String
    /// Each candidate that declined or did not match, and why.
    public var skipped: [(name: String, reason: String)]
}

/// All variant drivers, and the matching rules between them and a spec, in the
/// manner of the PCI core's driver matching:
/// - a forced variant (spec `variant` or `--variant`, like driver_override) binds
///   or fails with its probe's reason;
/// - otherwise candidates whose id table matches are tried from the most specific
///   entry down; a declining probe falls through to the next;
/// - the generic core device ends the list and accepts every spec.
public struct VariantRegistry: Sendable {
    /// The drivers, in no particular order (matching ranks them).
    public var drivers: [any VariantDriver]

    /// A registry of `drivers` (put `GenericDriver` last to have a fallback).
    public init(drivers: [any VariantDriver]) { self.drivers = drivers }

    /// Every variant this build knows, generic last.
    public static let standard = VariantRegistry(drivers: VariantCatalog.all + [GenericDriver()])

    /// Every section some driver reads: known keys for the spec parser.
    public var sectionKeys: Set<String> { drivers.reduce(into: Set<String>()) { $0.formUnion($1.sectionKeys) } }

    /// The driver called `name`, if any.
    public func driver(named name: String) -> (any VariantDriver)? { drivers.first { $0.name == name } }

    /// Parses the spec at `path`, knowing every driver's sections.
    public func loadSpec(path: String) throws(SpecError) -> DeviceSpec {
        try DeviceSpec.load(path: path, sectionKeys: sectionKeys)
    }

    /// Chooses the driver for `spec` (`override` forces one, like driver_override).
    public func bind(_ spec: DeviceSpec, override: String? = nil) throws(SpecError) -> VariantBinding {
        if let forced = override ?? spec.variant {
            guard let d = driver(named: forced) else {
                throw spec.error(override == nil ? "variant" : "--variant",
                                 "unknown variant '\(forced)'; known: \(drivers.map(\.name).joined(separator: ", "))")
            }
            switch d.probe(spec) {
            case .accept:
                return VariantBinding(driver: d, reason: "forced by \(override == nil ? "the spec's 'variant'" : "--variant")", skipped: [])
            case .decline(let why):
                throw spec.error(override == nil ? "variant" : "--variant", "variant '\(forced)' declined this spec: \(why)")
            }
        }
        let id = spec.configuration.identity
        var ranked: [(driver: any VariantDriver, entry: PCIMatch, order: Int)] = []
        var skipped: [(name: String, reason: String)] = []
        for (order, d) in drivers.enumerated() where !(d is GenericDriver) {
            if let best = d.idTable.filter({ $0.matches(id) }).max(by: { $0.specificity < $1.specificity }) {
                ranked.append((d, best, order))
            } else {
                skipped.append((d.name, "no id-table entry matches \(format4(id.vendor)):\(format4(id.device)) sub \(format4(id.subsystemVendor)):\(format4(id.subsystem)) class 0x\(format6(id.classCode))"))
            }
        }
        // Most specific first; equally specific entries in registration order.
        ranked.sort { ($0.entry.specificity, -$0.order) > ($1.entry.specificity, -$1.order) }
        for (d, entry, _) in ranked {
            switch d.probe(spec) {
            case .accept:
                return VariantBinding(driver: d, reason: "id-table entry \(entry) matched and the probe accepted", skipped: skipped)
            case .decline(let why):
                skipped.append((d.name, "matched \(entry) but the probe declined: \(why)"))
            }
        }
        return VariantBinding(driver: GenericDriver(), reason: "no variant claimed the device", skipped: skipped)
    }
}

/// The variant drivers other than the generic one.
public enum VariantCatalog {
    /// Every built-in variant (platform and migration).
    public static var all: [any VariantDriver] { platformVariants + migrationVariants }
}
