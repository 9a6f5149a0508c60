import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import KilnCore
import KilnScheduling
import KilnSimulation
import Testing

/// One H100 worker, two tiers, no random traffic: the arrivals of `trace` only.
func oneGPU(trace: [Scenario.TraceJob], startDelay: Double = 0) -> Scenario {
    Scenario(
        name: "one-gpu", durationHours: 1,
        tiers: [
            .init(name: "enterprise", maxWaitSeconds: 60, share: 0),
            .init(name: "free", maxWaitSeconds: 3_600, share: 0),
        ],
        arrivals: [], trace: trace,
        models: [.init(name: "video", share: 0, runtime: .init(distribution: .fixed, meanSeconds: 100))],
        clusters: [
            .init(
                name: "c", dispatchLimit: 8, startDelaySeconds: startDelay,
                pools: [.init(name: "p", accelerator: "h100", capacity: [.init(atHours: 0, workers: 1)])])
        ])
}

@Suite("Simulator")
struct SimulatorTests {
    // Free jobs at 0 s and 0 s, an enterprise job at 10 s, each 100 s of GPU time, one GPU.
    let day = oneGPU(trace: [
        .init(atSeconds: 0, tier: "free", model: "video", gpuSeconds: 100),
        .init(atSeconds: 0, tier: "free", model: "video", gpuSeconds: 100),
        .init(atSeconds: 10, tier: "enterprise", model: "video", gpuSeconds: 100),
    ])

    @Test("SLO, worked by hand: at 100 s the enterprise job (urgency 90/60) goes before the free one (100/3600)")
    func sloByHand() throws {
        let report = try Simulator(scenario: day, policy: SLOPolicy()).run()
        let enterprise = report.tiers[0]
        let free = report.tiers[1]
        #expect(enterprise.completed == 1)
        #expect(enterprise.waitSeconds.max == 90)
        #expect(enterprise.attainment == 0)  // 90 s > its 60 s promise
        #expect(free.completed == 2)
        #expect(free.waitSeconds.p50 == 0)
        #expect(free.waitSeconds.max == 200)
        #expect(free.attainment == 1)
        // 300 GPU-seconds busy out of 3600 available.
        #expect(abs(report.gpuUtilisation - 300.0 / 3600) < 1e-9)
    }

    @Test("FIFO, worked by hand: the second free job goes first, the enterprise job waits 190 s")
    func fifoByHand() throws {
        let report = try Simulator(scenario: day, policy: FIFOPolicy()).run()
        #expect(report.tiers[0].waitSeconds.max == 190)
        #expect(report.tiers[1].waitSeconds.max == 100)
    }

    @Test("the dispatch limit and start delay hold work back as the server's would")
    func startDelay() throws {
        // Two workers but a dispatch limit of 1 and 30 s from lease to start: the second job can be
        // leased only once the first has started.
        var scenario = oneGPU(
            trace: [
                .init(atSeconds: 0, tier: "free", model: "video", gpuSeconds: 100),
                .init(atSeconds: 0, tier: "free", model: "video", gpuSeconds: 100),
            ], startDelay: 30)
        scenario.clusters[0].dispatchLimit = 1
        scenario.clusters[0].pools[0].capacity = [.init(atHours: 0, workers: 2)]
        let report = try Simulator(scenario: scenario, policy: SLOPolicy()).run()
        #expect(report.tiers[1].waitSeconds.p50 == 0)
        #expect(report.tiers[1].waitSeconds.max == 30)
    }

