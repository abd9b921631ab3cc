import ArgumentParser

@main
struct VFU: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vfu",
        abstract: "A vfio-user device server, client and test tool.",
        version: VFUVersion.line,
        subcommands: [ServeCommand.self, InspectCommand.self, VariantsCommand.self, BenchCommand.self,
                      CheckSpecCommand.self, ConformCommand.self, BenchEchoCommand.self, MigrateCommand.self,
                      ProxyCommand.self, ReplayCommand.self, CtlCommand.self, BenchHostCommand.self])
}
