import KilnCore
import KilnScheduling

/// "What if we add N GPUs?": the simulator run from what a live server holds now, its queue and
/// the arrivals of the last hour going on, once with the fleet as it is and once with GPUs added.
///
/// The projection is a model, and says what it leaves out: each job runs its model's recent mean
/// run time; the workers are slots of the largest job's GPUs; jobs running now are counted as done
/// (their GPUs free at once); per-account running caps, worker failures and the fleet controller
/// are left out.
public enum WhatIf {
    /// What the server knows now.
    public struct LiveState: Sendable, Hashable {
        public struct Tier: Sendable, Hashable {
            public var name: String
            public var maxWaitSeconds: Double

            public init(name: String, maxWaitSeconds: Double) {
                self.name = name
                self.maxWaitSeconds = maxWaitSeconds
            }
        }

        public struct QueuedJob: Sendable, Hashable {
            public var tier: String
            public var model: String
            public var gpus: Int
            /// Seconds it has waited so far.
            public var waitedSeconds: Double

            public init(tier: String, model: String, gpus: Int, waitedSeconds: Double) {
                self.tier = tier
                self.model = model
                self.gpus = gpus
                self.waitedSeconds = waitedSeconds
            }
        }

        /// Workers alike: same cluster, pool, accelerator and GPUs each.
        public struct WorkerGroup: Sendable, Hashable {
            public var cluster: String
            public var pool: String
            public var accelerator: String
            public var gpusPerWorker: Int
            public var workers: Int

            public init(cluster: String, pool: String, accelerator: String, gpusPerWorker: Int, workers: Int) {
                self.cluster = cluster
                self.pool = pool
                self.accelerator = accelerator
                self.gpusPerWorker = gpusPerWorker
                self.workers = workers
            }
        }

        /// The tiers in priority order.
        public var tiers: [Tier]
        public var queued: [QueuedJob]
        /// Submissions per tier and per model over `arrivalSeconds`.
        public var arrivalsByTier: [String: Int]
        public var arrivalsByModel: [String: Int]
        public var arrivalSeconds: Double
        /// Mean run time per model; models not in it run `defaultRunSeconds`.
        public var runSeconds: [String: Double]
        public var defaultRunSeconds: Double
        public var workers: [WorkerGroup]
        public var dispatchLimits: [String: Int]
        public var defaultDispatchLimit: Int
        public var leases: Scenario.Leases

        public init(
            tiers: [Tier], queued: [QueuedJob], arrivalsByTier: [String: Int], arrivalsByModel: [String: Int], arrivalSeconds: Double,
            runSeconds: [String: Double], defaultRunSeconds: Double = 60, workers: [WorkerGroup], dispatchLimits: [String: Int],
            defaultDispatchLimit: Int, leases: Scenario.Leases
        ) {
            self.tiers = tiers
            self.queued = queued
            self.arrivalsByTier = arrivalsByTier
            self.arrivalsByModel = arrivalsByModel
            self.arrivalSeconds = arrivalSeconds
            self.runSeconds = runSeconds
            self.defaultRunSeconds = defaultRunSeconds
            self.workers = workers
            self.dispatchLimits = dispatchLimits
            self.defaultDispatchLimit = defaultDispatchLimit
            self.leases = leases
        }

        /// GPUs of every worker.
        public var gpus: Int { workers.reduce(0) { $0 + $1.workers * $1.gpusPerWorker } }
        /// Submissions per hour to the tiers over the recent window.
        public var arrivalsPerHour: Double {
            let count = tiers.reduce(0) { $0 + (arrivalsByTier[$1.name] ?? 0) }
            return arrivalSeconds > 0 ? Double(count) * 3600 / arrivalSeconds : 0
        }
    }

    /// The most jobs a projection simulates (about a second of simulation per 300,000).
    public static let maxJobs = 1_000_000
    /// The most GPUs a projection adds.
    public static let maxAddedGPUs = 100_000

