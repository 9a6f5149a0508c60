import Foundation
import KilnCore
import KilnFleet
import KilnScheduling

/// A deterministic discrete-event replay of a ``Scenario`` on the real ``Scheduler``: the same
/// policy, eligibility, account caps and dispatch limits that `kiln server` runs, and the lease rule
/// of ``RetryRule``; under the `controller` fleet, the real ``FleetController`` sizes the pools and
/// places models. Nothing here decides which job runs or how big a pool is; it only models time,
/// workers and traffic.
///
/// One run:
/// 1. Every job of the day is drawn up front from the seed (arrival time, tier, account, model, GPU
///    seconds), so every policy replays the very same traffic.
/// 2. Events are taken in (time, sequence) order: arrivals, lease-to-start delays, completions,
///    worker failures and lease expiries, capacity changes, samples.
/// 3. After each event that may free a worker or make a job eligible, idle workers ask the
///    scheduler for work, primary pools before burst pools.
/// 4. Under the `controller` fleet, every `tick_seconds` the controller sees the backlog, the
///    arrivals and the workers, and its actions take effect: new workers arrive after the pool's
///    provisioning delay, drained workers leave after their job (or release it after the grace,
///    charged no attempt), placed workers load their model before they take its jobs.
public struct Simulator: Sendable {
    public let scenario: Scenario
    public let policy: any SchedulingPolicy
    public let traffic: Traffic

    /// - Parameter traffic: the scenario's jobs, drawn once by ``Traffic/init(scenario:)`` and shared
    ///   by every run of the same scenario (each policy of a comparison); drawn here when nil.
    /// - Throws: ``KilnError`` naming the first invalid field of the scenario.
    public init(scenario: Scenario, policy: any SchedulingPolicy, traffic: Traffic? = nil) throws {
        try ScenarioValidation.check(scenario)
        self.scenario = scenario
        self.policy = policy
        self.traffic = try traffic ?? Traffic(scenario: scenario)
    }

    public func run() throws -> SimulationReport {
        var run = try SimulationRun(scenario: scenario, policy: policy, traffic: traffic)
        return run.execute()
    }
}

/// Every job of a scenario's day, drawn from its seed: what all the runs of one scenario replay.
/// It depends on the seed, tiers, models, arrivals, bursts and trace alone, not on the fleet or the
/// policy.
public struct Traffic: Sendable {
    let jobs: [SimJob]
    /// By tier: the index of its first account (each tier's accounts are numbered after the last's).
    let firstAccount: [Int]

    /// - Throws: ``KilnError`` naming the first invalid field of the scenario.
    public init(scenario: Scenario) throws {
        try ScenarioValidation.check(scenario)
        var first: [Int] = []
        var total = 0
        for tier in scenario.tiers {
            first.append(total)
            total += tier.accounts
        }
        firstAccount = first
        jobs = TrafficGenerator.jobs(for: scenario, firstAccount: first)
    }

    /// Jobs in the day, trace jobs included.
    public var count: Int { jobs.count }
}

/// One job of the day, as drawn: 24 bytes, read by every run of the scenario from one shared array
/// (a run touches half a million of them in no cache-friendly order, and changes none: a job's
/// dispatch and attempt counts are in its worker's ``SimLease`` while it runs, and in
/// ``SimDispatches`` while it waits to run again). The narrow fields are read as `Int`.
struct SimJob: Sendable {
    /// When it joined the queue: before the run began (negative) for a trace job that had waited.
    let arrival: Double
    /// GPU seconds at speed 1.
    let work: Double
    private let account32: Int32
    private let tier16: Int16
    private let model16: Int16

    init(arrival: Double, tier: Int, account: Int, model: Int, work: Double) {
        self.arrival = arrival
        self.work = work
        self.account32 = Int32(account)
        self.tier16 = Int16(tier)
        self.model16 = Int16(model)
    }

    var tier: Int { Int(tier16) }
    var account: Int { Int(account32) }
    var model: Int { Int(model16) }
}

/// The counts of a job that went back to the queue after a dispatch (its worker failed, or a drain
/// released it), kept until it is dispatched again: the few jobs that run more than once.
struct SimDispatches {
    /// Dispatches so far: events of an earlier dispatch (one released since) are ignored.
    private var dispatches32: Int32 = 0
    /// Attempts charged (a released job is not charged for its dispatch).
    private var attempts16: Int16 = 0

