import Foundation
import KilnCore
import KilnScheduling

/// A deterministic discrete-event replay of a ``Scenario`` on the real ``Scheduler``: the same
/// policy, eligibility, account caps and dispatch limits that `kiln server` runs, and the lease rule
/// of ``RetryRule``. Nothing here decides which job runs; it only models time, workers and traffic.
///
/// One run:
/// 1. Every job of the day is drawn up front from the seed (arrival time, tier, account, model, GPU
///    seconds), so every policy replays the very same traffic.
/// 2. Events are taken in (time, sequence) order: arrivals, lease-to-start delays, completions,
///    worker failures and lease expiries, capacity changes, samples.
/// 3. After each event that may free a worker or make a job eligible, idle workers ask the
///    scheduler for work, primary pools before burst pools.
public struct Simulator: Sendable {
    public let scenario: Scenario
    public let policy: any SchedulingPolicy

    /// - Throws: ``KilnError`` naming the first invalid field of the scenario.
    public init(scenario: Scenario, policy: any SchedulingPolicy) throws {
        try ScenarioValidation.check(scenario)
        self.scenario = scenario
        self.policy = policy
    }

    public func run() throws -> SimulationReport {
        var run = try SimulationRun(scenario: scenario, policy: policy)
        return try run.execute()
    }
}

struct SimJob {
    var arrival: Double
    var tier: Int
    var account: Int
    var model: Int
    /// GPU seconds at speed 1.
    var work: Double
    var attempts = 0
    var dispatchedAt = 0.0
    var ended = false
}

struct SimWorker {
    enum State { case idle, busy, down, retired }
    var cluster: Int
    var pool: Int
    var gpus: Int
    var offer: WorkerOffer
    var speed: [Double]  // per model; 0 = cannot run it
    var state: State = .idle
    var retiring = false
    var loadedModel: Int?
}

enum SimEvent {
    case arrival(Int)
    case started(Int)
    case finished(job: Int, worker: Int)
    case failed(job: Int, worker: Int)
    case leaseExpired(Int)
    case recovered(Int)
    case capacity(pool: Int, workers: Int)
    case sample
}

struct SimulationRun {
    let scenario: Scenario
    let end: Double
    var scheduler: Scheduler
    var events = EventQueue<SimEvent>()
    var jobs: [SimJob]
    let accounts: [AccountID]
    let tierNames: [String]
    let requirements: [JobRequirements]
    var workers: [SimWorker] = []
    /// Idle workers per pool, in the order pools are tried (primary first).
    var idle: [[Int]]
    let poolOrder: [Int]
    let pools: [(cluster: Int, spec: Scenario.PoolSpec)]
    /// Workers of each pool that count toward its capacity (not retiring, not retired).
    var poolSize: [Int]
    var metrics: SimulationMetrics

    init(scenario: Scenario, policy: any SchedulingPolicy) throws {
        self.scenario = scenario
        self.end = scenario.durationHours * 3600
        let tierTable = try TierTable(
            scenario.tiers.map { Tier(name: $0.name, maxWait: $0.maxWaitSeconds, maxRunningPerAccount: $0.maxRunningPerAccount) })
        scheduler = Scheduler(
            tiers: tierTable, policy: policy,
            dispatchLimits: Dictionary(uniqueKeysWithValues: scenario.clusters.map { ($0.name, $0.dispatchLimit) }),
            defaultDispatchLimit: 64)
        tierNames = scenario.tiers.map(\.name)
        requirements = scenario.models.map {
            JobRequirements(model: $0.name, accelerators: Set($0.acceleratorSpeed.keys), gpus: $0.gpus)
        }
        var accountIDs: [AccountID] = []
        var firstAccount: [Int] = []
        for (tierIndex, tier) in scenario.tiers.enumerated() {
            firstAccount.append(accountIDs.count)
            for account in 0..<tier.accounts {
                accountIDs.append(AccountID(unchecked: "acct_sim\(tierIndex)x\(account)"))
            }
        }
        accounts = accountIDs
        jobs = TrafficGenerator.jobs(for: scenario, firstAccount: firstAccount)
        var allPools: [(cluster: Int, spec: Scenario.PoolSpec)] = []
        for (clusterIndex, cluster) in scenario.clusters.enumerated() {
            for pool in cluster.pools { allPools.append((clusterIndex, pool)) }
        }
        pools = allPools
        idle = Array(repeating: [], count: allPools.count)
        poolSize = Array(repeating: 0, count: allPools.count)
        // Primary pools first, burst pools (borrowed capacity) last.
        poolOrder = allPools.indices.sorted { a, b in
            let ka = allPools[a].spec.kind == .primary ? 0 : 1
            let kb = allPools[b].spec.kind == .primary ? 0 : 1
            return ka != kb ? ka < kb : a < b
        }
        metrics = SimulationMetrics(tiers: scenario.tiers, jobs: jobs.count)
    }

