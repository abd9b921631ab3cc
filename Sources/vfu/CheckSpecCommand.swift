import ArgumentParser
import DeviceSpecs
import VariantDevices

struct CheckSpecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-spec",
        abstract: "Validate spec files and show which variant each binds to.")

    @Argument(help: "Spec files.")
    var specs: [String]

    func run() throws {
        let registry = VariantRegistry.standard
        var failed = false
        for path in specs {
            do {
                let spec = try registry.loadSpec(path: path)
                let binding = try registry.bind(spec)
                _ = try binding.driver.build(spec)
                print("\(path): ok (\(spec.name), variant \(binding.driver.name))")
            } catch {
                printError("\(error)")
                failed = true
            }
        }
        if failed { throw ExitCode(2) }
    }
}
