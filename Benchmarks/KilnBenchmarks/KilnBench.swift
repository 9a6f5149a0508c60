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
        switch arguments.first {
        case "scheduler":
            try SchedulerBenchmark.run(
                jobs: option("jobs", 1_000_000), decisions: option("decisions", 200_000), accounts: option("accounts", 10_000))
        case "system":
            try await SystemBenchmark.run(
                jobs: option("jobs", 2_000), workers: option("workers", 8), submitters: option("submitters", 8),
                rate: option("rate", 0))
        default:
            print("usage: kiln-bench scheduler [--jobs N] [--decisions N] [--accounts N]")
            print("       kiln-bench system [--jobs N] [--workers K] [--submitters S] [--rate JOBS_PER_SECOND]")
        }
    }
}
