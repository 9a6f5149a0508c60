import ArgumentParser
import Foundation
import KilnAPI

/// `kiln fleet`: the fleet controller's view, for operators.
struct Fleet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show every capacity pool's actual and desired size with its reason, what each worker serves, and the latest decisions.")

    @Option(help: "How many of the latest decisions to show.") var decisions: Int = 10
    @OptionGroup var connection: Connection

    func run() async throws {
        let client = try connection.client(.admin)
        let fleet = try await reporting { try await client { try await $0.getFleet().ok.body.json } }
        if fleet.pools.isEmpty {
            print("no capacity pools are configured: the fleet is whatever workers register, and any worker takes any model")
            return
        }
        print("pools" + (fleet.tickedAt.map { " (decided \(RFC3339.format($0)))" } ?? " (no tick yet)"))
        for pool in fleet.pools {
            print(
                "  \(pool.name)  \(pool.cluster)/\(pool.kind.rawValue)  \(pool.provider.rawValue)  \(pool.accelerator)  "
                    + "\(pool.actual) → \(pool.desired) (min \(pool.minWorkers), max \(pool.maxWorkers))  \(pool.reason)")
        }
        print("workers")
        if fleet.workers.isEmpty { print("  none") }
        for worker in fleet.workers {
            let serving = worker.model.map { model in
                let version = worker.version.map { " \($0.prefix(19))" } ?? ""
                let ready = worker.version != nil && worker.version == worker.readyVersion ? " ready" : worker.version == nil ? "" : " preparing"
                return "\(model)\(version)\(ready)"
            } ?? "any model"
            print("  \(worker.id)  \(worker.pool)  \(worker.state.rawValue)  \(serving)  running \(worker.running)")
        }
        print("latest decisions")
        if fleet.decisions.isEmpty { print("  none") }
        for decision in fleet.decisions.prefix(max(0, decisions)) {
            print("  \(RFC3339.format(decision.at))  \(decision.action): \(decision.reason)")
        }
    }
}
