import ArgumentParser
import Foundation
import KilnAPI

/// `kiln top`: the launch as it happens, in the terminal: each tier's queue against its promise,
/// the pools and the workers, refreshed in place.
struct Top: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each tier's queue and the share of its promise used, the pools and the workers, refreshing.")

    @Option(help: "Seconds between refreshes.") var interval: Double = 2
    @Flag(help: "Print the view once and exit (for scripts).") var once = false
    @OptionGroup var connection: Connection

    func run() async throws {
        guard interval >= 0.2 else { throw ValidationError("--interval must be at least 0.2 seconds") }
        let client = try connection.client(.admin)
        let terminal = isatty(STDOUT_FILENO) == 1 && !once
        while true {
            let queue = try await reporting { try await client { try await $0.getQueue(query: .init(limit: 5)).ok.body.json } }
            let fleet = try await reporting { try await client { try await $0.getFleet().ok.body.json } }
            let workers = try await reporting { try await client { try await $0.listWorkers().ok.body.json.data } }
            let screen = Self.render(queue: queue, fleet: fleet, workers: workers, at: Date())
            // Home and clear on a terminal, so the view stays in place; plain lines otherwise.
            print((terminal ? "\u{1B}[H\u{1B}[2J" : "") + screen, terminator: "")
            fflush(nil)
            if once { return }
            try await Task.sleep(for: .milliseconds(Int(interval * 1000)))
        }
    }

    static func render(
        queue: Components.Schemas.QueueView, fleet: Components.Schemas.FleetObject, workers: [Components.Schemas.WorkerObject], at now: Date
    ) -> String {
        var lines = ["kiln top  \(RFC3339.format(now))  policy \(queue.policy)  queued \(queue.queued)  dispatched \(queue.dispatched)", ""]
        lines.append(pad("TIER", 12) + pad("PROMISE", 9, right: true) + pad("QUEUED", 9, right: true) + "  OLDEST, SHARE OF PROMISE USED")
        for tier in queue.tiers {
            let rows = queue.rows.filter { $0.tier == tier.name }
            let queued = rows.reduce(0) { $0 + $1.queued }
            let share = rows.compactMap(\.maxUrgency).max() ?? 0
            let filled = min(Int((min(share, 1) * 20).rounded()), 20)
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: 20 - filled)
            let flag = share >= 1 ? "  PAST THE PROMISE" : share >= 0.75 ? "  at risk" : ""
            lines.append(
                pad(tier.name, 12) + pad(duration(tier.maxWaitSeconds), 9, right: true) + pad("\(queued)", 9, right: true) + "  "
                    + bar + String(format: " %4.2f", share) + flag)
        }
        lines.append("")
        if fleet.pools.isEmpty {
            lines.append("no capacity pools: the fleet is whatever workers register")
        } else {
            lines.append(pad("POOL", 14) + pad("CLUSTER", 12) + pad("KIND", 9) + pad("NOW → WANTED", 14) + "WHY")
            for pool in fleet.pools {
                lines.append(
                    pad(pool.name, 14) + pad(pool.cluster, 12) + pad(pool.kind.rawValue, 9) + pad("\(pool.actual) → \(pool.desired)", 14)
                        + pool.reason)
            }
        }
        lines.append("")
        let active = workers.filter { $0.state == .active }.count
        lines.append("workers: \(active) active, \(workers.count - active) draining")
        for worker in fleet.workers.prefix(12) {
            let serving = worker.model.map { "serves \($0)" } ?? "unplaced"
            lines.append("  " + pad(worker.id, 30) + pad(worker.state.rawValue, 14) + pad(serving, 28) + "running \(worker.running)")
        }
        if fleet.workers.count > 12 { lines.append("  … and \(fleet.workers.count - 12) more") }
        return lines.joined(separator: "\n") + "\n"
    }

    static func pad(_ text: String, _ width: Int, right: Bool = false) -> String {
        let space = String(repeating: " ", count: max(width - text.count, 1))
        return right ? space + text : text + space
    }

    /// `60s`, `15m`, `1h`.
    static func duration(_ seconds: Double) -> String {
        if seconds >= 3_600, seconds.truncatingRemainder(dividingBy: 3_600) == 0 { return "\(Int(seconds / 3_600))h" }
        if seconds >= 60, seconds.truncatingRemainder(dividingBy: 60) == 0 { return "\(Int(seconds / 60))m" }
        return "\(Int(seconds))s"
    }
}