    mutating func execute() throws -> SimulationReport {
        for (index, pool) in pools.enumerated() {
            for (time, workers) in CapacityPlan.steps(pool.spec.capacity) {
                events.schedule(.capacity(pool: index, workers: workers), at: time * 3600)
            }
        }
        if let first = jobs.indices.first { events.schedule(.arrival(first), at: jobs[first].arrival) }
        events.schedule(.sample, at: 0)

        var processed = 0
        while let (time, event) = events.pop(), time <= end {
            metrics.advance(to: time)
            processed += 1
            switch event {
            case .arrival(let index):
                try scheduler.enqueue(queued(index))
                metrics.arrived(tier: jobs[index].tier)
                if index + 1 < jobs.count { events.schedule(.arrival(index + 1), at: jobs[index + 1].arrival) }
                dispatch(now: time)
            case .started(let index):
                scheduler.started(Int64(index))
                dispatch(now: time)
            case .finished(let index, let worker):
                scheduler.remove(Int64(index))
                jobs[index].ended = true
                metrics.completed(tier: jobs[index].tier, wait: jobs[index].dispatchedAt - jobs[index].arrival)
                release(worker, now: time)
                dispatch(now: time)
            case .failed(let index, let worker):
                metrics.busy(-workers[worker].gpus)
                metrics.alive(-workers[worker].gpus)
                workers[worker].state = .down
                workers[worker].loadedModel = nil
                metrics.workerFailures += 1
                events.schedule(.recovered(worker), at: time + (scenario.failures?.recoverySeconds ?? 0))
                events.schedule(.leaseExpired(index), at: time + scenario.leases.ttlSeconds)
            case .leaseExpired(let index):
                if RetryRule.requeues(attempts: jobs[index].attempts, maxAttempts: scenario.leases.maxAttempts, retryable: true) {
                    scheduler.requeue(Int64(index))
                    metrics.retries += 1
                } else {
                    scheduler.remove(Int64(index))
                    jobs[index].ended = true
                    metrics.failed(tier: jobs[index].tier)
                }
                dispatch(now: time)
            case .recovered(let worker):
                if workers[worker].retiring {
                    workers[worker].state = .retired
                } else {
                    workers[worker].state = .idle
                    metrics.alive(workers[worker].gpus)
                    idle[workers[worker].pool].append(worker)
                    dispatch(now: time)
                }
            case .capacity(let pool, let target):
                resize(pool: pool, to: target)
                dispatch(now: time)
            case .sample:
                metrics.sample(at: time, queued: queuedByTier(now: time))
                if time + scenario.sampleEverySeconds <= end {
                    events.schedule(.sample, at: time + scenario.sampleEverySeconds)
                }
            }
        }
        metrics.advance(to: end)
        return metrics.report(
            scenario: scenario, policy: scheduler.policy.name, events: processed, unserved: unservedJobs())
    }

    /// Jobs that arrived but had not been dispatched (queued) at the end, with how long they waited.
    private func unservedJobs() -> [(tier: Int, waited: Double)] {
        var result: [(tier: Int, waited: Double)] = []
        for index in jobs.indices where jobs[index].arrival <= end && scheduler.isQueued(Int64(index)) {
            result.append((jobs[index].tier, end - jobs[index].arrival))
        }
        return result
    }

    private func queued(_ index: Int) -> QueuedJob {
        let job = jobs[index]
        return QueuedJob(
            sequence: Int64(index), account: accounts[job.account], tier: tierNames[job.tier], requirements: requirements[job.model],
            queuedAt: job.arrival)
    }