    init() {}

    init(dispatches: Int, attempts: Int) {
        dispatches32 = Int32(dispatches)
        attempts16 = Int16(attempts)
    }

    var attempts: Int {
        get { Int(attempts16) }
        set { attempts16 = Int16(newValue) }
    }
    var dispatches: Int {
        get { Int(dispatches32) }
        set { dispatches32 = Int32(newValue) }
    }
}

struct SimWorker {
    enum State { case provisioning, idle, loading, busy, down, retired }
    var cluster: Int
    var pool: Int
    var gpus: Int
    var state: State = .idle
    /// Leaves after its job (a shrinking pool; under the controller, a drain).
    var retiring = false
    var loadedModel: Int?
    /// The model placement put it on (controller fleet only); nil takes any.
    var assignment: Int?
    var assignedAt = 0.0
    var drainDeadline: Double?
    /// Its job, while busy.
    var lease: SimLease?
    /// Its index in its idle list, while idle.
    var idleSlot: Int?
}

/// What a worker's job is, copied at its lease: what the job's completion reads, so that a
/// completion touches the worker alone and not the job (one of half a million, out of order).
struct SimLease {
    var job: Int32
    var dispatch: Int32
    var tier: Int16
    var model: Int16
    var attempts: Int32
    /// Seconds from its arrival to this dispatch.
    var wait: Double
    /// Seconds it runs on this worker, a model switch excluded.
    var runSeconds: Double

    var index: Int { Int(job) }
}

/// What happens next; 32-bit payloads keep an event, with its key in the queue, in 32 bytes.
enum SimEvent {
    case arrival(Int32)
    case started(job: Int32, worker: Int32, dispatch: Int32)
    case finished(job: Int32, worker: Int32, dispatch: Int32)
    case failed(job: Int32, worker: Int32, dispatch: Int32)
    case leaseExpired(Int32)
    case recovered(Int32)
    case capacity(pool: Int32, workers: Int32)
    case sample
    case fleetTick
    case provisioned(Int32)
    case loaded(Int32)
}

struct SimulationRun {
    let scenario: Scenario
    let end: Double
    var scheduler: Scheduler
    /// Lane 0 holds the next arrival; lane 1 + c the lease starts of cluster c (see ``EventQueue``).
    var events: EventQueue<SimEvent>
    /// The day's jobs, shared with every other run of the traffic.
    let jobs: [SimJob]
    /// By job: the counts of those back in the queue after a dispatch (see ``SimDispatches``).
    var requeued: [Int32: SimDispatches] = [:]
    /// The scheduler's queue of each (tier, model), at `tier * models + model`, and its account of
    /// each account: resolved once, so that an arrival enqueues integers.
    let queueRefs: [QueueRef]
    let accountRefs: AccountRefs
    let tierNames: [String]
    let modelIndex: [String: Int]
    var workers: [SimWorker] = []
    /// By pool, at `pool * models + model`: how fast its workers run the model (0: they cannot).
    let speeds: [Double]
    /// Idle workers by pool and assignment (see ``idleList(pool:assignment:)``), in the order
    /// pools are tried (primary first).
    var idle: [[Int]]
    /// Workers in all the idle lists.
    var idleCount = 0
    /// What the workers of each idle list offer the scheduler: one value per list, so that the
    /// scheduler's cache of recent offers compares shared storage.
    let offers: [WorkerOffer]
    let poolOrder: [Int]
    let pools: [(cluster: Int, spec: Scenario.PoolSpec)]
    /// Workers of each pool that count toward its scripted capacity (not retiring, not retired).
    var poolSize: [Int]
    var metrics: SimulationMetrics
    // The controller fleet.
    var controller: FleetController?
    let capacityPools: [CapacityPool]
    /// Workers not yet retired.
    var live: [Int] = []
    var arrivalsByModel: [Int]
    /// Run seconds of completed jobs (switches excluded), by model and pool: sum and count.
    var runSum: [[Double]]
    var runCount: [[Int]]

