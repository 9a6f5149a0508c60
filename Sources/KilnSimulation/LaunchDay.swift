/// Built-in scenarios.
public enum BuiltInScenarios {
    public static let all: [String: Scenario] = ["launch-day": launchDay]

    /// A launch day after the published account of one: 500 H100s at 09:00, demand near ten times
    /// the fleet, a queue of about 100,000 by 14:00, 5,000 GPUs six hours in (added by hand, here a
    /// ramp), about 4,000 more borrowed from the training cluster in the evening and given back at
    /// night, and about 500,000 videos in the first twelve hours. Five tiers with the default
    /// promises; a video takes about four H100-minutes.
    ///
    /// Under the `controller` fleet the same pools are sized by the fleet controller instead: the
    /// primary pool between the day's 500 and 5,000 GPUs on a cluster it shares with training, which
    /// uses what Kiln does not hold above the 500 until Kiln takes it back, 10 minutes after asking
    /// (training jobs are preempted and requeued); the training cluster lends up to 4,000 more, 30
    /// minutes after they are asked for (its jobs checkpoint and requeue first).
    public static let launchDay = Scenario(
        name: "launch-day", seed: 7, durationHours: 14, startClock: "09:00",
        tiers: [
            .init(name: "enterprise", maxWaitSeconds: 60, share: 0.05, accounts: 10, maxRunningPerAccount: 1_000),
            .init(name: "api", maxWaitSeconds: 120, share: 0.15, accounts: 200),
            .init(name: "unlimited", maxWaitSeconds: 300, share: 0.20, accounts: 2_000),
            .init(name: "light", maxWaitSeconds: 900, share: 0.20, accounts: 5_000),
            .init(name: "free", maxWaitSeconds: 3_600, share: 0.40, accounts: 50_000, maxRunningPerAccount: 2),
        ],
        arrivals: [
            .init(fromHours: 0, toHours: 1, perHour: 20_000),
            .init(fromHours: 1, toHours: 5, perHour: 55_000),
            .init(fromHours: 5, toHours: 9, perHour: 45_000),
            .init(fromHours: 9, toHours: 12, perHour: 30_000),
            .init(fromHours: 12, toHours: 14, perHour: 15_000),
        ],
        bursts: [.init(atHours: 2, jobs: 10_000, overSeconds: 900)],
        models: [
            .init(
                name: "text-to-video", share: 0.7, gpus: 1, runtime: .init(distribution: .lognormal, meanSeconds: 240, stddevSeconds: 120),
                acceleratorSpeed: ["h100": 1], switchSeconds: 60),
            .init(
                name: "modify-video", share: 0.3, gpus: 1, runtime: .init(distribution: .lognormal, meanSeconds: 300, stddevSeconds: 150),
                acceleratorSpeed: ["h100": 1], switchSeconds: 60),
        ],
        clusters: [
            .init(
                name: "prod", dispatchLimit: 1_024, startDelaySeconds: 5,
                pools: [
                    .init(
                        name: "h100", kind: .primary, accelerator: "h100",
                        capacity: [.init(atHours: 0, workers: 500), .init(atHours: 0.5, workers: 5_000, overHours: 5.5)],
                        autoscale: .init(
                            minWorkers: 500, maxWorkers: 5_000, cooldownSeconds: 600, provisionSeconds: 600, drainGraceSeconds: 600,
                            lend: true)),
                    .init(
                        name: "training", kind: .burst, accelerator: "h100",
                        capacity: [.init(atHours: 7, workers: 4_000, overHours: 1), .init(atHours: 12, workers: 0)],
                        autoscale: .init(
                            minWorkers: 0, maxWorkers: 4_000, cooldownSeconds: 600, provisionSeconds: 1_800, drainGraceSeconds: 300)),
                ])
        ],
        failures: .init(meanHoursBetweenFailures: 500, recoverySeconds: 900),
        leases: .init(ttlSeconds: 30, maxAttempts: 3),
        sampleEverySeconds: 600)
}
