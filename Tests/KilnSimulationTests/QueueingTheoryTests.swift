import Foundation
import KilnCore
import KilnScheduling
import KilnSimulation
import Testing

/// The simulator's queueing, checked against closed forms: M/M/c under FIFO (Erlang C) and under
/// non-preemptive priority between two classes with the same service rate.
///
/// Each run is c = 4 workers, exponential service of mean 60 s, Poisson arrivals at 70 % load, for
/// about 100,000 jobs. Over 12 to 16 independent runs of an independent model, the relative standard
/// deviation of the mean wait at this length is about 4.4 % under FIFO, and 2 % and 5 % for the
/// two priority classes; the tolerance, 15 %, is three standard deviations or more.
@Suite("Simulator against queueing theory")
struct QueueingTheoryTests {
    static let servers = 4
    static let meanService = 60.0
    static let load = 0.7
    static let tolerance = 0.15

    static var arrivalRate: Double { load * Double(servers) / meanService }

    /// Erlang C: the probability that an arrival waits in M/M/c, with offered load `a` = λ/μ.
    static func erlangC(servers c: Int, offered a: Double) -> Double {
        var term = 1.0
        var sum = 0.0
        for k in 0..<c {
            if k > 0 { term *= a / Double(k) }
            sum += term
        }
        let last = term * a / Double(c) * Double(c) / (Double(c) - a)
        return last / (sum + last)
    }

    /// Poisson arrivals split between `tiers` by share, served FIFO within a tier on `servers` workers.
    static func scenario(tiers: [Scenario.TierSpec], seed: UInt64) -> Scenario {
        let jobs = 100_000.0
        let hours = jobs / arrivalRate / 3600
        return Scenario(
            name: "mmc", seed: seed, durationHours: hours, tiers: tiers,
            arrivals: [.init(fromHours: 0, toHours: hours, perHour: arrivalRate * 3600)],
            models: [.init(name: "m", runtime: .init(distribution: .exponential, meanSeconds: meanService))],
            clusters: [
                .init(
                    name: "c", dispatchLimit: 1_000,
                    pools: [.init(name: "p", accelerator: "h100", capacity: [.init(atHours: 0, workers: servers)])])
            ],
            sampleEverySeconds: 86_400)
    }

    @Test("FIFO's mean wait matches Erlang C for M/M/4 at 70 % load")
    func fifoMatchesErlangC() throws {
        let scenario = Self.scenario(tiers: [.init(name: "all", maxWaitSeconds: 60, share: 1)], seed: 11)
        let report = try Simulator(scenario: scenario, policy: FIFOPolicy()).run()
        let offered = Self.arrivalRate * Self.meanService
        let expected = Self.erlangC(servers: Self.servers, offered: offered) / (Double(Self.servers) / Self.meanService - Self.arrivalRate)
        let measured = report.tiers[0].meanWaitSeconds
        #expect(report.tiers[0].completed > 95_000)
        #expect(abs(measured - expected) / expected < Self.tolerance, "mean wait \(measured) s, Erlang C \(expected) s")
        #expect(report.modelSwitches == 1 || report.modelSwitches <= Self.servers, "one model: a switch per worker at most")
    }

    @Test("strict priority's per-class mean waits match the non-preemptive M/M/c priority formula")
    func strictMatchesPriorityFormula() throws {
        let high = 0.3
        let scenario = Self.scenario(
            tiers: [.init(name: "high", maxWaitSeconds: 60, share: high), .init(name: "low", maxWaitSeconds: 60, share: 1 - high)],
            seed: 12)
        let report = try Simulator(scenario: scenario, policy: StrictPriorityPolicy()).run()
        // W_k = (C / cμ) / ((1 − σ_{k−1})(1 − σ_k)), σ_k the load of classes 1…k.
        let c = Double(Self.servers)
        let base = Self.erlangC(servers: Self.servers, offered: Self.arrivalRate * Self.meanService) / (c / Self.meanService)
        let sigmaHigh = high * Self.load
        let expected = [base / (1 - sigmaHigh), base / ((1 - sigmaHigh) * (1 - Self.load))]
        for (index, tier) in report.tiers.enumerated() {
            let measured = tier.meanWaitSeconds
            #expect(
                abs(measured - expected[index]) / expected[index] < Self.tolerance,
                "\(tier.name): mean wait \(measured) s, formula \(expected[index]) s")
        }
        // Conservation: the load-weighted mean is FIFO's (Erlang C), whatever the order.
        let mixed = high * report.tiers[0].meanWaitSeconds + (1 - high) * report.tiers[1].meanWaitSeconds
        #expect(abs(mixed - base / (1 - Self.load)) / (base / (1 - Self.load)) < Self.tolerance)
    }
}
