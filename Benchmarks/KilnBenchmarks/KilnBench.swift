import Foundation

@main
enum KilnBench {
    static func main() async throws {
        let arguments = Array(CommandLine.arguments.dropFirst())
        func option(_ name: String, _ fallback: Int) -> Int {
            guard let index = arguments.firstIndex(of: "--\(name)"), index + 1 < arguments.count,
                let value = Int(arguments[index + 1])
            else { return fallback }
            return value
        }
        func text(_ name: String) -> String? {
            guard let index = arguments.firstIndex(of: "--\(name)"), index + 1 < arguments.count else { return nil }
            return arguments[index + 1]
        }
        switch arguments.first {
        case "scheduler":
            try SchedulerBenchmark.run(
                jobs: option("jobs", 1_000_000), decisions: option("decisions", 200_000), accounts: option("accounts", 10_000))
        case "fleet":
            FleetBenchmark.run(workers: option("workers", 10_000), models: option("models", 20), ticks: option("ticks", 200))
        case "system":
            // The server binary: --server PATH, or the `kiln` built beside this executable.
            let beside = URL(filePath: CommandLine.arguments[0]).deletingLastPathComponent().appending(path: "kiln")
            var options = SystemBenchmark.Options(server: text("server").map { URL(filePath: $0) } ?? beside)
            options.jobs = option("jobs", options.jobs)
            options.workers = option("workers", options.workers)
            options.submitters = option("submitters", options.submitters)
            options.latencySamples = option("latency-samples", options.latencySamples)
            options.replicas = option("replicas", options.replicas)
            options.batch = option("batch", options.batch)
            options.queueDepth = option("queue-depth", options.queueDepth)
            options.database = text("database")
            options.servers = option("servers", options.servers)
            if let protocols = text("protocols") { options.protocols = protocols.split(separator: ",").map(String.init) }
            try await SystemBenchmark.run(options)
        case "pull":
            guard let server = text("server"), let key = text("key"), let worker = text("worker"), let version = text("version"),
                let cache = text("cache")
            else {
                print("usage: kiln-bench pull --server URL --key WORKER_KEY --worker ID --version sha256:… --cache DIR")
                return
            }
            try await PullBenchmark.run(server: server, key: key, worker: worker, version: version, cache: URL(filePath: cache))
        default:
            print("usage: kiln-bench scheduler [--jobs N] [--decisions N] [--accounts N]")
            print("       kiln-bench fleet [--workers N] [--models N] [--ticks N]")
            print("       kiln-bench system [--jobs N] [--workers K] [--submitters S] [--latency-samples N] [--replicas R]")
            print("                         [--protocols classic,combined,batched] [--batch B] [--queue-depth N]")
            print("                         [--server PATH_TO_KILN]")
            print("                         [--database postgres://USER@HOST:PORT/DB] [--servers N]")
            print("       kiln-bench pull --server URL --key WORKER_KEY --worker ID --version sha256:… --cache DIR")
        }
    }
}
