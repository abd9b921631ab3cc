import ArgumentParser

@main
struct VFU: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfu",
        abstract: "A vfio-user device server, client and test tool.",
        subcommands: [ServeCommand.self, InspectCommand.self, VariantsCommand.self, BenchCommand.self,
                      CheckSpecCommand.self, ConformCommand.self, BenchEchoCommand.self, BenchHostCommand.self,
                      MigrateCommand.self])
}
