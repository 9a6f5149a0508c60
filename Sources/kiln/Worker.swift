import ArgumentParser
import Foundation
import Hummingbird
import KilnWorker
import Logging
import ServiceLifecycle

struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a worker: lease jobs, run models as Python processes, report results. SIGTERM drains it.")

    @Option(help: "The Kiln server, or several sharing one store separated by commas (default: $KILN_URL).") var server: String?
    @Option(help: "A worker key (default: $KILN_WORKER_KEY).") var key: String?
    @Option(help: "The cluster this worker belongs to.") var cluster: String = "default"
    @Option(help: "The server's capacity pool this worker belongs to (placement then assigns it a model).") var pool: String?
    @Option(help: "Accelerator kind (cpu, h100, mi300x, …).") var accelerator: String = "cpu"
    @Option(help: "GPUs on this node.") var gpus: Int = 0
    @Option(help: "Environment platform to run (cpu, cuda12-x86_64, …).") var platform: String = "cpu"
    @Option(help: "Folder for cached model versions and job files.") var cache: String = ".kiln/worker-cache"
    @Option(help: "Disk budget of the version cache, in GiB.") var cacheGib: Int = 50
    @Option(help: "The Python interpreter for model runtimes.") var python: String = "python3"
    @Option(help: "Folder holding the kiln_runtime package (default: found beside this program).") var runtimePath: String?
    @Option(help: "Stop and fail (retryably) a job running longer than this many seconds from its start.") var jobTimeout: Double = 3600
    @Option(help: "Run model runtimes as this unprivileged user (needs a worker running as root, and an interpreter that user can run).")
    var runtimeUser: String?
    @Option(
        name: .customLong("runtime-env"),
        help: "A variable of this worker's environment that model runtimes see too (repeatable; never a KILN_ one).")
    var runtimeEnvironment: [String] = []
    @Option(name: .customLong("label"), help: "A label KEY=VALUE (repeatable).") var labels: [String] = []
    @Option(help: "Log format: text, or json (one object per line on standard error).") var logFormat: LogFormat = .text
    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics (0 picks a free port; none by default).") var metricsPort: Int?
    @Option(help: "The address the metrics listen on.") var metricsHost: String = "0.0.0.0"

    func run() async throws {
        logFormat.bootstrap()
        let environment = ProcessInfo.processInfo.environment
        guard let server = server ?? environment["KILN_URL"] else { throw ValidationError("pass --server or set KILN_URL") }
        guard let key = key ?? environment["KILN_WORKER_KEY"] else { throw ValidationError("pass --key or set KILN_WORKER_KEY") }
        var options = WorkerOptions(
            server: server, key: key, cache: URL(filePath: cache, directoryHint: .isDirectory),
            runtimePath: try RuntimeLocator.find(runtimePath))
        options.cluster = cluster
        options.pool = pool
        options.accelerator = accelerator
        options.gpus = gpus
        options.platform = platform
        options.cacheBudgetBytes = Int64(cacheGib) << 30
        options.python = python
        options.jobTimeoutSeconds = jobTimeout
        for name in runtimeEnvironment where name.hasPrefix("KILN_") {
            throw ValidationError("--runtime-env \(name): a KILN_ variable never reaches model code")
        }
        options.runtimeEnvironment = Set(runtimeEnvironment)
        let logger = Logger(label: "kiln.worker")
        if let runtimeUser {
            guard geteuid() == 0 else { throw ValidationError("--runtime-user needs the worker to run as root") }
            options.runtimeUser = try RuntimeProcess.RuntimeUser(named: runtimeUser)
        } else if geteuid() == 0 {
            logger.warning("running as root without --runtime-user: model code runs as root and can write this worker's files")
        }
        for label in labels {
            let parts = label.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { throw ValidationError("--label '\(label)' is not KEY=VALUE") }
            options.labels[String(parts[0])] = String(parts[1])
        }
        // A model runtime that died is written to before it is reaped: that must not kill the worker.
        signal(SIGPIPE, SIG_IGN)
        let agent = try WorkerAgent(options: options, logger: logger)
        var services: [any Service] = [agent]
        if let metricsPort {
            let router = Router()
            router.get("/metrics") { _, _ -> Response in
                Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(bytes: await agent.metricsExposition())))
            }
            let host = metricsHost
            services.append(
                Application(
                    router: router, configuration: .init(address: .hostname(host, port: metricsPort), serverName: "kiln-worker"),
                    onServerRunning: { channel in
                        print("kiln worker metrics on http://\(host):\(channel.localAddress?.port ?? metricsPort)/metrics")
                        fflush(nil)
                    }, logger: logger))
        }
        try await serve(services, logger: logger)
    }
}

/// Finds the `kiln_runtime` Python package: `--runtime-path`, `$KILN_RUNTIME_PATH`, then a
/// `python/` folder beside or above this program (a source checkout), then `./python`.
enum RuntimeLocator {
    static func find(_ explicit: String?) throws -> URL {
        let manager = FileManager.default
        func holdsRuntime(_ url: URL) -> Bool { manager.fileExists(atPath: url.appending(path: "kiln_runtime/__init__.py").path) }
        if let path = explicit ?? ProcessInfo.processInfo.environment["KILN_RUNTIME_PATH"] {
            let url = URL(filePath: path, directoryHint: .isDirectory)
            guard holdsRuntime(url) else { throw ValidationError("\(path) does not hold the kiln_runtime package") }
            return url
        }
        var folder = URL(filePath: CommandLine.arguments[0]).standardizedFileURL.resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<6 {
            if holdsRuntime(folder.appending(path: "python")) { return folder.appending(path: "python") }
            folder = folder.deletingLastPathComponent()
        }
        let local = URL(filePath: manager.currentDirectoryPath).appending(path: "python")
        guard holdsRuntime(local) else {
            throw ValidationError("cannot find the kiln_runtime package; pass --runtime-path or set KILN_RUNTIME_PATH")
        }
        return local
    }
}