    init(scenario: Scenario, policy: any SchedulingPolicy, traffic: Traffic) throws {
        self.scenario = scenario
        self.end = scenario.durationHours * 3600
        let tierTable = try TierTable(
            scenario.tiers.map { Tier(name: $0.name, maxWait: $0.maxWaitSeconds, maxRunningPerAccount: $0.maxRunningPerAccount) })
        scheduler = Scheduler(
            tiers: tierTable, policy: policy,
            dispatchLimits: Dictionary(uniqueKeysWithValues: scenario.clusters.map { ($0.name, $0.dispatchLimit) }),
            defaultDispatchLimit: 64)
        tierNames = scenario.tiers.map(\.name)
        let requirements = scenario.models.map {
            JobRequirements(model: $0.name, accelerators: Set($0.acceleratorSpeed.keys), gpus: $0.gpus)
        }
        var queueRefs: [QueueRef] = []
        for tier in scenario.tiers {
            for model in requirements { queueRefs.append(try scheduler.queue(tier: tier.name, requirements: model)) }
        }
        self.queueRefs = queueRefs
        // Each tier's accounts are numbered after the last's, as the traffic numbers them.
        accountRefs = try scheduler.accounts(
            scenario.tiers.enumerated().flatMap { tierIndex, tier in
                (0..<tier.accounts).map { AccountID(unchecked: "acct_sim\(tierIndex)x\($0)") }
            })
        modelIndex = Dictionary(scenario.models.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { first, _ in first })
        jobs = traffic.jobs
        events = EventQueue(lanes: 1 + scenario.clusters.count)
        var allPools: [(cluster: Int, spec: Scenario.PoolSpec)] = []
        for (clusterIndex, cluster) in scenario.clusters.enumerated() {
            for pool in cluster.pools { allPools.append((clusterIndex, pool)) }
        }
        speeds = allPools.flatMap { pool in
            scenario.models.map { model -> Double in
                guard model.gpus <= pool.spec.gpusPerWorker else { return 0 }
                if model.acceleratorSpeed.isEmpty { return 1 }
                return model.acceleratorSpeed[pool.spec.accelerator] ?? 0
            }
        }
        pools = allPools
        offers = allPools.flatMap { pool in
            let base = WorkerOffer(
                cluster: scenario.clusters[pool.cluster].name, accelerator: pool.spec.accelerator, gpus: pool.spec.gpusPerWorker)
            return [base]
                + scenario.models.map { model in
                    var placed = base
                    placed.models = [model.name]
                    return placed
                }
        }
        idle = Array(repeating: [], count: allPools.count * (scenario.models.count + 1))
        poolSize = Array(repeating: 0, count: allPools.count)
        // Primary pools first, burst pools (borrowed capacity) last.
        poolOrder = allPools.indices.sorted { a, b in
            let ka = allPools[a].spec.kind == .primary ? 0 : 1
            let kb = allPools[b].spec.kind == .primary ? 0 : 1
            return ka != kb ? ka < kb : a < b
        }
        metrics = SimulationMetrics(tiers: scenario.tiers, jobs: jobs.count)
        arrivalsByModel = Array(repeating: 0, count: scenario.models.count)
        runSum = Array(repeating: Array(repeating: 0, count: allPools.count), count: scenario.models.count)
        runCount = Array(repeating: Array(repeating: 0, count: allPools.count), count: scenario.models.count)
        capacityPools = allPools.map { pool in
            let bounds = pool.spec.autoscale ?? Scenario.Autoscale(maxWorkers: 0)
            return CapacityPool(
                name: pool.spec.name, cluster: scenario.clusters[pool.cluster].name,
                kind: pool.spec.kind == .primary ? .primary : .burst, accelerator: pool.spec.accelerator,
                gpusPerWorker: pool.spec.gpusPerWorker, minWorkers: bounds.minWorkers, maxWorkers: bounds.maxWorkers,
                cooldownSeconds: bounds.cooldownSeconds, drainGraceSeconds: bounds.drainGraceSeconds,
                provisionSeconds: bounds.provisionSeconds, lends: bounds.lend)
        }
        if scenario.fleet.mode == .controller {
            var settings = FleetController.Settings()
            if let headroom = scenario.fleet.headroom { settings.headroom = headroom }
            if let dwell = scenario.fleet.dwellSeconds { settings.dwellSeconds = dwell }
            if let horizon = scenario.fleet.minimumHorizonSeconds { settings.minimumHorizonSeconds = horizon }
            controller = FleetController(settings: settings)
        }
    }

