/// What the fleet controller sees at one tick: the pools, the work per model version, the workers.
///
/// Plain data, built by the shell (the server from its store and scheduler, the simulator from its
/// model) and handed to ``FleetController/decide(_:now:)``. Pools and workloads are referred to by
/// their index in these arrays, workers by the shell's own integer handle.
public struct FleetState: Sendable {
    public var pools: [CapacityPool]
    public var workloads: [Workload]
    public var workers: [FleetWorker]

    public init(pools: [CapacityPool], workloads: [Workload], workers: [FleetWorker]) {
        self.pools = pools
        self.workloads = workloads
        self.workers = workers
    }
}

/// A pool of like workers in one cluster: what the autoscaler sizes and a provider grows or shrinks.
///
/// A `burst` pool is capacity borrowed from elsewhere (a training cluster): it is filled last and
/// given back first. A pool that `lends` is Kiln's own capacity on a shared cluster: what it does
/// not hold, down to `minWorkers` (the floor never lent), the cluster's other tenants (training)
/// may use until Kiln takes it back, which takes `provisionSeconds`.
public struct CapacityPool: Hashable, Sendable {
    public enum Kind: String, Hashable, Sendable, Codable { case primary, burst }

    public var name: String
    public var cluster: String
    public var kind: Kind
    public var accelerator: String
    public var gpusPerWorker: Int
    public var minWorkers: Int
    public var maxWorkers: Int
    /// How long the pool's recommended size must stay lower before the pool shrinks to it.
    public var cooldownSeconds: Double
    /// How long a draining worker's running jobs may take before they return to the queue.
    public var drainGraceSeconds: Double
    /// How long a worker asked for takes to arrive (for a lent pool: to take the capacity back). The
    /// controller sizes the pool for the demand it expects that far ahead.
    public var provisionSeconds: Double
    /// Whether the capacity between its size and `maxWorkers` is lent out while Kiln does not need it.
    public var lends: Bool

    public init(
        name: String, cluster: String = "default", kind: Kind = .primary, accelerator: String, gpusPerWorker: Int = 1,
        minWorkers: Int = 0, maxWorkers: Int, cooldownSeconds: Double = 60, drainGraceSeconds: Double = 600,
        provisionSeconds: Double = 0, lends: Bool = false
    ) {
        self.name = name
        self.cluster = cluster
        self.kind = kind
        self.accelerator = accelerator
        self.gpusPerWorker = gpusPerWorker
        self.minWorkers = minWorkers
        self.maxWorkers = maxWorkers
        self.cooldownSeconds = cooldownSeconds
        self.drainGraceSeconds = drainGraceSeconds
        self.provisionSeconds = provisionSeconds
        self.lends = lends
    }
}

/// The work of one model version: what placement places on workers.
public struct Workload: Hashable, Sendable {
    /// The shell's name for it (a model, or a model and version); it keys the controller's memory.
    public var id: String
    /// Accelerator kinds it runs on; empty means any.
    public var accelerators: Set<String>
    /// GPUs one job needs.
    public var gpus: Int
    /// Queued jobs that a worker could take now, per tier (jobs held back by their account's
    /// running cap are not counted: more workers would not start them).
    public var backlog: [Backlog]
    /// Jobs of this workload running (or leased) now.
    public var running: Int
    /// Every job that ever arrived for it: a counter the controller turns into an arrival rate.
    public var arrivals: Int
    /// Measured mean run time per accelerator kind, in seconds; kinds not measured yet use
    /// `defaultRunSeconds`.
    public var runSeconds: [String: Double]
    public var defaultRunSeconds: Double
    /// What a worker spends to switch to it: pulling the version and its `setup`.
    public var switchSeconds: Double

    public init(
        id: String, accelerators: Set<String> = [], gpus: Int = 0, backlog: [Backlog] = [], running: Int = 0, arrivals: Int = 0,
        runSeconds: [String: Double] = [:], defaultRunSeconds: Double, switchSeconds: Double = 0
    ) {
        self.id = id
        self.accelerators = accelerators
        self.gpus = gpus
        self.backlog = backlog
        self.running = running
        self.arrivals = arrivals
        self.runSeconds = runSeconds
        self.defaultRunSeconds = defaultRunSeconds
        self.switchSeconds = switchSeconds
    }

    /// Whether a worker of `pool` can run it.
    public func runs(on pool: CapacityPool) -> Bool {
        (accelerators.isEmpty || accelerators.contains(pool.accelerator)) && gpus <= pool.gpusPerWorker
    }

    /// Seconds one job takes on a worker of `pool`.
    public func runSeconds(on pool: CapacityPool) -> Double {
        max(runSeconds[pool.accelerator] ?? defaultRunSeconds, 0.001)
    }
}

/// Queued jobs of one tier: how many, and how close the oldest is to its promise.
public struct Backlog: Hashable, Sendable {
    public var tier: String
    public var jobs: Int
    /// Seconds since the epoch (the clock of `now`).
    public var oldestQueuedAt: Double
    /// The tier's promised worst-case wait, in seconds.
    public var maxWait: Double

    public init(tier: String, jobs: Int, oldestQueuedAt: Double, maxWait: Double) {
        self.tier = tier
        self.jobs = jobs
        self.oldestQueuedAt = oldestQueuedAt
        self.maxWait = maxWait
    }

    /// Seconds left before the oldest job breaks its promise (negative: broken that long ago).
    public func slack(now: Double) -> Double { oldestQueuedAt + maxWait - now }
}

/// One worker as the controller sees it.
///
///     provisioning ──arrives──▶ active ──drain──▶ draining ──(idle, or grace over: release)──▶ gone
///          └──────────────────── retire (never arrived) ──────────────────────────────────────▶ gone
public struct FleetWorker: Hashable, Sendable {
    public enum State: String, Hashable, Sendable, Codable {
        /// Asked of the provider, not yet registered.
        case provisioning
        /// Registered and taking work.
        case active
        /// Taking nothing new; leaves once its jobs are done or its grace is over.
        case draining
    }

    /// The shell's handle for the worker.
    public var id: Int
    /// Its pool's index in ``FleetState/pools``.
    public var pool: Int
    public var state: State
    /// The workload placement put it on (an index in ``FleetState/workloads``); nil takes any.
    public var assignment: Int?
    /// When its assignment last changed (or when it arrived): no worker moves twice within
    /// ``FleetController/Settings/dwellSeconds``.
    public var assignedAt: Double
    /// Jobs it holds now (leased or running), or a version it is loading.
    public var running: Int
    /// For a draining worker: when its running jobs go back to the queue.
    public var drainDeadline: Double?

    public init(
        id: Int, pool: Int, state: State = .active, assignment: Int? = nil, assignedAt: Double = 0, running: Int = 0,
        drainDeadline: Double? = nil
    ) {
        self.id = id
        self.pool = pool
        self.state = state
        self.assignment = assignment
        self.assignedAt = assignedAt
        self.running = running
        self.drainDeadline = drainDeadline
    }
}
