import KilnCore
import KilnScheduling
import KilnSimulation
import Testing

/// One cluster whose pools the fleet controller sizes; two tiers; the arrivals of `trace` only.
private func controlled(
    trace: [Scenario.TraceJob], pools: [Scenario.PoolSpec], models: [Scenario.ModelSpec]? = nil, hours: Double = 1
) -> Scenario {
    Scenario(
        name: "controlled", durationHours: hours,
        tiers: [
            .init(name: "api", maxWaitSeconds: 120, share: 0),
            .init(name: "free", maxWaitSeconds: 3_600, share: 0),
        ],
        arrivals: [], trace: trace,
        models: models ?? [.init(name: "video", share: 0, runtime: .init(distribution: .fixed, meanSeconds: 60))],
        clusters: [.init(name: "c", dispatchLimit: 64, pools: pools)],
        sampleEverySeconds: 30, fleet: .init(mode: .controller, tickSeconds: 15))
}

@Suite("Simulator under the fleet controller")
struct FleetSimulationTests {
    @Test("queued work grows the pool at once; it shrinks to its min after the cool-down; every job is served once")
    func growsAndShrinks() throws {
        let trace = (0..<30).map { _ in Scenario.TraceJob(atSeconds: 1, tier: "api", model: "video", gpuSeconds: 60) }
        let scenario = controlled(
            trace: trace,
            pools: [
                .init(
                    name: "p", accelerator: "h100",
                    autoscale: .init(minWorkers: 1, maxWorkers: 6, cooldownSeconds: 300, provisionSeconds: 30))
            ])
        let report = try Simulator(scenario: scenario, policy: SLOPolicy()).run()
        #expect(report.tiers[0].completed == 30)
        #expect(report.tiers.allSatisfy { $0.failed == 0 && $0.unserved == 0 })
        #expect(report.workersProvisioned == 5)
        let available = report.series.map(\.availableGPUs)
        #expect(available.max() == 6)
        // 30 jobs of a minute on 6 workers: done by about 6 minutes; the pool holds 5 minutes more,
        // then goes back to its one worker, and stays there.
        let shrunk = report.series.first { $0.hours > 0.05 && $0.availableGPUs == 1 }
        let shrunkAt = try #require(shrunk).hours * 3600
        // The arrival-rate estimate of that burst decays over its 5-minute window first.
        #expect(shrunkAt >= 300 + 300 && shrunkAt <= 1_500)
        #expect(available.last == 1)
    }

    @Test("a burst pool is given back first: its running jobs finish within the grace or return to the queue, charged no attempt")
    func burstGivenBackWithRelease() throws {
        // Four short jobs take the primary pool's four workers; four long ones arrive a second later
        // and go to the burst pool. Once the short ones are done, the primary pool has room for the
        // long ones: the burst pool is drained, its jobs outlast the 120 s grace and are released,
        // and the primary workers run them again.
        var trace = (0..<4).map { _ in Scenario.TraceJob(atSeconds: 0, tier: "api", model: "video", gpuSeconds: 100) }
        trace += (0..<4).map { _ in Scenario.TraceJob(atSeconds: 1, tier: "api", model: "video", gpuSeconds: 1_500) }
        var scenario = controlled(
            trace: trace,
            pools: [
                .init(name: "primary", accelerator: "h100", autoscale: .init(minWorkers: 4, maxWorkers: 4, cooldownSeconds: 60)),
                .init(
                    name: "borrowed", kind: .burst, accelerator: "h100",
                    autoscale: .init(minWorkers: 0, maxWorkers: 4, cooldownSeconds: 60, drainGraceSeconds: 120)),
            ])
        scenario.durationHours = 2
        let report = try Simulator(scenario: scenario, policy: SLOPolicy()).run()
        #expect(report.releasedJobs >= 1)
        #expect(report.tiers[0].completed == 8)
        #expect(report.tiers.allSatisfy { $0.failed == 0 && $0.unserved == 0 })
        // Every job was charged its one attempt, released ones included.
        #expect(report.retries == 0)
        #expect(report.attemptsCharged == 8)
        // The burst pool was back to nothing well before the end; its hours are the borrowed ones
        // (the primary pool's four GPUs were there for the whole two hours).
        #expect(report.series.last?.availableGPUs == 4)
        #expect(report.gpuHoursBorrowed > 0)
        #expect(abs(report.gpuHoursAvailable - 8 - report.gpuHoursBorrowed) < 1e-6)
    }