    mutating func execute() -> SimulationReport {
        if controller != nil {
            for (index, pool) in capacityPools.enumerated() {
                for _ in 0..<pool.minWorkers { arrive(addWorker(pool: index, state: .provisioning), now: 0) }
            }
            events.schedule(.fleetTick, at: 0)
        } else {
            for (index, pool) in pools.enumerated() {
                for (time, workers) in CapacityPlan.steps(pool.spec.capacity) {
                    events.schedule(.capacity(pool: Int32(index), workers: Int32(workers)), at: time * 3600)
                }
            }
        }
        if let first = jobs.first { events.schedule(.arrival(0), at: max(0, first.arrival), lane: 0) }
        events.schedule(.sample, at: 0)

        var processed = 0
        while let (time, event) = events.pop(), time <= end {
            metrics.advance(to: time)
            processed += 1
            switch event {
            case .arrival(let index32):
                let index = Int(index32)
                let job = jobs[index]
                scheduler.enqueue(
                    Int64(index), queue: queueRefs[job.tier * scenario.models.count + job.model], account: accountRefs[job.account],
                    queuedAt: job.arrival)
                metrics.arrived(tier: jobs[index].tier)
                arrivalsByModel[jobs[index].model] += 1
                if index + 1 < jobs.count { events.schedule(.arrival(index32 + 1), at: max(0, jobs[index + 1].arrival), lane: 0) }
                dispatch(now: time)
            case .started(let index, let worker, let dispatch):
                // A released job's dispatch no longer holds the worker.
                guard let lease = workers[Int(worker)].lease, lease.job == index, lease.dispatch == dispatch else { break }
                scheduler.started(Int64(index))
                self.dispatch(now: time)
            case .finished(let index32, let worker32, let dispatch):
                let worker = Int(worker32)
                // A released job's dispatch no longer holds the worker.
                guard let lease = workers[worker].lease, lease.job == index32, lease.dispatch == dispatch else { break }
                scheduler.remove(Int64(index32))
                metrics.completed(tier: Int(lease.tier), wait: lease.wait)
                metrics.attemptsCharged += Int(lease.attempts)
                runSum[Int(lease.model)][workers[worker].pool] += lease.runSeconds
                runCount[Int(lease.model)][workers[worker].pool] += 1
                release(worker, now: time)
                self.dispatch(now: time)
            case .failed(let index32, let worker32, let dispatch):
                let worker = Int(worker32)
                guard let lease = workers[worker].lease, lease.job == index32, lease.dispatch == dispatch else { break }
                requeued[index32] = SimDispatches(dispatches: Int(lease.dispatch), attempts: Int(lease.attempts))
                metrics.busy(-workers[worker].gpus)
                alive(worker, -1)
                workers[worker].state = .down
                workers[worker].lease = nil
                workers[worker].loadedModel = nil
                metrics.workerFailures += 1
                events.schedule(.recovered(worker32), at: time + (scenario.failures?.recoverySeconds ?? 0))
                events.schedule(.leaseExpired(index32), at: time + scenario.leases.ttlSeconds)
            case .leaseExpired(let index32):
                let index = Int(index32)
                let attempts = requeued[index32]?.attempts ?? 0
                if RetryRule.requeues(attempts: attempts, maxAttempts: scenario.leases.maxAttempts, retryable: true) {
                    scheduler.requeue(Int64(index))
                    metrics.retries += 1
                } else {
                    requeued[index32] = nil
                    scheduler.remove(Int64(index))
                    metrics.failed(tier: jobs[index].tier)
                }
                dispatch(now: time)
            case .recovered(let worker32):
                let worker = Int(worker32)
                guard workers[worker].state == .down else { break }  // retired meanwhile
                if workers[worker].retiring {
                    workers[worker].state = .retired
                } else {
                    alive(worker, 1)
                    becomeIdle(worker, now: time)
                    dispatch(now: time)
                }
            case .capacity(let pool, let target):
                resize(pool: Int(pool), to: Int(target))
                dispatch(now: time)
            case .sample:
                metrics.sample(at: time, queued: queuedByTier(now: time))
                if time + scenario.sampleEverySeconds <= end {
                    events.schedule(.sample, at: time + scenario.sampleEverySeconds)
                }
            case .fleetTick:
                fleetTick(now: time)
                dispatch(now: time)
                if time + scenario.fleet.tickSeconds <= end { events.schedule(.fleetTick, at: time + scenario.fleet.tickSeconds) }
            case .provisioned(let worker32):
                let worker = Int(worker32)
                guard workers[worker].state == .provisioning else { break }  // cancelled meanwhile
                arrive(worker, now: time)
                dispatch(now: time)
            case .loaded(let worker32):
                let worker = Int(worker32)
                guard workers[worker].state == .loading else { break }
                metrics.busy(-workers[worker].gpus)
                if workers[worker].retiring {
                    workers[worker].state = .retired
                    alive(worker, -1)
                } else {
                    becomeIdle(worker, now: time)
                    dispatch(now: time)
                }
            }
        }
        metrics.advance(to: end)
        return metrics.report(
            scenario: scenario, policy: scheduler.policy.name, fleet: scenario.fleet.mode.rawValue, events: processed,
            unserved: unservedJobs())
    }