    /// Idle workers ask for work, primary pools first, until none gets any.
    private mutating func dispatch(now: Double) {
        for pool in poolOrder {
            while let worker = idle[pool].last {
                guard let sequence = scheduler.nextSequence(for: workers[worker].offer, now: now) else { break }
                idle[pool].removeLast()
                lease(Int(sequence), on: worker, now: now)
            }
        }
    }

    private mutating func lease(_ index: Int, on worker: Int, now: Double) {
        jobs[index].attempts += 1
        jobs[index].dispatchedAt = now
        metrics.dispatched(tier: jobs[index].tier, wait: now - jobs[index].arrival)
        let model = jobs[index].model
        let cluster = scenario.clusters[workers[worker].cluster]
        var runtime = jobs[index].work / workers[worker].speed[model]
        if workers[worker].loadedModel != model {
            runtime += scenario.models[model].switchSeconds
            if workers[worker].loadedModel != nil { metrics.modelSwitches += 1 }
            workers[worker].loadedModel = model
        }
        workers[worker].state = .busy
        metrics.busy(workers[worker].gpus)
        let start = now + cluster.startDelaySeconds
        if cluster.startDelaySeconds > 0 {
            events.schedule(.started(index), at: start)
        } else {
            scheduler.started(Int64(index))
        }
        if let failures = scenario.failures, failures.meanHoursBetweenFailures > 0 {
            // Drawn from the job and attempt alone, so every policy sees the same failures.
            var random = SplitMix64(seed: scenario.seed &+ UInt64(index) &* 0x9E37_79B9 &+ UInt64(jobs[index].attempts))
            let probability = 1 - exp(-runtime / (failures.meanHoursBetweenFailures * 3600))
            if random.unit() < probability {
                events.schedule(.failed(job: index, worker: worker), at: start + runtime * random.unit())
                return
            }
        }
        events.schedule(.finished(job: index, worker: worker), at: start + runtime)
    }

    private mutating func release(_ worker: Int, now: Double) {
        metrics.busy(-workers[worker].gpus)
        if workers[worker].retiring {
            workers[worker].state = .retired
            metrics.alive(-workers[worker].gpus)
        } else {
            workers[worker].state = .idle
            idle[workers[worker].pool].append(worker)
        }
    }

    /// Grows a pool with new idle workers, or shrinks it: idle workers leave at once, busy ones
    /// after their job, failed ones do not come back.
    private mutating func resize(pool: Int, to target: Int) {
        let spec = pools[pool].spec
        let cluster = scenario.clusters[pools[pool].cluster]
        while poolSize[pool] < target {
            let speeds = scenario.models.map { model -> Double in
                guard model.gpus <= spec.gpusPerWorker else { return 0 }
                if model.acceleratorSpeed.isEmpty { return 1 }
                return model.acceleratorSpeed[spec.accelerator] ?? 0
            }
            workers.append(
                SimWorker(
                    cluster: pools[pool].cluster, pool: pool, gpus: spec.gpusPerWorker,
                    offer: WorkerOffer(cluster: cluster.name, accelerator: spec.accelerator, gpus: spec.gpusPerWorker),
                    speed: speeds))
            idle[pool].append(workers.count - 1)
            metrics.alive(spec.gpusPerWorker)
            poolSize[pool] += 1
        }
        var excess = poolSize[pool] - target
        while excess > 0, let worker = idle[pool].popLast() {
            workers[worker].state = .retired
            metrics.alive(-spec.gpusPerWorker)
            poolSize[pool] -= 1
            excess -= 1
        }
        if excess > 0 {
            for worker in workers.indices.reversed() where excess > 0 {
                guard workers[worker].pool == pool, !workers[worker].retiring,
                    workers[worker].state == .busy || workers[worker].state == .down
                else { continue }
                workers[worker].retiring = true
                poolSize[pool] -= 1
                excess -= 1
            }
        }
    }

    private func queuedByTier(now: Double) -> [Int] {
        var counts = Array(repeating: 0, count: tierNames.count)
        for row in scheduler.summary(now: now) {
            if let index = tierNames.firstIndex(of: row.tier) { counts[index] += row.queued }
        }
        return counts
    }
}
