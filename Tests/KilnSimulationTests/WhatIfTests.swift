import Foundation
import KilnCore
import KilnScheduling
import KilnSimulation
import Testing

@Suite("What if: a forecast from a live queue")
struct WhatIfTests {
    @Test("a trace job that had waited counts its wait from then, and the SLO policy sees its share of the promise")
    func waitedSecondsCount() throws {
        // One GPU. A free job that has waited 3,000 s of its hour and a fresh enterprise job, both
        // queued at 0: the free one has used 83% of its promise, the enterprise one 0%, so it goes
        // first and waits nothing more; the enterprise job waits its 100 s run.
        let report = try Simulator(
            scenario: oneGPU(trace: [
                .init(atSeconds: 0, tier: "enterprise", model: "video", gpuSeconds: 100),
                .init(atSeconds: 0, tier: "free", model: "video", gpuSeconds: 100, waitedSeconds: 3_000),
            ]), policy: SLOPolicy()
        ).run()
        #expect(report.tiers[1].waitSeconds.max == 3_000)
        #expect(report.tiers[1].attainment == 1)
        #expect(report.tiers[0].waitSeconds.max == 100)
        #expect(report.tiers[0].attainment == 0)
    }

    @Test("a negative waited_seconds is refused by name")
    func negativeWaitRefused() {
        #expect(throws: KilnError.self) {
            try Simulator(
                scenario: oneGPU(trace: [.init(atSeconds: 0, tier: "free", model: "video", gpuSeconds: 1, waitedSeconds: -1)]),
                policy: SLOPolicy())
        }
    }

    /// Two tiers, 8 one-GPU workers, 40 jobs queued of 60 s each, 2,400 arrivals in the last hour.
    func live(queuedWaited: Double = 0) -> WhatIf.LiveState {
        WhatIf.LiveState(
            tiers: [.init(name: "api", maxWaitSeconds: 120), .init(name: "free", maxWaitSeconds: 3_600)],
            queued: (0..<40).map { .init(tier: $0 % 4 == 0 ? "api" : "free", model: "video", gpus: 1, waitedSeconds: queuedWaited) },
            arrivalsByTier: ["api": 600, "free": 1_800], arrivalsByModel: ["video": 2_400], arrivalSeconds: 3_600,
            runSeconds: ["video": 60], workers: [.init(cluster: "eu", pool: "h100", accelerator: "h100", gpusPerWorker: 1, workers: 8)],
            dispatchLimits: ["eu": 64], defaultDispatchLimit: 64, leases: .init())
    }

    @Test("the scenario is the live state: queue as trace with its waits, the hour's rate and shares, the fleet plus what is added")
    func scenarioFromLiveState() throws {
        let scenario = try WhatIf.scenario(live(queuedWaited: 30), hours: 2, addedGPUs: 4)
        #expect(scenario.durationHours == 2)
        #expect(scenario.trace.count == 40)
        #expect(scenario.trace.allSatisfy { $0.atSeconds == 0 && $0.waitedSeconds == 30 && $0.gpuSeconds == 60 })
        #expect(scenario.arrivals == [.init(fromHours: 0, toHours: 2, perHour: 2_400)])
        #expect(scenario.tiers.map(\.share) == [600, 1_800])
        #expect(scenario.clusters.count == 1)
        #expect(scenario.clusters[0].pools.map { $0.capacity.first?.workers } == [12])
        #expect(scenario.clusters[0].dispatchLimit == 64)
    }

    @Test("eight GPUs at 40 jobs an hour each cannot keep up with 2,400 an hour; adding 40 can, and the forecast says so")
    func moreGPUsKeepThePromise() async throws {
        // Demand: 2,400 jobs/h × 60 s = 40 GPUs busy. With 8 the queue grows all hour.
        let (now, added) = try await WhatIf.compare(live(), hours: 1, addedGPUs: 40, policy: SLOPolicy())
        #expect(now.gpus == 8)
        #expect(added.gpus == 48)
        let api = (now: try #require(now.tiers.first { $0.name == "api" }), added: try #require(added.tiers.first { $0.name == "api" }))
        #expect(api.now.attainment < 0.5)  // api alone needs 10 GPUs: every tier breaks its promise
        #expect(api.added.attainment > 0.95)
        let free = (now: try #require(now.tiers.first { $0.name == "free" }), added: try #require(added.tiers.first { $0.name == "free" }))
        #expect(free.now.queuedAtEnd > 1_000)
        #expect(free.added.queuedAtEnd < 20)
        #expect(free.added.attainment == 1)
        #expect(now.gpuUtilisation > 0.99)
        #expect(added.gpuUtilisation < now.gpuUtilisation)
    }

    @Test("bad requests are refused with the field named: hours, GPUs out of range, an unknown pool, too long a run")
    func refusals() {
        var busy = live()
        busy.arrivalsByTier = ["free": 100_000]  // 100,000 an hour: 24 hours of it is too long a run
        for (state, hours, gpus, pool, field) in [
            (live(), 0.0, 1, nil, "hours"), (live(), 25, 1, nil, "hours"), (live(), 1, -1, nil, "add_gpus"),
            (live(), 1, 100_001, nil, "add_gpus"), (live(), 1, 1, "a100", "pool"), (busy, 24, 1, nil, "hours"),
        ] as [(WhatIf.LiveState, Double, Int, String?, String)] {
            do {
                _ = try WhatIf.scenario(state, hours: hours, addedGPUs: gpus, pool: pool)
                Issue.record("hours \(hours), gpus \(gpus), pool \(pool ?? "-") was accepted")
            } catch let error as KilnError {
                #expect(error.message.hasPrefix(field), "\(error.message)")
            } catch {
                Issue.record("\(error)")
            }
        }
    }

    @Test("with no worker at all, added GPUs form a pool of their own; without them nothing is dispatched")
    func noWorkers() async throws {
        var state = live()
        state.workers = []
        let (now, added) = try await WhatIf.compare(state, hours: 1, addedGPUs: 48, policy: SLOPolicy())
        #expect(now.gpus == 0)
        #expect(now.tiers.reduce(0) { $0 + $1.queuedAtEnd } >= 40)
        #expect(added.gpus == 48)
        #expect(added.tiers.reduce(0) { $0 + $1.queuedAtEnd } < 20)
    }
}