    @Test("a worker that dies mid-job: the job is retried after the lease TTL with its queued time")
    func failureAndRetry() throws {
        var scenario = oneGPU(trace: [.init(atSeconds: 0, tier: "free", model: "video", gpuSeconds: 100)])
        // Certain failure on the first attempt's draw is not guaranteed, so use a tiny MTBF: every
        // attempt fails and the job fails after max_attempts.
        scenario.failures = .init(meanHoursBetweenFailures: 1e-9, recoverySeconds: 0)
        scenario.leases = .init(ttlSeconds: 30, maxAttempts: 3)
        let report = try Simulator(scenario: scenario, policy: SLOPolicy()).run()
        #expect(report.workerFailures == 3)
        #expect(report.retries == 2)
        #expect(report.tiers[1].failed == 1)
        #expect(report.tiers[1].completed == 0)
    }

    @Test("the same seed gives byte-identical JSON; another seed another day")
    func determinism() throws {
        var scenario = BuiltInScenarios.launchDay
        scenario.durationHours = 1
        scenario.arrivals = [.init(fromHours: 0, toHours: 1, perHour: 3_000)]
        scenario.bursts = []
        let first = try Simulator(scenario: scenario, policy: SLOPolicy()).run().json()
        let second = try Simulator(scenario: scenario, policy: SLOPolicy()).run().json()
        #expect(first == second)
        scenario.seed += 1
        let other = try Simulator(scenario: scenario, policy: SLOPolicy()).run().json()
        #expect(other != first)
    }

    @Test("while capacity exceeds demand the SLO policy keeps every tier's wait bounded, however long the run")
    func boundedWaitUnderCapacity() throws {
        func run(hours: Double) throws -> SimulationReport {
            var scenario = BuiltInScenarios.launchDay
            scenario.durationHours = hours
            scenario.bursts = []
            scenario.failures = nil
            // 50 GPUs, about 4.3 GPU-minutes a job: capacity ~700 jobs an hour; demand 560 (80%).
            scenario.arrivals = [.init(fromHours: 0, toHours: hours, perHour: 560)]
            scenario.clusters[0].pools = [.init(name: "h100", accelerator: "h100", capacity: [.init(atHours: 0, workers: 50)])]
            return try Simulator(scenario: scenario, policy: SLOPolicy()).run()
        }
        let short = try run(hours: 4)
        let long = try run(hours: 48)
        for (index, tier) in long.tiers.enumerated() {
            #expect(tier.unserved < 50, "\(tier.name) left \(tier.unserved) queued")
            #expect(tier.waitMultiple.max < 1, "\(tier.name) waited \(tier.waitMultiple.max)× its promise")
            // Twelve times longer, the worst wait does not grow with it.
            #expect(tier.waitSeconds.max <= max(short.tiers[index].waitSeconds.max * 3, 120), "\(tier.name)")
        }
        // Busy but not saturated (model switches and start delays add to the 80% of pure GPU time).
        #expect(long.gpuUtilisation > 0.7 && long.gpuUtilisation < 0.97, "utilisation \(long.gpuUtilisation)")
    }

    @Test("a burst pool is used last and given back: no GPU-hours are spent on it while the primary pool suffices")
    func burstPoolUsedLast() throws {
        var scenario = oneGPU(trace: (0..<4).map { .init(atSeconds: Double($0) * 200, tier: "free", model: "video", gpuSeconds: 100) })
        scenario.clusters[0].pools.append(.init(name: "borrowed", kind: .burst, accelerator: "h100", capacity: [.init(atHours: 0, workers: 1)]))
        let report = try Simulator(scenario: scenario, policy: SLOPolicy()).run()
        // Jobs never overlap, so the one primary worker runs them all: 400 busy GPU-seconds, none
        // of them waiting.
        #expect(report.tiers[1].waitSeconds.max == 0)
        #expect(abs(report.gpuHoursBusy - 400.0 / 3600) < 1e-9)
        #expect(report.modelSwitches == 0)
    }

