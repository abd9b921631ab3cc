import ArgumentParser
import VariantDevices

struct VariantsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "variants",
        abstract: "List the variant drivers and what each matches.")

    func run() throws {
        for d in VariantRegistry.standard.drivers {
            print("\(d.name): \(d.summary)")
            for m in d.idTable { print("    matches \(m)") }
            if !d.sectionKeys.isEmpty { print("    spec sections: \(d.sectionKeys.sorted().joined(separator: ", "))") }
        }
    }
}
