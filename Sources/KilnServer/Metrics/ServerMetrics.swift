import Foundation
import KilnCore
import KilnStore
import NIOConcurrencyHelpers
import Prometheus

/// The server's Prometheus metrics (`GET /metrics`): counters and histograms fed as transitions
/// commit and requests finish, and gauges read from the queue, the workers and the fleet when
/// scraped. Labels are bounded sets (tiers, states, models, routes, pools), never ids.
///
/// Each server has a registry of its own (no process-wide metrics system), so several servers in
/// one process (tests) do not mix their figures.
public final class ServerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let tiers: TierTable

    /// Waits in seconds: from a second to the free tier's hour, and past it.
    static let waitBuckets: [Double] = [1, 5, 15, 30, 60, 120, 300, 900, 1_800, 3_600, 7_200, 14_400]
    /// Waits as multiples of the tier's promise: 1 is the promise kept to the second.
    static let promiseBuckets: [Double] = [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 5, 10, 20]
    /// Run times of a model: a second to an hour.
    static let runBuckets: [Double] = [1, 5, 15, 30, 60, 120, 300, 600, 1_800, 3_600]
    /// Request durations: 100 µs to 10 s (long polls and streams run longer, and land past it).
    static let requestBuckets: [Double] = [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 10]

    /// Store commits: from 100 µs to a second (a slow disk, or a stalled database).
    static let commitBuckets: [Double] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
    /// Changes per commit: one alone, to large groups under load.
    static let groupBuckets: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256]

    private let commitDuration: ValueHistogram
    private let commitChanges: ValueHistogram
    /// 1 while this server leads; the queue and fleet gauges are served by the leader alone.
    private let leader: Gauge
    private let leaderGauges = NIOLockedValueBox<[String: Gauge]>([:])

    public init(tiers: TierTable) {
        self.tiers = tiers
        commitDuration = registry.makeValueHistogram(descriptor: Self.storeCommit, buckets: Self.commitBuckets)
        commitChanges = registry.makeValueHistogram(descriptor: Self.storeCommitChanges, buckets: Self.groupBuckets)
        leader = registry.makeGauge(descriptor: Self.leads)
    }

    static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "kiln", metricName: metric, unitName: unit, helpText: help)
    }

    // MARK: Families

    static var requeues: MetricNameDescriptor { name("requeues", "total", "Jobs sent back to the queue: a lease expired or an attempt failed and may be retried.") }
    static var dispatches: MetricNameDescriptor { name("dispatches", "total", "First dispatches of jobs, within their tier's promised wait or past it.") }
    static var queueWait: MetricNameDescriptor { name("queue_wait", "seconds", "How long jobs waited in the queue before their first dispatch.") }
    static var queueWaitPromise: MetricNameDescriptor { name("queue_wait_promise", "ratio", "The wait before the first dispatch as a multiple of the tier's promise.") }
    static var leaseExpiries: MetricNameDescriptor { name("lease_expiries", "total", "Leases that expired without a heartbeat: a worker died or lost the server.") }
    static var generationsEnded: MetricNameDescriptor { name("generations_ended", "total", "Generations that ended, by tier and final state.") }
    static var runs: MetricNameDescriptor { name("runs", "total", "Generations that ran to an end, by model, version and outcome.") }
    static var run: MetricNameDescriptor { name("run", "seconds", "From a generation's first start to its end, by model.") }
    static var admissionRefusals: MetricNameDescriptor { name("admission_refusals", "total", "Submissions refused with 429 by a tier's queue caps.") }
    static var httpRequestDuration: MetricNameDescriptor { name("http_request_duration", "seconds", "API calls by operation and status class.") }
    static var queuedJobs: MetricNameDescriptor { name("queued_jobs", "", "Jobs queued now, by tier.") }
    static var queueOldestPromise: MetricNameDescriptor { name("queue_oldest_promise", "ratio", "The largest share of its tier's promise any queued job has used (1: at the promise).") }
    static var workers: MetricNameDescriptor { name("workers", "", "Registered workers by cluster, pool and state.") }
    static var dispatchLimit: MetricNameDescriptor { name("dispatch_limit", "", "The most jobs a cluster may hold leased but not started.") }
    static var leasedNotStartedJobs: MetricNameDescriptor { name("leased_not_started_jobs", "", "Jobs leased by a cluster's workers and not yet started.") }
    static var poolDesiredWorkers: MetricNameDescriptor { name("pool_desired_workers", "", "The size the fleet controller wants for a pool.") }
    static var poolWorkers: MetricNameDescriptor { name("pool_workers", "", "Workers a pool has now, provisioning included.") }
    static var leads: MetricNameDescriptor { name("leader", "", "1 while this server leads (runs the scheduler; serves the queue and fleet gauges), 0 otherwise.") }
    static var storeCommit: MetricNameDescriptor { name("store_commit", "seconds", "Store transactions from their start to durable, each carrying a group of changes.") }
    static var storeCommitChanges: MetricNameDescriptor { name("store_commit_changes", "", "Changes carried by each store commit (group commit).") }

    /// Every metric family this server exposes (the names dashboards and alerts may use).
    public static var families: [MetricNameDescriptor] {
        [
            requeues, dispatches, leaseExpiries, queueWait, queueWaitPromise, generationsEnded, runs, run, admissionRefusals,
            httpRequestDuration, queuedJobs, queueOldestPromise, workers, dispatchLimit, leasedNotStartedJobs, poolDesiredWorkers,
            poolWorkers, storeCommit, storeCommitChanges, leads,
        ]
    }

    // MARK: Events

    /// A committed transition of `generation`.
    func observe(_ effect: Transition.Effect, _ generation: Generation) {
        switch effect {
        case .leased:
            guard generation.attempts == 1, let lease = generation.lease else { return }  // the first dispatch ends the wait
            dispatched(tier: generation.tier, waited: lease.leasedAt.timeIntervalSince(generation.queuedAt))
        case .requeued:
            registry.makeCounter(
                descriptor: Self.requeues,
                labels: [("tier", generation.tier)]
            ).increment()
        case .ended:
            ended(generation)
        default:
            return
        }
    }

    func dispatched(tier: String, waited: Double) {
        let promise = tiers[tier]?.maxWait ?? 1
        let kept = waited <= promise
        registry.makeCounter(
            descriptor: Self.dispatches,
            labels: [("tier", tier), ("within_promise", kept ? "true" : "false")]
        ).increment()
        registry.makeValueHistogram(
            descriptor: Self.queueWait,
            labels: [("tier", tier)], buckets: Self.waitBuckets
        ).record(waited)
        registry.makeValueHistogram(
            descriptor: Self.queueWaitPromise,
            labels: [("tier", tier)], buckets: Self.promiseBuckets
        ).record(waited / promise)
    }

    func ended(_ generation: Generation) {
        registry.makeCounter(
            descriptor: Self.generationsEnded,
            labels: [("tier", generation.tier), ("state", generation.state.rawValue)]
        ).increment()
        guard let started = generation.startedAt, let completed = generation.completedAt else { return }  // it ran
        let version = generation.version ?? "none"
        registry.makeCounter(
            descriptor: Self.runs,
            labels: [("model", generation.model), ("version", version), ("outcome", generation.state.rawValue)]
        ).increment()
        registry.makeValueHistogram(
            descriptor: Self.run,
            labels: [("model", generation.model)], buckets: Self.runBuckets
        ).record(completed.timeIntervalSince(started))
    }

    /// A commit of the store.
    func committed(_ timing: CommitTiming) {
        commitDuration.record(timing.seconds)
        commitChanges.record(Double(timing.changes))
    }

    /// A lease that expired (the reaper took the job back).
    func leaseExpired(tier: String) {
        registry.makeCounter(descriptor: Self.leaseExpiries, labels: [("tier", tier)]).increment()
    }

    /// A submission refused by an admission cap (`429`).
    func refused(tier: String) {
        registry.makeCounter(
            descriptor: Self.admissionRefusals,
            labels: [("tier", tier)]
        ).increment()
    }

    /// An API call that ended with `status` after `seconds`; `operation` is the OpenAPI operation.
    func request(operation: String, status: Int, seconds: Double) {
        registry.makeValueHistogram(
            descriptor: Self.httpRequestDuration,
            labels: [("operation", operation), ("status", "\(status / 100)xx")], buckets: Self.requestBuckets
        ).record(seconds)
    }

    // MARK: Scrape

    /// Every metric in the Prometheus text format.
    public func exposition() -> [UInt8] {
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return bytes
    }

    /// What is true now, read when scraped.
    struct Now: Sendable {
        var queue: QueueSnapshot
        var workers: [WorkerRecord]
        var leasedNotStarted: [String: Int]
        var dispatchLimits: [String: Int]
        var pools: [(name: String, cluster: String, desired: Int, actual: Int)]
    }

    /// Sets the queue-wide and fleet gauges (this server leads).
    func refresh(_ now: Now) {
        leader.set(1.0)
        var queued: [String: Int] = [:]
        var urgency: [String: Double] = [:]
        for row in now.queue.rows {
            queued[row.tier, default: 0] += row.queued
            urgency[row.tier] = max(urgency[row.tier] ?? 0, row.maxUrgency ?? 0)
        }
        for tier in tiers.names {
            gauge(descriptor: Self.queuedJobs, labels: [("tier", tier)])
                .set(Double(queued[tier] ?? 0))
            gauge(
                descriptor: Self.queueOldestPromise,
                labels: [("tier", tier)]
            ).set(urgency[tier] ?? 0)
        }
        var counts: [[String]: Int] = [:]
        for worker in now.workers { counts[[worker.cluster, worker.pool ?? "", worker.state.rawValue], default: 0] += 1 }
        let states = Set(now.workers.map { [$0.cluster, $0.pool ?? ""] })
        for key in states {
            for state in ["active", "draining"] {
                gauge(
                    descriptor: Self.workers,
                    labels: [("cluster", key[0]), ("pool", key[1]), ("state", state)]
                ).set(Double(counts[key + [state]] ?? 0))
            }
        }
        for (cluster, limit) in now.dispatchLimits {
            gauge(
                descriptor: Self.dispatchLimit,
                labels: [("cluster", cluster)]
            ).set(Double(limit))
            gauge(
                descriptor: Self.leasedNotStartedJobs,
                labels: [("cluster", cluster)]
            ).set(Double(now.leasedNotStarted[cluster] ?? 0))
        }
        for pool in now.pools {
            gauge(
                descriptor: Self.poolDesiredWorkers,
                labels: [("cluster", pool.cluster), ("pool", pool.name)]
            ).set(Double(pool.desired))
            gauge(
                descriptor: Self.poolWorkers,
                labels: [("cluster", pool.cluster), ("pool", pool.name)]
            ).set(Double(pool.actual))
        }
    }
    /// Withdraws the queue-wide and fleet gauges: this server does not lead, and the leader's
    /// `/metrics` has them (a follower's would be empty, or stale from when it led).
    func withdrawLeaderGauges() {
        leader.set(0.0)
        let gauges = leaderGauges.withLockedValue { gauges in
            defer { gauges.removeAll() }
            return gauges
        }
        for gauge in gauges.values { registry.unregisterGauge(gauge) }
    }

    /// A gauge of the leader's, made or found in the registry, and kept to be withdrawn.
    private func gauge(descriptor: MetricNameDescriptor, labels: [(String, String)]) -> Gauge {
        let gauge = registry.makeGauge(descriptor: descriptor, labels: labels)
        let key = descriptor.name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        leaderGauges.withLockedValue { $0[key] = gauge }
        return gauge
    }

}