    /// Jobs that arrived but had not been dispatched (queued) at the end, with how long they waited.
    private func unservedJobs() -> [(tier: Int, waited: Double)] {
        var result: [(tier: Int, waited: Double)] = []
        for index in jobs.indices where jobs[index].arrival <= end && scheduler.isQueued(Int64(index)) {
            result.append((jobs[index].tier, end - jobs[index].arrival))
        }
        return result
    }

    // MARK: - Workers

    /// The idle list of a pool's workers placed on `assignment` (nil: not placed).
    private func idleList(pool: Int, assignment: Int?) -> Int {
        pool * (scenario.models.count + 1) + (assignment.map { $0 + 1 } ?? 0)
    }

    private mutating func pushIdle(_ worker: Int) {
        let list = idleList(pool: workers[worker].pool, assignment: workers[worker].assignment)
        workers[worker].idleSlot = idle[list].count
        idle[list].append(worker)
        idleCount += 1
    }

    private mutating func removeIdle(_ worker: Int) {
        guard let slot = workers[worker].idleSlot else { return }
        let list = idleList(pool: workers[worker].pool, assignment: workers[worker].assignment)
        let last = idle[list].removeLast()
        idleCount -= 1
        if last != worker {
            idle[list][slot] = last
            workers[last].idleSlot = slot
        }
        workers[worker].idleSlot = nil
    }

    /// Idle workers ask for work, primary pools before burst pools, until none gets any.
    private mutating func dispatch(now: Double) {
        // Most events of a busy day find every worker busy, or of a quiet one nothing queued.
        guard idleCount > 0, scheduler.queuedCount > 0 else { return }
        let lists = scenario.models.count + 1
        for pool in poolOrder {
            for list in pool * lists..<(pool + 1) * lists {
                while let worker = idle[list].last {
                    guard let sequence = scheduler.nextSequence(for: offers[list], now: now) else { break }
                    idle[list].removeLast()
                    idleCount -= 1
                    workers[worker].idleSlot = nil
                    lease(Int(sequence), on: worker, now: now)
                }
            }
        }
    }

    private func speed(of worker: Int, _ model: Int) -> Double {
        speeds[workers[worker].pool * scenario.models.count + model]
    }

    private mutating func lease(_ index: Int, on worker: Int, now: Double) {
        // A job's first dispatch (nearly all of them) has nothing kept.
        var counts = requeued.isEmpty ? SimDispatches() : requeued.removeValue(forKey: Int32(index)) ?? SimDispatches()
        counts.attempts += 1
        counts.dispatches += 1
        let (dispatch, attempts) = (counts.dispatches, counts.attempts)
        metrics.dispatched(tier: jobs[index].tier, wait: now - jobs[index].arrival)
        let model = jobs[index].model
        let cluster = scenario.clusters[workers[worker].cluster]
        let runSeconds = jobs[index].work / speed(of: worker, model)
        var runtime = runSeconds
        if workers[worker].loadedModel != model {
            runtime += scenario.models[model].switchSeconds
            load(model, on: worker)
        }
        workers[worker].state = .busy
        workers[worker].lease = SimLease(
            job: Int32(index), dispatch: Int32(dispatch), tier: Int16(jobs[index].tier), model: Int16(model),
            attempts: Int32(attempts), wait: now - jobs[index].arrival, runSeconds: runSeconds)
        metrics.busy(workers[worker].gpus)
        let start = now + cluster.startDelaySeconds
        if cluster.startDelaySeconds > 0 {
            events.schedule(
                .started(job: Int32(index), worker: Int32(worker), dispatch: Int32(dispatch)), at: start, lane: 1 + workers[worker].cluster)
        } else {
            scheduler.started(Int64(index))
        }
        if let failures = scenario.failures, failures.meanHoursBetweenFailures > 0 {
            // Drawn from the job and attempt alone, so every policy sees the same failures.
            var random = SplitMix64(seed: scenario.seed &+ UInt64(index) &* 0x9E37_79B9 &+ UInt64(attempts))
            let probability = 1 - exp(-runtime / (failures.meanHoursBetweenFailures * 3600))
            if random.unit() < probability {
                events.schedule(
                    .failed(job: Int32(index), worker: Int32(worker), dispatch: Int32(dispatch)), at: start + runtime * random.unit())
                return
            }
        }
        events.schedule(.finished(job: Int32(index), worker: Int32(worker), dispatch: Int32(dispatch)), at: start + runtime)
    }

