import Foundation
import KilnFleet

/// (b) The fleet controller's tick with a large fleet: `workers` workers in four pools (two
/// clusters, primary and burst in each) and `models` model versions, every one with a backlog in
/// three tiers, a tenth of the workers unplaced (just arrived) and demand shifting between ticks so
/// that placement has moves to make.
///
/// Reported per tick, against the cheapest pass a controller must make, in the same run: reading
/// every worker once to count them per pool and model.
enum FleetBenchmark {
    static func run(workers: Int, models: Int, ticks: Int) {
        let pools = (0..<4).map { index in
            CapacityPool(
                name: "pool\(index)", cluster: index < 2 ? "east" : "west", kind: index % 2 == 0 ? .primary : .burst,
                accelerator: "h100", minWorkers: 0, maxWorkers: workers, cooldownSeconds: 300)
        }
        var fleet = (0..<workers).map { index in
            FleetWorker(
                id: index, pool: index % 4, assignment: index % 10 == 0 ? nil : index % models, assignedAt: 0,
                running: index % 3 == 0 ? 0 : 1)
        }
        var controller = FleetController()
        let clock = ContinuousClock()
        var actions = 0
        var decideTime = Duration.zero
        var baselineTime = Duration.zero
        var checksum = 0
        for tick in 0..<ticks {
            let now = 1_000 + Double(tick) * 15
            // Demand moves from model to model from tick to tick.
            let workloads = (0..<models).map { model in
                let weight = 1 + (model + tick) % models
                return Workload(
                    id: "model-\(model)", accelerators: ["h100"], gpus: 1,
                    backlog: ["enterprise", "api", "free"].enumerated().map { rank, tier in
                        Backlog(
                            tier: tier, jobs: weight * 40 * (rank + 1), oldestQueuedAt: now - Double(20 * weight),
                            maxWait: [60.0, 120, 3_600][rank])
                    },
                    running: workers / models, arrivals: tick * weight * 30, defaultRunSeconds: 240, switchSeconds: 60)
            }
            let state = FleetState(pools: pools, workloads: workloads, workers: fleet)
            var decision = FleetDecision()
            decideTime += clock.measure { decision = controller.decide(state, now: now) }
            actions += decision.actions.count
            baselineTime += clock.measure {
                var counts = Array(repeating: 0, count: pools.count * (models + 1))
                for worker in state.workers { counts[worker.pool * (models + 1) + (worker.assignment ?? models)] += 1 }
                checksum &+= counts[tick % counts.count]
            }
            // Apply the placement so the next tick starts from it, as a shell would.
            for action in decision.actions {
                if case .assign(let worker, let workload) = action.kind {
                    fleet[worker].assignment = workload
                    fleet[worker].assignedAt = now
                }
            }
        }
        let perTick = decideTime / ticks
        let perBaseline = baselineTime / ticks
        func milliseconds(_ duration: Duration) -> Double {
            Double(duration.components.seconds) * 1e3 + Double(duration.components.attoseconds) / 1e15
        }
        print("fleet controller benchmark: \(workers) workers, 4 pools, \(models) models, \(ticks) ticks, \(actions) actions")
        print(String(format: "  decide: %.2f ms per tick", milliseconds(perTick)))
        print(String(format: "  baseline (count workers per pool and model): %.3f ms per tick", milliseconds(perBaseline)))
        print(String(format: "  ratio: %.0fx the baseline", milliseconds(perTick) / max(milliseconds(perBaseline), 1e-9)))
        print("  (checksum \(checksum))")
    }
}
