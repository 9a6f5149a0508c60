import Foundation

/// What a run measured: per tier, the waits against the promise; for the fleet, utilisation and
/// model switches; over time, queue depth and waits.
public struct SimulationReport: Codable, Sendable, Hashable {
    public struct Percentiles: Codable, Sendable, Hashable {
        public var p50: Double
        public var p95: Double
        public var p99: Double
        public var max: Double
    }

    public struct TierReport: Codable, Sendable, Hashable {
        public var name: String
        public var maxWaitSeconds: Double
        /// Jobs that arrived.
        public var jobs: Int
        /// Dispatched and completed.
        public var completed: Int
        /// Failed after their last attempt.
        public var failed: Int
        /// Still queued when the run ended.
        public var unserved: Int
        /// Share of jobs dispatched within the promise; jobs still queued past it count as misses.
        public var attainment: Double
        /// Waits of completed jobs, in seconds (max includes jobs still queued at the end).
        public var waitSeconds: Percentiles
        /// The mean wait of completed jobs, in seconds: what queueing theory predicts.
        public var meanWaitSeconds: Double
        /// The same waits as multiples of the promise.
        public var waitMultiple: Percentiles

        enum CodingKeys: String, CodingKey {
            case name, jobs, completed, failed, unserved, attainment
            case maxWaitSeconds = "max_wait_seconds"
            case waitSeconds = "wait_seconds"
            case meanWaitSeconds = "mean_wait_seconds"
            case waitMultiple = "wait_multiple"
        }
    }

    public struct Sample: Codable, Sendable, Hashable {
        public var hours: Double
        /// Queued jobs per tier, in the scenario's tier order.
        public var queued: [Int]
        /// Waits of the jobs dispatched since the previous sample, per tier (seconds; nil: none).
        public var waitP50: [Double?]
        public var waitP95: [Double?]
        public var busyGPUs: Int
        public var availableGPUs: Int

        enum CodingKeys: String, CodingKey {
            case hours, queued
            case waitP50 = "wait_p50"
            case waitP95 = "wait_p95"
            case busyGPUs = "busy_gpus"
            case availableGPUs = "available_gpus"
        }
    }

    public var scenario: String
    public var policy: String
    /// Who sized the pools and placed models: `manual` (the scenario's script) or `controller`.
    public var fleet: String
    public var seed: UInt64
    public var durationHours: Double
    public var startClock: String?
    public var jobs: Int
    public var tiers: [TierReport]
    /// Busy GPU-seconds over available GPU-seconds.
    public var gpuUtilisation: Double
    public var gpuHoursBusy: Double
    public var gpuHoursAvailable: Double
    /// Of the available GPU-hours, those of burst pools: capacity borrowed (from a training
    /// cluster).
    public var gpuHoursBorrowed: Double
    /// GPU-hours of pools that lend, which they did not hold: capacity lent (to a training
    /// cluster) while Kiln did not need it. Not part of the available GPU-hours.
    public var gpuHoursLent: Double
    /// Available GPU-hours no job or model load used.
    public var gpuHoursIdle: Double
    public var modelSwitches: Int
    /// GPU-hours spent loading a model over another one (the switches), and loading one onto a
    /// worker that had none (new or recovered workers).
    public var gpuHoursSwitching: Double
    public var gpuHoursColdLoading: Double
    /// Workers the controller moved from one model to another, asked for, and drained jobs it
    /// returned to the queue after their grace.
    public var placementMoves: Int
    public var workersProvisioned: Int
    public var releasedJobs: Int
    /// Attempts charged to the jobs that completed: one each, plus one per retry after a lease
    /// expired (a job released by a drain is not charged for it).
    public var attemptsCharged: Int
    public var workerFailures: Int
    public var retries: Int
    public var events: Int
    public var series: [Sample]

    enum CodingKeys: String, CodingKey {
        case scenario, policy, fleet, seed, jobs, tiers, events, series, retries
        case durationHours = "duration_hours"
        case startClock = "start_clock"
        case gpuUtilisation = "gpu_utilisation"
        case gpuHoursBusy = "gpu_hours_busy"
        case gpuHoursAvailable = "gpu_hours_available"
        case gpuHoursBorrowed = "gpu_hours_borrowed"
        case gpuHoursLent = "gpu_hours_lent"
        case gpuHoursIdle = "gpu_hours_idle"
        case modelSwitches = "model_switches"
        case gpuHoursSwitching = "gpu_hours_switching"
        case gpuHoursColdLoading = "gpu_hours_cold_loading"
        case placementMoves = "placement_moves"
        case workersProvisioned = "workers_provisioned"
        case releasedJobs = "released_jobs"
        case attemptsCharged = "attempts_charged"
        case workerFailures = "worker_failures"
    }

    /// Canonical JSON: sorted keys, so the same seed gives the same bytes.
    public func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        return try encoder.encode(self)
    }
}

/// The counters a run keeps while it goes.
struct SimulationMetrics {
    let tiers: [Scenario.TierSpec]
    var waits: [[Double]]
    var arrivedByTier: [Int]
    var failedByTier: [Int]
    var bucketWaits: [[Double]]
    var series: [SimulationReport.Sample] = []
    var modelSwitches = 0
    var switchingGPUSeconds = 0.0
    var coldLoadGPUSeconds = 0.0
    var placementMoves = 0
    var workersProvisioned = 0
    var releasedJobs = 0
    var attemptsCharged = 0
    var workerFailures = 0
    var retries = 0
    private var busyGPUs = 0
    private var aliveGPUs = 0
    private var borrowedGPUs = 0
    private var borrowedArea = 0.0
    private var lentGPUs = 0
    private var lentArea = 0.0
    private var lastTime = 0.0
    private var busyArea = 0.0
    private var aliveArea = 0.0