    /// The scenario of `hours` from now, with `addedGPUs` more GPUs in `pool` (the pool with the most
    /// GPUs when nil).
    /// - Throws: ``KilnError`` `.invalidInput` for hours outside (0, 24], `addedGPUs` outside
    ///   0...``maxAddedGPUs``, a pool that has no workers, or a run of more than ``maxJobs`` jobs.
    public static func scenario(_ state: LiveState, hours: Double, addedGPUs: Int, pool: String? = nil) throws -> Scenario {
        guard hours > 0, hours <= 24 else { throw KilnError(.invalidInput, "hours: \(hours) must be above 0 and at most 24") }
        guard (0...maxAddedGPUs).contains(addedGPUs) else {
            throw KilnError(.invalidInput, "add_gpus: \(addedGPUs) must be a whole number from 0 to \(maxAddedGPUs)")
        }
        let projected = Double(state.queued.count) + state.arrivalsPerHour * hours
        guard projected <= Double(maxJobs) else {
            throw KilnError(
                .invalidInput,
                "hours: \(hours) hours at \(Int(state.arrivalsPerHour)) arrivals an hour, with \(state.queued.count) queued, "
                    + "is about \(Int(projected)) jobs to simulate; at most \(maxJobs): ask for fewer hours")
        }
        // Models, each as large as its largest queued job; the fleet in slots of the largest.
        var modelGPUs: [String: Int] = [:]
        for name in state.arrivalsByModel.keys { modelGPUs[name] = 1 }
        for job in state.queued { modelGPUs[job.model] = max(modelGPUs[job.model] ?? 1, max(1, job.gpus)) }
        let slot = max(1, modelGPUs.values.max() ?? 1)
        let models = modelGPUs.keys.sorted().map { name in
            Scenario.ModelSpec(
                name: name, share: Double(state.arrivalsByModel[name] ?? 0), gpus: modelGPUs[name] ?? 1,
                runtime: .init(distribution: .fixed, meanSeconds: runSeconds(of: name, state)))
        }

        var groups = state.workers.filter { $0.workers > 0 && $0.gpusPerWorker > 0 }
        if addedGPUs > 0 {
            let target: Int
            if let pool {
                guard let index = groups.indices.filter({ groups[$0].pool == pool }).max(by: { gpus(groups[$0]) < gpus(groups[$1]) }) else {
                    throw KilnError(.invalidInput, "pool: no pool named '\(pool)' has workers now")
                }
                target = index
            } else if let index = groups.indices.max(by: { gpus(groups[$0]) < gpus(groups[$1]) }) {
                target = index
            } else {
                groups.append(.init(cluster: "default", pool: "added", accelerator: "any", gpusPerWorker: slot, workers: 0))
                target = groups.count - 1
            }
            let perWorker = groups[target].gpusPerWorker
            groups[target].workers += (addedGPUs + perWorker - 1) / perWorker
        }
        var clusters: [Scenario.ClusterSpec] = []
        for group in groups {
            let slots = group.workers * (group.gpusPerWorker / slot)
            guard slots > 0 else { continue }
            let index =
                clusters.firstIndex { $0.name == group.cluster }
                ?? {
                    clusters.append(
                        .init(name: group.cluster, dispatchLimit: state.dispatchLimits[group.cluster] ?? state.defaultDispatchLimit, pools: []))
                    return clusters.count - 1
                }()
            let taken = Set(clusters[index].pools.map(\.name))
            let name = taken.contains(group.pool) ? "\(group.pool)-\(taken.count + 1)" : group.pool
            clusters[index].pools.append(
                .init(name: name, accelerator: group.accelerator, gpusPerWorker: slot, capacity: [.init(atHours: 0, workers: slots)]))
        }
        if clusters.isEmpty {  // no GPU at all: the queue only grows
            clusters = [.init(name: "default", dispatchLimit: state.defaultDispatchLimit, pools: [.init(name: "none", accelerator: "any")])]
        }

        let perHour = state.arrivalsPerHour
        return Scenario(
            name: "what-if", seed: 1, durationHours: hours,
            tiers: state.tiers.map { tier in
                .init(name: tier.name, maxWaitSeconds: tier.maxWaitSeconds, share: Double(state.arrivalsByTier[tier.name] ?? 0))
            },
            arrivals: perHour > 0 ? [.init(fromHours: 0, toHours: hours, perHour: perHour)] : [],
            trace: state.queued.compactMap { job in
                guard state.tiers.contains(where: { $0.name == job.tier }) else { return nil }
                return .init(
                    atSeconds: 0, tier: job.tier, model: job.model, gpuSeconds: runSeconds(of: job.model, state),
                    waitedSeconds: max(0, job.waitedSeconds))
            },
            models: models.isEmpty ? [.init(name: "none", share: 0, runtime: .init(distribution: .fixed, meanSeconds: 1))] : models,
            clusters: clusters, leases: state.leases, sampleEverySeconds: hours * 60)
    }

    /// What one projection says, per tier.
    public struct Outcome: Sendable, Hashable, Codable {
        public struct Tier: Sendable, Hashable, Codable {
            public var name: String
            public var maxWaitSeconds: Double
            /// Jobs of the run: queued now and arriving.
            public var jobs: Int
            /// The share of the jobs dispatched within the promise; those still queued past it
            /// count as misses.
            public var attainment: Double
            /// Waits of the jobs that completed within the run.
            public var waitP95Seconds: Double
            public var waitP95Promise: Double
            /// Still queued when the run ends.
            public var queuedAtEnd: Int
        }

        public var gpus: Int
        public var gpuUtilisation: Double
        public var tiers: [Tier]
    }

    /// Reads the report of a run of ``scenario(_:hours:addedGPUs:pool:)``.
    public static func outcome(_ report: SimulationReport, gpus: Int) -> Outcome {
        Outcome(
            gpus: gpus, gpuUtilisation: report.gpuUtilisation,
            tiers: report.tiers.map { tier in
                .init(
                    name: tier.name, maxWaitSeconds: tier.maxWaitSeconds, jobs: tier.jobs, attainment: tier.attainment,
                    waitP95Seconds: tier.waitSeconds.p95, waitP95Promise: tier.waitMultiple.p95, queuedAtEnd: tier.unserved)
            })
    }

    /// Runs the projection with the fleet as it is and with `addedGPUs` more, at once.
    public static func compare(
        _ state: LiveState, hours: Double, addedGPUs: Int, pool: String? = nil, policy: any SchedulingPolicy
    ) async throws -> (now: Outcome, added: Outcome) {
        let current = try scenario(state, hours: hours, addedGPUs: 0)
        let grown = try scenario(state, hours: hours, addedGPUs: addedGPUs, pool: pool)
        async let now = Task { try Simulator(scenario: current, policy: policy).run() }.value
        async let added = Task { try Simulator(scenario: grown, policy: policy).run() }.value
        return (outcome(try await now, gpus: fleetGPUs(current)), outcome(try await added, gpus: fleetGPUs(grown)))
    }

    private static func gpus(_ group: LiveState.WorkerGroup) -> Int { group.workers * group.gpusPerWorker }

    private static func runSeconds(of model: String, _ state: LiveState) -> Double {
        max(0.001, state.runSeconds[model] ?? state.defaultRunSeconds)
    }

    private static func fleetGPUs(_ scenario: Scenario) -> Int {
        scenario.clusters.reduce(0) { total, cluster in
            total + cluster.pools.reduce(0) { $0 + ($1.capacity.first?.workers ?? 0) * $1.gpusPerWorker }
        }
    }
}
