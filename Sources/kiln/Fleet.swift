import ArgumentParser
import Foundation
import KilnAPI

/// `kiln fleet`: the fleet controller's view, and a pool's bounds, for operators.
struct Fleet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The fleet controller: its view of the pools and workers, and each pool's bounds.",
        subcommands: [FleetShow.self, FleetBounds.self], defaultSubcommand: FleetShow.self)
}

/// `kiln fleet show` (the default).
struct FleetShow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
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
                    + "\(pool.actual) → \(pool.desired) (min \(pool.minWorkers), max \(pool.maxWorkers)"
                    + (pool.lend ? ", \(pool.lent) lent" : "") + ", arrive in \(Int(pool.provisionSeconds.rounded())) s)  \(pool.reason)")
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

/// `kiln fleet bounds POOL`: sets a pool's bounds until the server restarts.
struct FleetBounds: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bounds",
        abstract: "Set a pool's min and max workers until the server restarts (--max 0 gives a burst pool back now).")

    @Argument(help: "The pool.") var pool: String
    @Option(help: "Its fewest workers.") var min: Int?
    @Option(help: "Its most workers.") var max: Int?
    @OptionGroup var connection: Connection

    func validate() throws {
        guard min != nil || max != nil else { throw ValidationError("give --min, --max or both") }
    }

    func run() async throws {
        let client = try connection.client(.admin)
        let name = pool
        let updated = try await reporting {
            try await client {
                try await $0.setPoolBounds(path: .init(name: name), body: .json(.init(minWorkers: min, maxWorkers: max))).ok.body.json
            }
        }
        print("\(updated.name): min \(updated.minWorkers), max \(updated.maxWorkers) until the server restarts; the next tick acts on them")
    }
}