    @Test("protected demand alone beyond the fleet for an hour: free jobs are still dispatched in every ten minutes")
    func protectedSurge() throws {
        // 10 workers, 60 s a job: 600 jobs an hour. For an hour, 1,000 arrive: 800 enterprise alone.
        let scenario = Scenario(
            name: "paid-surge", durationHours: 3,
            tiers: [
                .init(name: "enterprise", maxWaitSeconds: 60, share: 0.8), .init(name: "free", maxWaitSeconds: 3_600, share: 0.2),
            ],
            arrivals: [.init(fromHours: 0, toHours: 1, perHour: 1_000)],
            models: [.init(name: "video", runtime: .init(distribution: .fixed, meanSeconds: 60))],
            clusters: [
                .init(
                    name: "c", dispatchLimit: 1_000,
                    pools: [.init(name: "p", accelerator: "h100", capacity: [.init(atHours: 0, workers: 10)])])
            ],
            sampleEverySeconds: 600, protection: .init(tiers: ["enterprise"], share: 0.9))
        let protected = try Simulator(scenario: scenario, policy: try scenario.configured(ProtectedPolicy.standard)).run()
        let strict = try Simulator(scenario: scenario, policy: StrictPriorityPolicy()).run()
        let surge = { (report: SimulationReport) in report.series.filter { $0.hours > 0.2 && $0.hours <= 1 } }
        #expect(surge(protected).count == 5)
        for sample in surge(protected) {
            #expect(sample.waitP50[1] != nil, "no free job dispatched in the ten minutes to \(sample.hours) h")
        }
        // Strict priority gives the free tier nothing once the enterprise queue has formed.
        #expect(surge(strict).allSatisfy { $0.waitP50[1] == nil })
        // Both serve every job by the end, and the protected tier keeps most of its promise.
        #expect(protected.tiers.allSatisfy { $0.unserved == 0 })
        #expect(protected.tiers[1].waitSeconds.max < strict.tiers[1].waitSeconds.max)
    }

    @Test("bad scenarios are refused with the field named")
    func validation() {
        var scenario = day
        scenario.trace[0].tier = "gold"
        #expect(throws: KilnError.self) { try Simulator(scenario: scenario, policy: SLOPolicy()) }
        do {
            _ = try Simulator(scenario: scenario, policy: SLOPolicy())
        } catch let error as KilnError {
            #expect(error.message.contains("trace[0].tier"))
        } catch {
            Issue.record("unexpected \(error)")
        }
        var negative = day
        negative.clusters[0].pools[0].capacity = [.init(atHours: 0, workers: -1)]
        #expect(throws: KilnError.self) { try Simulator(scenario: negative, policy: SLOPolicy()) }
        var huge = day
        huge.clusters[0].pools[0].gpusPerWorker = 100_000
        do {
            _ = try Simulator(scenario: huge, policy: SLOPolicy())
            Issue.record("a worker of 100,000 GPUs was accepted")
        } catch let error as KilnError {
            #expect(error.message.contains("clusters[0].pools[0].gpus_per_worker"))
        } catch {
            Issue.record("unexpected \(error)")
        }
        // A negative switch would schedule a model's load before the moment it begins.
        var backwards = day
        backwards.models[0].switchSeconds = -1_000
        do {
            _ = try Simulator(scenario: backwards, policy: SLOPolicy())
            Issue.record("a negative switch_seconds was accepted")
        } catch let error as KilnError {
            #expect(error.message.contains("models[0].switch_seconds"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test("the chart is well-formed SVG with a panel per policy")
    func chart() throws {
        let policies: [any SchedulingPolicy] = [SLOPolicy(), FIFOPolicy()]
        let reports = try policies.map { try Simulator(scenario: day, policy: $0).run() }
        let svg = SimulationChart.svg(reports)
        #expect(svg.hasPrefix("<svg") || svg.hasPrefix("<?xml"))
        #expect(svg.contains("slo") && svg.contains("fifo"))
        #expect(!svg.contains("nan") && !svg.contains("NaN"))
        let parser = XMLParser(data: Data(svg.utf8))
        #expect(parser.parse(), "the SVG is not well-formed XML")
    }
}