    /// The worker loads `model`: a switch when it had another loaded, a cold load when none.
    private mutating func load(_ model: Int, on worker: Int) {
        let seconds = scenario.models[model].switchSeconds * Double(workers[worker].gpus)
        if workers[worker].loadedModel != nil {
            metrics.modelSwitches += 1
            metrics.switchingGPUSeconds += seconds
        } else {
            metrics.coldLoadGPUSeconds += seconds
        }
        workers[worker].loadedModel = model
    }

    /// The worker's job ended: it leaves if retiring, else it takes work again.
    private mutating func release(_ worker: Int, now: Double) {
        metrics.busy(-workers[worker].gpus)
        workers[worker].lease = nil
        if workers[worker].retiring {
            workers[worker].state = .retired
            alive(worker, -1)
        } else {
            becomeIdle(worker, now: now)
        }
    }

    /// Idle, or first loading the model placement put it on.
    private mutating func becomeIdle(_ worker: Int, now: Double) {
        if let model = workers[worker].assignment, workers[worker].loadedModel != model {
            load(model, on: worker)
            workers[worker].state = .loading
            metrics.busy(workers[worker].gpus)
            events.schedule(.loaded(Int32(worker)), at: now + scenario.models[model].switchSeconds)
        } else {
            workers[worker].state = .idle
            pushIdle(worker)
        }
    }