    init(tiers: [Scenario.TierSpec], jobs: Int) {
        self.tiers = tiers
        waits = Array(repeating: [], count: tiers.count)
        arrivedByTier = Array(repeating: 0, count: tiers.count)
        failedByTier = Array(repeating: 0, count: tiers.count)
        bucketWaits = Array(repeating: [], count: tiers.count)
    }

    mutating func advance(to time: Double) {
        guard time > lastTime else { return }
        busyArea += Double(busyGPUs) * (time - lastTime)
        aliveArea += Double(aliveGPUs) * (time - lastTime)
        borrowedArea += Double(borrowedGPUs) * (time - lastTime)
        lentArea += Double(lentGPUs) * (time - lastTime)
        lastTime = time
    }

    mutating func busy(_ delta: Int) { busyGPUs += delta }
    mutating func alive(_ delta: Int, borrowed: Bool) {
        aliveGPUs += delta
        if borrowed { borrowedGPUs += delta }
    }
    /// GPUs lent out from now on.
    mutating func lent(_ gpus: Int) { lentGPUs = gpus }
    mutating func arrived(tier: Int) { arrivedByTier[tier] += 1 }
    mutating func failed(tier: Int) { failedByTier[tier] += 1 }

    /// A job left the queue after `wait` seconds (any attempt): it counts in the current interval.
    mutating func dispatched(tier: Int, wait: Double) {
        bucketWaits[tier].append(wait)
    }

    /// A job completed; `wait` is that of its last (successful) dispatch.
    mutating func completed(tier: Int, wait: Double) {
        waits[tier].append(wait)
    }

    mutating func sample(at time: Double, queued: [Int]) {
        var p50: [Double?] = []
        var p95: [Double?] = []
        for tier in bucketWaits.indices {
            RadixSort.sort(&bucketWaits[tier])
            p50.append(bucketWaits[tier].isEmpty ? nil : Self.percentile(bucketWaits[tier], 0.5))
            p95.append(bucketWaits[tier].isEmpty ? nil : Self.percentile(bucketWaits[tier], 0.95))
            bucketWaits[tier].removeAll(keepingCapacity: true)
        }
        series.append(
            SimulationReport.Sample(
                hours: time / 3600, queued: queued, waitP50: p50, waitP95: p95, busyGPUs: busyGPUs, availableGPUs: aliveGPUs))
    }

    /// Nearest-rank percentile of a sorted array.
    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let rank = Int((p * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(max(rank, 0), sorted.count - 1)]
    }

    func report(scenario: Scenario, policy: String, fleet: String, events: Int, unserved: [(tier: Int, waited: Double)])
        -> SimulationReport
    {
        var tierReports: [SimulationReport.TierReport] = []
        for (index, tier) in tiers.enumerated() {
            var sorted = waits[index]
            RadixSort.sort(&sorted)
            let stillWaiting = unserved.filter { $0.tier == index }
            let longestUnserved = stillWaiting.map(\.waited).max() ?? 0
            let within = sorted.filter { $0 <= tier.maxWaitSeconds }.count
            let missedWaiting = stillWaiting.filter { $0.waited > tier.maxWaitSeconds }.count
            let judged = sorted.count + missedWaiting
            let seconds = SimulationReport.Percentiles(
                p50: Self.percentile(sorted, 0.5), p95: Self.percentile(sorted, 0.95), p99: Self.percentile(sorted, 0.99),
                max: max(sorted.last ?? 0, longestUnserved))
            tierReports.append(
                SimulationReport.TierReport(
                    name: tier.name, maxWaitSeconds: tier.maxWaitSeconds, jobs: arrivedByTier[index], completed: sorted.count,
                    failed: failedByTier[index], unserved: stillWaiting.count,
                    attainment: judged == 0 ? 1 : Double(within) / Double(judged), waitSeconds: seconds,
                    meanWaitSeconds: sorted.isEmpty ? 0 : sorted.reduce(0, +) / Double(sorted.count),
                    waitMultiple: SimulationReport.Percentiles(
                        p50: seconds.p50 / tier.maxWaitSeconds, p95: seconds.p95 / tier.maxWaitSeconds,
                        p99: seconds.p99 / tier.maxWaitSeconds, max: seconds.max / tier.maxWaitSeconds)))
        }
        return SimulationReport(
            scenario: scenario.name, policy: policy, fleet: fleet, seed: scenario.seed, durationHours: scenario.durationHours,
            startClock: scenario.startClock, jobs: arrivedByTier.reduce(0, +), tiers: tierReports,
            gpuUtilisation: aliveArea > 0 ? busyArea / aliveArea : 0, gpuHoursBusy: busyArea / 3600,
            gpuHoursAvailable: aliveArea / 3600, gpuHoursBorrowed: borrowedArea / 3600, gpuHoursLent: lentArea / 3600,
            gpuHoursIdle: max(0, aliveArea - busyArea) / 3600, modelSwitches: modelSwitches,
            gpuHoursSwitching: switchingGPUSeconds / 3600, gpuHoursColdLoading: coldLoadGPUSeconds / 3600,
            placementMoves: placementMoves, workersProvisioned: workersProvisioned, releasedJobs: releasedJobs,
            attemptsCharged: attemptsCharged,
            workerFailures: workerFailures, retries: retries, events: events, series: series)
    }
}
