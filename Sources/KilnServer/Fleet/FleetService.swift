import Foundation
import KilnCore
import KilnFleet
import KilnScheduling
import KilnStore
import Logging
import ServiceLifecycle

/// Runs the pure ``FleetController`` against the live fleet: the I/O shell of DESIGN §5.
///
/// Every `fleet.tick_seconds`:
/// 1. **See.** The workers of the configured pools from the store, the launches its providers are
///    still starting, the running generations, and from the dispatcher the dispatchable backlog,
///    the arrivals and the measured run time per model. A pool worker that holds no job and has
///    not polled for ``staleAfter``, or whose local process is gone, is marked `retired` (a
///    worker holding jobs keeps them through heartbeats; if it dies, their leases expire).
/// 2. **Decide.** One ``FleetController/decide(_:now:)``; a `static` pool is held at the size it
///    has, so only placement applies to it.
/// 3. **Act.** Providers start and stop workers; drained workers are marked `draining` (the
///    dispatcher leases them nothing) and their jobs released after the grace, charged no
///    attempt; placements are kept here and read by the lease call, which gives a placed worker
///    only its model's jobs, once it has prepared the version.
///
/// Placements, the measured provisioning times and bounds set through the admin API live in
/// memory: after a restart, workers take any model until the first tick places them again, and
/// pools have their configured bounds.
public actor FleetService: Service {
    /// What placement put a worker on.
    public struct Assignment: Sendable, Hashable {
        public var model: String
        /// The version to prepare: the model's `production` alias when assigned; nil when the
        /// model has none (the worker then prepares each job's version as it comes).
        public var version: String?
        public var reason: String
        public var at: Date
    }

    /// A worker as the fleet sees it: registered, or a launch still starting.
    enum Member: Hashable, Sendable {
        case worker(WorkerID)
        case launch(String)
    }

    /// What a worker's lease call must do about its placement.
    public enum Placement: Sendable, Hashable {
        /// Answer 202: the worker prepares this version first.
        case prepare(Assignment)
        /// Lease it jobs of this model (nil: any model).
        case serve(model: String?)
    }

    /// The admin view (`GET /v1/admin/fleet`).
    public struct View: Sendable {
        public struct Pool: Sendable {
            public var configured: ServerConfiguration.Pool
            public var decision: PoolDecision?
        }

        public struct Worker: Sendable {
            /// A worker id, or a launch id while it starts.
            public var id: String
            public var pool: String
            public var state: FleetWorker.State
            public var assignment: Assignment?
            public var readyVersion: String?
            public var running: Int
        }

        public struct Record: Sendable {
            public var at: Date
            public var action: String
            public var reason: String
        }

        public var tickedAt: Date?
        public var pools: [Pool]
        public var workers: [Worker]
        /// Newest first.
        public var decisions: [Record]
    }

    private let store: any JobStore
    private let dispatcher: Dispatcher
    private let transitions: any TransitionSink
    private let cache: RecordCache
    private let clock: any WallClock
    private let configuration: ServerConfiguration
    private let logger: Logger
    private let providers: [ServerConfiguration.Pool.Provider: any CapacityProvider]
    private var controller: FleetController
    private var assignments: [Member: Assignment] = [:]
    private var ready: [WorkerID: String] = [:]
    /// When each worker was told to prepare its version: the switch it then takes is measured.
    private var directedAt: [WorkerID: Date] = [:]
    /// Measured switch time per model (told to prepare → ready: pull and `setup`), weighted to the
    /// recent.
    private var switchSeconds: [String: Double] = [:]
    private var drainDeadlines: [WorkerID: Date] = [:]
    /// Launches asked of a provider that have not registered yet: their pool, and since when.
    private var pending: [String: (pool: String, since: Date)] = [:]
    /// By pool: the bounds an operator set through the admin API, over the configured ones.
    private var bounds: [String: (min: Int, max: Int)] = [:]
    /// By pool: measured seconds from asking for a worker to its registration, weighted to the recent.
    private var provisionSeconds: [String: Double] = [:]
    /// Pending launches found running rather than asked for: their wait is not measured.
    private var adopted: Set<String> = []
    private var tickedAt: Date?
    private var poolDecisions: [String: PoolDecision] = [:]
    private var members: [View.Worker] = []
    private var history: [View.Record] = []
    /// Worker states this tick's actions changed, for the view without reading the store again.
    private var changed: [WorkerID: WorkerRecord.State] = [:]

    /// A pool worker not seen for this long (its lease polls refresh `last_seen_at`) is retired.
    public var staleAfter: TimeInterval { max(60, 3 * configuration.limits.maxLeaseWaitSeconds) }
    /// A launch that has not registered after this long is given up.
    static let launchTimeout: TimeInterval = 600
    /// What the controller assumes a switch costs (pull and `setup`) until one is measured.
    static let defaultSwitchSeconds: Double = 60

    public init(
        store: any JobStore, dispatcher: Dispatcher, transitions: any TransitionSink, cache: RecordCache, clock: any WallClock,
        configuration: ServerConfiguration, providers: [ServerConfiguration.Pool.Provider: any CapacityProvider], logger: Logger
    ) {
        self.store = store
        self.dispatcher = dispatcher
        self.transitions = transitions
        self.cache = cache
        self.clock = clock
        self.configuration = configuration
        self.providers = providers
        self.logger = logger
        self.controller = FleetController(settings: configuration.fleet.controller)
    }

    public func run() async throws {
        guard !configuration.pools.isEmpty else {
            try? await gracefulShutdown()
            return
        }
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                try await tick()
            } catch {
                logger.error("fleet controller: \(error)")
            }
            try? await cancelWhenGracefulShutdown {
                try await Task.sleep(for: .milliseconds(Int(self.configuration.fleet.tickSeconds * 1000)))
            }
        }
        for provider in providers.values { await provider.shutdown(grace: .seconds(30)) }
    }

    // MARK: - The lease call's side

    /// The worker's placement, if it has one.
    public func assignment(for worker: WorkerID) -> Assignment? { assignments[.worker(worker)] }

    /// The switch time measured for `model`, in seconds; nil before one was.
    public func measuredSwitchSeconds(of model: String) -> Double? { switchSeconds[model] }

    /// What a lease call of `worker`, which says it has prepared `readyVersion`, must do: have it
    /// prepare its assigned version first, or lease it that model's jobs. The time from being told
    /// to prepare to saying it is ready is the switch the controller weighs moves against.
    public func placement(for worker: WorkerID, readyVersion: String?) -> Placement {
        let now = clock.now()
        let assignment = assignments[.worker(worker)]
        if let readyVersion, ready[worker] != readyVersion, let told = directedAt.removeValue(forKey: worker),
            let model = assignment?.model, assignment?.version == readyVersion
        {
            let seconds = max(0, now.timeIntervalSince(told))
            switchSeconds[model] = switchSeconds[model].map { $0 + 0.2 * (seconds - $0) } ?? seconds
        }
        ready[worker] = readyVersion
        guard let assignment else { return .serve(model: nil) }
        if let version = assignment.version, version != readyVersion {
            if directedAt[worker] == nil { directedAt[worker] = now }
            return .prepare(assignment)
        }
        return .serve(model: assignment.model)
    }

    public func view() -> View {
        View(
            tickedAt: tickedAt,
            pools: configuration.pools.map { View.Pool(configured: effective($0), decision: poolDecisions[$0.spec.name]) },
            workers: members, decisions: history.reversed())
    }

    /// Sets a pool's bounds until the server restarts (`PATCH /v1/admin/fleet/pools/{name}`): a
    /// max of 0 gives a burst pool back now, its busy workers draining within their grace. The next
    /// tick acts on them; a lower bound skips the pool's cool-down.
    /// - Throws: `.notFound` for a pool not configured; `.invalidInput` for a `static` pool (its size
    ///   is whatever registers) or a max below the min.
    public func setBounds(pool name: String, minWorkers: Int?, maxWorkers: Int?) throws -> View.Pool {
        guard let pool = configuration.pools.first(where: { $0.spec.name == name }) else {
            throw KilnError(.notFound, "no capacity pool is named '\(name)'")
        }
        guard pool.provider != .static else {
            throw KilnError(.invalidInput, "pool '\(name)' is static: its size is whatever workers register, it has no bounds to set")
        }
        let current = effective(pool).spec
        let minimum = minWorkers ?? current.minWorkers
        let maximum = maxWorkers ?? current.maxWorkers
        guard minimum >= 0, maximum >= minimum else {
            throw KilnError(.invalidInput, "max_workers (\(maximum)) must not be below min_workers (\(minimum)), nor either below 0")
        }
        bounds[name] = (minimum, maximum)
        record(clock.now(), "bounds of \(name): \(minimum)–\(maximum)", "set by an admin")
        return View.Pool(configured: effective(pool), decision: poolDecisions[name])
    }

    /// `pool` with the bounds an admin set and the provisioning time measured.
    private func effective(_ pool: ServerConfiguration.Pool) -> ServerConfiguration.Pool {
        var pool = pool
        if let (minimum, maximum) = bounds[pool.spec.name] {
            pool.spec.minWorkers = minimum
            pool.spec.maxWorkers = maximum
        }
        if let measured = provisionSeconds[pool.spec.name] { pool.spec.provisionSeconds = measured }
        return pool
    }

    // MARK: - One tick

    /// One tick: see, decide, act. - Returns: the decision.
    @discardableResult
    public func tick() async throws -> FleetDecision {
        let now = clock.now()
        let pools = configuration.pools
        changed = [:]
        // 1. See.
        // Launches each provider knows to be alive; a provider that cannot tell now (nil) has its
        // workers judged by silence alone.
        var alive: [String: String] = [:]
        var unknown: Set<ServerConfiguration.Pool.Provider> = []
        for (kind, provider) in providers {
            if let launches = await provider.running() { alive.merge(launches) { a, _ in a } } else { unknown.insert(kind) }
        }
        let running = Set(alive.keys)
        let generations = try await store.runningGenerations()
        var runningByWorker: [WorkerID: Int] = [:]
        var runningByModel: [String: Int] = [:]
        for generation in generations {
            if let worker = generation.lease?.workerID { runningByWorker[worker, default: 0] += 1 }
            runningByModel[generation.model, default: 0] += 1
        }
        var workers: [WorkerRecord] = []
        let registered = try await store.workers()
        // Launches running that this service did not ask for and that never registered (from before
        // a restart, or started by the cluster itself) are on their way: they count as provisioning.
        let known = Set(registered.compactMap { $0.labels[StaticProvider.launchLabel] })
        for (launch, pool) in alive where pending[launch] == nil && !known.contains(launch) && pools.contains(where: { $0.spec.name == pool }) {
            pending[launch] = (pool, now)
            adopted.insert(launch)
            record(now, "found \(launch) in \(pool)", "running, not registered yet")
        }
        for worker in registered where worker.state != .retired {
            guard let pool = worker.pool, pools.contains(where: { $0.spec.name == pool }) else { continue }
            let launch = worker.labels[StaticProvider.launchLabel]
            if let launch, let asked = pending.removeValue(forKey: launch), adopted.remove(launch) == nil {
                let seconds = max(0, worker.registeredAt.timeIntervalSince(asked.since))
                provisionSeconds[pool] = provisionSeconds[pool].map { $0 + 0.2 * (seconds - $0) } ?? seconds
            }
            let launchGone = launch.map { !running.contains($0) && isTracked(pool: pool, unknown: unknown) } ?? false
            // A worker busy with long jobs may not poll for a while; its heartbeats keep its leases.
            let silent = now.timeIntervalSince(worker.lastSeenAt) > staleAfter && runningByWorker[worker.id] == nil
            if launchGone || silent {
                try await retire(worker.id, reason: launchGone ? "its process exited" : "not seen for \(Int(staleAfter)) s", now: now)
                continue
            }
            if let launch, let assignment = assignments.removeValue(forKey: .launch(launch)) {
                assignments[.worker(worker.id)] = assignment
            }
            workers.append(worker)
        }
        for (launch, entry) in pending
        where (!running.contains(launch) && isTracked(pool: entry.pool, unknown: unknown))
            || now.timeIntervalSince(entry.since) > Self.launchTimeout
        {
            pending[launch] = nil
            adopted.remove(launch)
            assignments[.launch(launch)] = nil
            if running.contains(launch) { await provider(of: entry.pool).stop(launch: launch, graceful: false) }
            record(now, "give up \(launch)", "it did not register within \(Int(Self.launchTimeout)) s or exited before")
        }
        let demand = await dispatcher.fleetDemand()
        // Placements follow their model's `production` alias: a promote or a rollback re-places
        // every worker of the model on the new version, which it prepares before its next job.
        var versions: [String: String?] = [:]
        for (member, assignment) in assignments {
            if versions[assignment.model] == nil { versions[assignment.model] = .some(try await productionVersion(of: assignment.model)) }
            if let current = versions[assignment.model], current != assignment.version {
                assignments[member]?.version = current
            }
        }

        // The workloads: every model with work, running jobs or workers placed on it.
        var models = Set(demand.backlog.map(\.requirements.model)).union(runningByModel.keys)
        models.formUnion(assignments.values.map(\.model))
        let modelNames = models.sorted()
        let workloads = modelNames.map { model in
            let queues = demand.backlog.filter { $0.requirements.model == model }
            return Workload(
                id: model, accelerators: queues.first?.requirements.accelerators ?? [], gpus: queues.first?.requirements.gpus ?? 0,
                backlog: queues.map {
                    Backlog(tier: $0.tier, jobs: $0.jobs, oldestQueuedAt: $0.oldestQueuedAt, maxWait: $0.maxWait)
                },
                running: runningByModel[model] ?? 0, arrivals: demand.arrivals[model] ?? 0,
                defaultRunSeconds: demand.runSeconds[model] ?? 60,
                switchSeconds: switchSeconds[model] ?? Self.defaultSwitchSeconds)
        }
        let workloadIndex = Dictionary(uniqueKeysWithValues: modelNames.enumerated().map { ($1, $0) })

        // The fleet: registered workers, then launches, each with a handle (its index in `handles`).
        var handles: [Member] = []
        var fleet: [FleetWorker] = []
        var actual = Array(repeating: 0, count: pools.count)
        for worker in workers {
            guard let pool = pools.firstIndex(where: { $0.spec.name == worker.pool }) else { continue }
            let assignment = assignments[.worker(worker.id)]
            if worker.state == .active { actual[pool] += 1 }
            fleet.append(
                FleetWorker(
                    id: handles.count, pool: pool, state: worker.state == .draining ? .draining : .active,
                    assignment: assignment.flatMap { workloadIndex[$0.model] },
                    assignedAt: (assignment?.at ?? worker.registeredAt).timeIntervalSince1970,
                    running: runningByWorker[worker.id] ?? 0, drainDeadline: drainDeadlines[worker.id]?.timeIntervalSince1970))
            handles.append(.worker(worker.id))
        }
        for (launch, entry) in pending.sorted(by: { $0.key < $1.key }) {
            guard let pool = pools.firstIndex(where: { $0.spec.name == entry.pool }) else { continue }
            let assignment = assignments[.launch(launch)]
            actual[pool] += 1
            fleet.append(
                FleetWorker(
                    id: handles.count, pool: pool, state: .provisioning, assignment: assignment.flatMap { workloadIndex[$0.model] },
                    assignedAt: (assignment?.at ?? entry.since).timeIntervalSince1970))
            handles.append(.launch(launch))
        }

        // 2. Decide. A static pool is whatever registered: only placement applies to it.
        let specs = pools.enumerated().map { index, pool -> CapacityPool in
            guard pool.provider == .static else { return effective(pool).spec }
            var spec = pool.spec
            spec.minWorkers = actual[index]
            spec.maxWorkers = actual[index]
            return spec
        }
        let state = FleetState(pools: specs, workloads: workloads, workers: fleet)
        let decision = controller.decide(state, now: now.timeIntervalSince1970)
        tickedAt = now
        for pool in decision.pools { poolDecisions[pools[pool.pool].spec.name] = pool }

        // 3. Act.
        for action in decision.actions {
            do {
                try await apply(action, handles: handles, state: state, pools: pools, now: now)
            } catch {
                logger.error("fleet action failed: \(error)", metadata: ["reason": "\(action.reason)"])
            }
        }
        members = currentMembers(workers, runningByWorker: runningByWorker)
        return decision
    }

    private func apply(_ action: FleetAction, handles: [Member], state: FleetState, pools: [ServerConfiguration.Pool], now: Date)
        async throws
    {
        switch action.kind {
        case .provision(let pool, let count):
            let configured = pools[pool]
            let launches = try await providers[configured.provider, default: StaticProvider()].provision(count, pool: configured)
            for launch in launches { pending[launch] = (configured.spec.name, now) }
            if !launches.isEmpty { record(now, "provision \(launches.count) in \(configured.spec.name)", action.reason) }
        case .drain(let handle, let deadline):
            switch handles[handle] {
            case .worker(let id):
                let worker = try await store.setWorkerState(id, .draining)
                try await cache.catchUp()
                changed[id] = .draining
                drainDeadlines[id] = Date(timeIntervalSince1970: deadline)
                if let launch = worker.labels[StaticProvider.launchLabel], let pool = worker.pool {
                    await provider(of: pool).stop(launch: launch, graceful: true)
                }
                record(now, "drain \(id)", action.reason)
            case .launch(let launch):
                try await stopLaunch(launch, reason: action.reason, now: now)
            }
        case .release(let handle):
            guard case .worker(let id) = handles[handle] else { return }
            let released = try await store.releaseLeases(of: id, reason: "its worker was drained", at: now)
            for generation in released { try await transitions.apply(.requeued, generation) }
            record(now, "release \(id) (\(released.count) jobs back to the queue)", action.reason)
            try await retire(id, reason: action.reason, now: now)
        case .retire(let handle):
            switch handles[handle] {
            case .worker(let id): try await retire(id, reason: action.reason, now: now)
            case .launch(let launch): try await stopLaunch(launch, reason: action.reason, now: now)
            }
        case .assign(let handle, let workload):
            let model = state.workloads[workload].id
            let version = try await productionVersion(of: model)
            let member = handles[handle]
            assignments[member] = Assignment(model: model, version: version, reason: action.reason, at: now)
            let name: String
            switch member {
            case .worker(let id):
                name = id.rawValue
                // A long poll under its old offer would still take any model's job: it asks again.
                await dispatcher.recall(id)
            case .launch(let launch):
                name = launch
            }
            record(now, "assign \(name) to \(model)", action.reason)
        }
    }

    // MARK: - Internals

    private func retire(_ id: WorkerID, reason: String, now: Date) async throws {
        let worker = try await store.setWorkerState(id, .retired)
        try await cache.catchUp()
        changed[id] = .retired
        assignments[.worker(id)] = nil
        ready[id] = nil
        directedAt[id] = nil
        drainDeadlines[id] = nil
        if let launch = worker.labels[StaticProvider.launchLabel], let pool = worker.pool {
            await provider(of: pool).stop(launch: launch, graceful: true)
        }
        record(now, "retire \(id)", reason)
    }

    private func stopLaunch(_ launch: String, reason: String, now: Date) async throws {
        guard let entry = pending.removeValue(forKey: launch) else { return }
        adopted.remove(launch)
        assignments[.launch(launch)] = nil
        await provider(of: entry.pool).stop(launch: launch, graceful: false)
        record(now, "cancel \(launch)", reason)
    }

    private func provider(of pool: String) -> any CapacityProvider {
        let kind = configuration.pools.first { $0.spec.name == pool }?.provider ?? .static
        return providers[kind, default: StaticProvider()]
    }

    /// Whether the pool's provider can tell now which of its launches are alive.
    private func isTracked(pool: String, unknown: Set<ServerConfiguration.Pool.Provider>) -> Bool {
        guard let provider = configuration.pools.first(where: { $0.spec.name == pool })?.provider else { return false }
        return provider != .static && !unknown.contains(provider)
    }

    /// The version `production` points at (its heaviest target), if the model has that alias.
    private func productionVersion(of model: String) async throws -> String? {
        guard let alias = try await store.alias("production", of: model) else { return nil }
        return alias.targets.max { $0.weight < $1.weight }?.version.description
    }

    /// The live pool workers the tick saw, as its actions left them, then the launches.
    private func currentMembers(_ workers: [WorkerRecord], runningByWorker: [WorkerID: Int]) -> [View.Worker] {
        var result: [View.Worker] = []
        for worker in workers {
            let state = changed[worker.id] ?? worker.state
            guard state != .retired, let pool = worker.pool else { continue }
            result.append(
                View.Worker(
                    id: worker.id.rawValue, pool: pool, state: state == .draining ? .draining : .active,
                    assignment: assignments[.worker(worker.id)], readyVersion: ready[worker.id],
                    running: runningByWorker[worker.id] ?? 0))
        }
        for (launch, entry) in pending.sorted(by: { $0.key < $1.key }) {
            result.append(
                View.Worker(
                    id: launch, pool: entry.pool, state: .provisioning, assignment: assignments[.launch(launch)], readyVersion: nil,
                    running: 0))
        }
        return result
    }

    private func record(_ at: Date, _ action: String, _ reason: String) {
        history.append(View.Record(at: at, action: action, reason: reason))
        if history.count > 200 { history.removeFirst(history.count - 200) }
        logger.info("fleet: \(action)", metadata: ["reason": "\(reason)"])
    }
}