    /// Grows a pool with new idle workers, or shrinks it: idle workers leave at once, busy ones
    /// after their job, failed ones do not come back.
    private mutating func resize(pool: Int, to target: Int) {
        while poolSize[pool] < target {
            let worker = addWorker(pool: pool, state: .idle)
            pushIdle(worker)
            alive(worker, 1)
            poolSize[pool] += 1
        }
        var excess = poolSize[pool] - target
        let list = idleList(pool: pool, assignment: nil)
        while excess > 0, let worker = idle[list].popLast() {
            idleCount -= 1
            workers[worker].idleSlot = nil
            workers[worker].state = .retired
            alive(worker, -1)
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

    /// The worker's GPUs become available (`sign` 1) or stop being (-1); a burst pool's count as
    /// borrowed.
    private mutating func alive(_ worker: Int, _ sign: Int) {
        metrics.alive(sign * workers[worker].gpus, borrowed: pools[workers[worker].pool].spec.kind == .burst)
    }

    private mutating func addWorker(pool: Int, state: SimWorker.State) -> Int {
        workers.append(SimWorker(cluster: pools[pool].cluster, pool: pool, gpus: pools[pool].spec.gpusPerWorker, state: state))
        live.append(workers.count - 1)
        return workers.count - 1
    }

    private func queuedByTier(now: Double) -> [Int] {
        var counts = Array(repeating: 0, count: tierNames.count)
        for row in scheduler.summary(now: now) {
            if let index = tierNames.firstIndex(of: row.tier) { counts[index] += row.queued }
        }
        return counts
    }

    // MARK: - The controller fleet

    /// A provisioned worker registers: it counts as capacity and takes work (or loads its model).
    private mutating func arrive(_ worker: Int, now: Double) {
        alive(worker, 1)
        if workers[worker].assignment == nil { workers[worker].assignedAt = now }
        becomeIdle(worker, now: now)
    }

    private mutating func retire(_ worker: Int) {
        switch workers[worker].state {
        case .provisioning, .down, .retired:
            break
        case .idle:
            removeIdle(worker)
            alive(worker, -1)
        case .loading, .busy:
            // Still holding something: it leaves when that ends.
            workers[worker].retiring = true
            return
        }
        workers[worker].state = .retired
    }

    /// One tick of the controller: what it sees, what it decides, and its actions taking effect.
    private mutating func fleetTick(now: Double) {
        guard var controller else { return }
        live.removeAll { workers[$0].state == .retired }
        var running = Array(repeating: 0, count: scenario.models.count)
        var fleetWorkers: [FleetWorker] = []
        fleetWorkers.reserveCapacity(live.count)
        for index in live {
            let worker = workers[index]
            if let lease = worker.lease { running[Int(lease.model)] += 1 }
            let state: FleetWorker.State =
                worker.state == .provisioning ? .provisioning : worker.retiring ? .draining : .active
            fleetWorkers.append(
                FleetWorker(
                    id: index, pool: worker.pool, state: state, assignment: worker.assignment, assignedAt: worker.assignedAt,
                    running: worker.state == .busy || worker.state == .loading ? 1 : 0, drainDeadline: worker.drainDeadline))
        }
        var backlog = Array(repeating: [Backlog](), count: scenario.models.count)
        for queue in scheduler.backlog() {
            guard let model = modelIndex[queue.requirements.model] else { continue }
            backlog[model].append(
                Backlog(tier: queue.tier, jobs: queue.jobs, oldestQueuedAt: queue.oldestQueuedAt, maxWait: queue.maxWait))
        }
        let workloads = scenario.models.enumerated().map { index, model in
            var measured: [String: Double] = [:]
            for pool in pools.indices where runCount[index][pool] > 0 {
                measured[pools[pool].spec.accelerator] = runSum[index][pool] / Double(runCount[index][pool])
            }
            return Workload(
                id: model.name, accelerators: Set(model.acceleratorSpeed.keys), gpus: model.gpus, backlog: backlog[index],
                running: running[index], arrivals: arrivalsByModel[index], runSeconds: measured,
                defaultRunSeconds: model.runtime.meanSeconds, switchSeconds: model.switchSeconds)
        }
        let decision = controller.decide(FleetState(pools: capacityPools, workloads: workloads, workers: fleetWorkers), now: now)
        self.controller = controller
        for action in decision.actions {
            switch action.kind {
            case .provision(let pool, let count):
                let delay = pools[pool].spec.autoscale?.provisionSeconds ?? 0
                for _ in 0..<count {
                    let worker = addWorker(pool: pool, state: .provisioning)
                    workers[worker].assignedAt = now
                    metrics.workersProvisioned += 1
                    if delay > 0 { events.schedule(.provisioned(Int32(worker)), at: now + delay) } else { arrive(worker, now: now) }
                }
            case .drain(let worker, let deadline):
                workers[worker].drainDeadline = deadline
                retire(worker)
            case .retire(let worker):
                retire(worker)
            case .release(let worker):
                releaseJob(of: worker)
            case .assign(let worker, let model):
                let previous = workers[worker].assignment
                guard previous != model else { continue }
                if previous != nil { metrics.placementMoves += 1 }
                let wasIdle = workers[worker].state == .idle
                if wasIdle { removeIdle(worker) }
                workers[worker].assignment = model
                workers[worker].assignedAt = now
                if wasIdle { becomeIdle(worker, now: now) }
            }
        }
        // What lending pools do not hold (taking back counts as held), until the next tick.
        var held = Array(repeating: 0, count: pools.count)
        for index in live where workers[index].state != .retired { held[workers[index].pool] += 1 }
        var lent = 0
        for pool in pools.indices where capacityPools[pool].lends {
            lent += max(0, capacityPools[pool].maxWorkers - held[pool]) * capacityPools[pool].gpusPerWorker
        }
        metrics.lent(lent)
    }

    /// A drained worker's grace is over: its job returns to the queue with its original queued
    /// time, charged no attempt, and the worker leaves.
    private mutating func releaseJob(of worker: Int) {
        guard workers[worker].state == .busy, let lease = workers[worker].lease else {
            retire(worker)
            return
        }
        // Charged no attempt; the dispatch's pending events no longer apply.
        requeued[lease.job] = SimDispatches(dispatches: Int(lease.dispatch) + 1, attempts: Int(lease.attempts) - 1)
        scheduler.requeue(Int64(lease.job))
        metrics.releasedJobs += 1
        metrics.busy(-workers[worker].gpus)
        alive(worker, -1)
        workers[worker].lease = nil
        workers[worker].state = .retired
    }
}