    @Test("a lending pool lends what it does not hold above its floor and reports the GPU-hours; one that does not lend reports none")
    func lendingReportsLentHours() throws {
        // 40 one-minute jobs at the start, then two quiet hours: the pool grows from its floor of 2 to
        // 10 (taking its GPUs back from training takes 5 minutes), serves them, and after the
        // arrival window and its cool-down holds only the floor again; the rest is lent.
        let trace = (0..<40).map { _ in Scenario.TraceJob(atSeconds: 1, tier: "api", model: "video", gpuSeconds: 60) }
        func run(lend: Bool) throws -> SimulationReport {
            let scenario = controlled(
                trace: trace,
                pools: [
                    .init(
                        name: "shared", accelerator: "h100",
                        autoscale: .init(minWorkers: 2, maxWorkers: 10, cooldownSeconds: 300, provisionSeconds: 300, lend: lend))
                ], hours: 2)
            return try Simulator(scenario: scenario, policy: SLOPolicy()).run()
        }
        let lending = try run(lend: true)
        #expect(lending.tiers[0].completed == 40)
        #expect(lending.series.map(\.availableGPUs).max() == 10)
        // Held (available or on its way back) and lent make up the pool's 10 GPUs, all day.
        #expect(lending.gpuHoursAvailable + lending.gpuHoursLent <= 10 * 2 + 1e-6)
        // Back to its floor within about half an hour: 8 GPUs lent for most of the two hours.
        #expect(lending.gpuHoursLent > 8 * 1.4, "\(lending.gpuHoursLent)")
        #expect(lending.series.last?.availableGPUs == 2, "the floor is never lent")
        let own = try run(lend: false)
        #expect(own.gpuHoursLent == 0)
        #expect(own.tiers[0].completed == 40)
    }

    @Test("placement keeps each worker on one model: far fewer switches than any-worker-any-model on the same fleet")
    func placementCutsSwitches() throws {
        let models: [Scenario.ModelSpec] = [
            .init(name: "a", share: 1, runtime: .init(distribution: .fixed, meanSeconds: 60), acceleratorSpeed: ["h100": 1], switchSeconds: 60),
            .init(name: "b", share: 1, runtime: .init(distribution: .fixed, meanSeconds: 60), acceleratorSpeed: ["h100": 1], switchSeconds: 60),
        ]
        var scenario = controlled(
            trace: [],
            pools: [
                .init(
                    name: "p", accelerator: "h100", capacity: [.init(atHours: 0, workers: 8)],
                    autoscale: .init(minWorkers: 8, maxWorkers: 8))
            ], models: models, hours: 2)
        scenario.tiers[0].share = 1
        // 8 workers, a minute a job: 480 an hour at most; 300 arrive, half of each model.
        scenario.arrivals = [.init(fromHours: 0, toHours: 2, perHour: 300)]
        scenario.fleet.mode = .manual
        let manual = try Simulator(scenario: scenario, policy: SLOPolicy()).run()
        scenario.fleet.mode = .controller
        let placed = try Simulator(scenario: scenario, policy: SLOPolicy()).run()
        #expect(manual.modelSwitches > 50)
        #expect(placed.modelSwitches * 5 < manual.modelSwitches)
        #expect(placed.gpuHoursSwitching * 5 < manual.gpuHoursSwitching)
        #expect(placed.tiers[0].attainment >= manual.tiers[0].attainment)
        #expect(placed.gpuHoursAvailable <= manual.gpuHoursAvailable + 1e-9)
    }

    @Test("the controller fleet needs every pool's bounds, named when missing")
    func needsBounds() {
        let scenario = controlled(trace: [], pools: [.init(name: "p", accelerator: "h100", capacity: [.init(atHours: 0, workers: 1)])])
        #expect {
            try Simulator(scenario: scenario, policy: SLOPolicy())
        } throws: { error in
            (error as? KilnError)?.message.contains("clusters[0].pools[0]: the controller fleet needs the pool's autoscale bounds") ?? false
        }
    }
}
