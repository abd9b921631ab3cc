// temperature-sensor-server SPEC --socket PATH: serves the temperature sensor (or
// any device the standard variants know) on a Unix socket until SIGINT/SIGTERM.
// A device of your own served by a program of your own: your driver goes in
// front of the standard ones, the generic driver stays last.
import DeviceSpecs
import Glibc
import TemperatureSensor
import VariantDevices
import VFIOUserServer
import VFIOUserTransport

/// A line on fd 1 or 2 (unbuffered, so it is seen at once even through a pipe).
func say(_ s: String, fd: Int32 = 1) { let l = s + "\n"; _ = l.withCString { write(fd, $0, strlen($0)) } }

let args = CommandLine.arguments
guard args.count == 4, args[2] == "--socket" else {
    say("usage: temperature-sensor-server SPEC --socket PATH", fd: 2)
    exit(2)
}
let registry = VariantRegistry(drivers: [TemperatureSensorDriver()] + VariantCatalog.all + [GenericDriver()])
do {
    let spec = try registry.loadSpec(path: args[1])        // accepts the drivers' section keys
    let binding = try registry.bind(spec)                  // id table, then probe
    let device = try binding.driver.build(spec)
    let listener = try UnixListener(path: args[3])
    let server = VFIOUserServer(device: device)
    // Stop on SIGINT/SIGTERM: block them everywhere, wait for them on one thread.
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGINT)
    sigaddset(&set, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &set, nil)
    signal(SIGPIPE, SIG_IGN)
    let signals = set
    spawnThread(name: "signals") {
        var s = signals
        var sig: Int32 = 0
        sigwait(&s, &sig)
        server.stop()
    }
    say("serving \(spec.name) (variant \(binding.driver.name)) on \(args[3])")
    server.serve(on: listener)
    listener.close()
    unlink(args[3])
} catch {
    say("temperature-sensor-server: \(error)", fd: 2)
    exit(2)
}
