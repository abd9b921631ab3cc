import ArgumentParser
import Glibc
import Logging

/// `--log-level` values.
enum LogLevelOption: String, ExpressibleByArgument, CaseIterable {
    case trace, debug, info, notice, warning, error, critical
    var level: Logger.Level { Logger.Level(rawValue: rawValue)! }
}

/// Sets up swift-log to write to stderr once per process.
func makeLogger(level: LogLevelOption) -> Logger {
    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = level.level
        return h
    }
    var l = Logger(label: "vfu")
    l.logLevel = level.level
    return l
}

/// Writes a line to stderr (no buffering, safe from any thread).
func printError(_ s: String) {
    let line = s + "\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}
