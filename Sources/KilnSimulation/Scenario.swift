import KilnCore
import KilnScheduling

/// A day of traffic and fleet to replay (the YAML format of `docs/simulator.md`).
///
/// Everything is plain data so that the CLI can read it from YAML or JSON and tests can build it in
/// code. Times are hours from the start of the run unless a field says seconds.
public struct Scenario: Codable, Sendable, Hashable {
    public var name: String
    public var seed: UInt64
    public var durationHours: Double
    /// The wall-clock label of hour 0, for charts (`"09:00"`).
    public var startClock: String?
    /// Tiers, their promises and their shares of the traffic, in priority order.
    public var tiers: [TierSpec]
    public var arrivals: [ArrivalPhase]
    public var bursts: [Burst]
    /// Known arrivals, replayed as they are (a recorded log, or a test's hand-made day).
    public var trace: [TraceJob]
    public var models: [ModelSpec]
    public var clusters: [ClusterSpec]
    public var failures: Failures?
    public var leases: Leases
    /// Seconds between samples of the time series (queue depth, waits).
    public var sampleEverySeconds: Double
    /// What the `protected` policy protects, and its share; by default enterprise and api at 0.9.
    public var protection: ProtectionSpec?
    /// Who sizes the pools and places models: the scenario's scripted `capacity` (manual), or the
    /// fleet controller within each pool's `autoscale` bounds.
    public var fleet: FleetSpec

    public init(
        name: String, seed: UInt64 = 1, durationHours: Double, startClock: String? = nil, tiers: [TierSpec],
        arrivals: [ArrivalPhase], bursts: [Burst] = [], trace: [TraceJob] = [], models: [ModelSpec], clusters: [ClusterSpec],
        failures: Failures? = nil,
        leases: Leases = Leases(), sampleEverySeconds: Double = 600, protection: ProtectionSpec? = nil, fleet: FleetSpec = FleetSpec()
    ) {
        self.name = name
        self.seed = seed
        self.durationHours = durationHours
        self.startClock = startClock
        self.tiers = tiers
        self.arrivals = arrivals
        self.bursts = bursts
        self.trace = trace
        self.models = models
        self.clusters = clusters
        self.failures = failures
        self.leases = leases
        self.sampleEverySeconds = sampleEverySeconds
        self.protection = protection
        self.fleet = fleet
    }

    enum CodingKeys: String, CodingKey {
        case name, seed, tiers, arrivals, bursts, trace, models, clusters, failures, leases, protection, fleet
        case durationHours = "duration_hours"
        case startClock = "start_clock"
        case sampleEverySeconds = "sample_every_seconds"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? 1
        durationHours = try c.decode(Double.self, forKey: .durationHours)
        startClock = try c.decodeIfPresent(String.self, forKey: .startClock)
        tiers = try c.decode([TierSpec].self, forKey: .tiers)
        arrivals = try c.decodeIfPresent([ArrivalPhase].self, forKey: .arrivals) ?? []
        bursts = try c.decodeIfPresent([Burst].self, forKey: .bursts) ?? []
        trace = try c.decodeIfPresent([TraceJob].self, forKey: .trace) ?? []
        models = try c.decode([ModelSpec].self, forKey: .models)
        clusters = try c.decode([ClusterSpec].self, forKey: .clusters)
        failures = try c.decodeIfPresent(Failures.self, forKey: .failures)
        leases = try c.decodeIfPresent(Leases.self, forKey: .leases) ?? Leases()
        sampleEverySeconds = try c.decodeIfPresent(Double.self, forKey: .sampleEverySeconds) ?? 600
        protection = try c.decodeIfPresent(ProtectionSpec.self, forKey: .protection)
        fleet = try c.decodeIfPresent(FleetSpec.self, forKey: .fleet) ?? FleetSpec()
    }

    /// How the fleet is run: `manual` replays each pool's `capacity` and lets any worker take any
    /// model; `controller` runs the fleet controller (placement and autoscaling) every
    /// `tick_seconds` within each pool's `autoscale` bounds.
    public struct FleetSpec: Codable, Sendable, Hashable {
        public enum Mode: String, Codable, Sendable, Hashable, CaseIterable { case manual, controller }

        public var mode: Mode
        public var tickSeconds: Double
        /// The controller's settings (see `FleetController.Settings`); nil keeps its defaults.
        public var headroom: Double?
        public var dwellSeconds: Double?
        public var minimumHorizonSeconds: Double?

        public init(
            mode: Mode = .manual, tickSeconds: Double = 15, headroom: Double? = nil, dwellSeconds: Double? = nil,
            minimumHorizonSeconds: Double? = nil
        ) {
            self.mode = mode
            self.tickSeconds = tickSeconds
            self.headroom = headroom
            self.dwellSeconds = dwellSeconds
            self.minimumHorizonSeconds = minimumHorizonSeconds
        }

        enum CodingKeys: String, CodingKey {
            case mode, headroom
            case tickSeconds = "tick_seconds"
            case dwellSeconds = "dwell_seconds"
            case minimumHorizonSeconds = "minimum_horizon_seconds"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            mode = try c.decodeIfPresent(Mode.self, forKey: .mode) ?? .manual
            tickSeconds = try c.decodeIfPresent(Double.self, forKey: .tickSeconds) ?? 15
            headroom = try c.decodeIfPresent(Double.self, forKey: .headroom)
            dwellSeconds = try c.decodeIfPresent(Double.self, forKey: .dwellSeconds)
            minimumHorizonSeconds = try c.decodeIfPresent(Double.self, forKey: .minimumHorizonSeconds)
        }
    }

    /// The tiers the `protected` policy serves first, and the most of the dispatches they may take
    /// while other tiers wait.
    public struct ProtectionSpec: Codable, Sendable, Hashable {
        public var tiers: [String]
        public var share: Double

        public init(tiers: [String], share: Double) {
            self.tiers = tiers
            self.share = share
        }
    }

    /// `policy` as this scenario runs it: the `protected` policy with the scenario's protection.
    /// - Throws: ``KilnError`` naming a protected tier the scenario does not have, or a bad share.
    public func configured(_ policy: any SchedulingPolicy) throws -> any SchedulingPolicy {
        guard policy.protection != nil else { return policy }
        let spec = protection ?? ProtectionSpec(tiers: ["enterprise", "api"].filter { name in tiers.contains { $0.name == name } }, share: 0.9)
        for name in spec.tiers where !tiers.contains(where: { $0.name == name }) {
            throw KilnError(.invalidInput, "protection.tiers: '\(name)' is not a tier of the scenario")
        }
        return ProtectedPolicy(try Protection(tiers: Set(spec.tiers), share: spec.share))
    }

    /// A tier, its promise, its share of arrivals and how many accounts send them.
    public struct TierSpec: Codable, Sendable, Hashable {
        public var name: String
        public var maxWaitSeconds: Double
        /// Relative weight among tiers (normalised).
        public var share: Double
        public var accounts: Int
        public var maxRunningPerAccount: Int?

        public init(name: String, maxWaitSeconds: Double, share: Double, accounts: Int = 1, maxRunningPerAccount: Int? = nil) {
            self.name = name
            self.maxWaitSeconds = maxWaitSeconds
            self.share = share
            self.accounts = accounts
            self.maxRunningPerAccount = maxRunningPerAccount
        }

        enum CodingKeys: String, CodingKey {
            case name, share, accounts
            case maxWaitSeconds = "max_wait_seconds"
            case maxRunningPerAccount = "max_running_per_account"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            maxWaitSeconds = try c.decode(Double.self, forKey: .maxWaitSeconds)
            share = try c.decode(Double.self, forKey: .share)
            accounts = try c.decodeIfPresent(Int.self, forKey: .accounts) ?? 1
            maxRunningPerAccount = try c.decodeIfPresent(Int.self, forKey: .maxRunningPerAccount)
        }
    }

    /// Arrivals at a constant rate between two hours (a Poisson process).
    public struct ArrivalPhase: Codable, Sendable, Hashable {
        public var fromHours: Double
        public var toHours: Double
        public var perHour: Double

        public init(fromHours: Double, toHours: Double, perHour: Double) {
            self.fromHours = fromHours
            self.toHours = toHours
            self.perHour = perHour
        }

        enum CodingKeys: String, CodingKey {
            case fromHours = "from_hours"
            case toHours = "to_hours"
            case perHour = "per_hour"
        }
    }

    /// `jobs` extra arrivals spread evenly over `overSeconds` from `atHours`.
    public struct Burst: Codable, Sendable, Hashable {
        public var atHours: Double
        public var jobs: Int
        public var overSeconds: Double

        public init(atHours: Double, jobs: Int, overSeconds: Double = 0) {
            self.atHours = atHours
            self.jobs = jobs
            self.overSeconds = overSeconds
        }

        enum CodingKeys: String, CodingKey {
            case jobs
            case atHours = "at_hours"
            case overSeconds = "over_seconds"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            atHours = try c.decode(Double.self, forKey: .atHours)
            jobs = try c.decode(Int.self, forKey: .jobs)
            overSeconds = try c.decodeIfPresent(Double.self, forKey: .overSeconds) ?? 0
        }
    }

    /// One known arrival: when, of which tier and model, and its GPU seconds at speed 1.
    public struct TraceJob: Codable, Sendable, Hashable {
        public var atSeconds: Double
        public var tier: String
        public var model: String
        public var gpuSeconds: Double
        /// Which of the tier's accounts sent it (0-based).
        public var account: Int
        /// Seconds the job had already waited at `atSeconds`: a queue taken from a live server,
        /// whose jobs arrived before the run begins. Its wait, and its share of the promise, count
        /// from then.
        public var waitedSeconds: Double

        public init(atSeconds: Double, tier: String, model: String, gpuSeconds: Double, account: Int = 0, waitedSeconds: Double = 0) {
            self.atSeconds = atSeconds
            self.tier = tier
            self.model = model
            self.gpuSeconds = gpuSeconds
            self.account = account
            self.waitedSeconds = waitedSeconds
        }

        enum CodingKeys: String, CodingKey {
            case tier, model, account
            case atSeconds = "at_seconds"
            case gpuSeconds = "gpu_seconds"
            case waitedSeconds = "waited_seconds"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            atSeconds = try c.decode(Double.self, forKey: .atSeconds)
            tier = try c.decode(String.self, forKey: .tier)
            model = try c.decode(String.self, forKey: .model)
            gpuSeconds = try c.decode(Double.self, forKey: .gpuSeconds)
            account = try c.decodeIfPresent(Int.self, forKey: .account) ?? 0
            waitedSeconds = try c.decodeIfPresent(Double.self, forKey: .waitedSeconds) ?? 0
        }
    }

    public struct ModelSpec: Codable, Sendable, Hashable {
        public var name: String
        /// Relative weight among models (normalised).
        public var share: Double
        /// GPUs one job needs.
        public var gpus: Int
        public var runtime: RunTime
        /// Speed of each accelerator kind relative to the runtime's (2 = twice as fast); kinds not
        /// named cannot run the model. Empty: any kind at speed 1.
        public var acceleratorSpeed: [String: Double]
        /// Seconds a worker spends loading this model when its previous job was another model.
        public var switchSeconds: Double

        public init(
            name: String, share: Double = 1, gpus: Int = 1, runtime: RunTime, acceleratorSpeed: [String: Double] = [:],
            switchSeconds: Double = 0
        ) {
            self.name = name
            self.share = share
            self.gpus = gpus
            self.runtime = runtime
            self.acceleratorSpeed = acceleratorSpeed
            self.switchSeconds = switchSeconds
        }

        enum CodingKeys: String, CodingKey {
            case name, share, gpus, runtime
            case acceleratorSpeed = "accelerator_speed"
            case switchSeconds = "switch_seconds"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            share = try c.decodeIfPresent(Double.self, forKey: .share) ?? 1
            gpus = try c.decodeIfPresent(Int.self, forKey: .gpus) ?? 1
            runtime = try c.decode(RunTime.self, forKey: .runtime)
            acceleratorSpeed = try c.decodeIfPresent([String: Double].self, forKey: .acceleratorSpeed) ?? [:]
            switchSeconds = try c.decodeIfPresent(Double.self, forKey: .switchSeconds) ?? 0
        }
    }

    /// A distribution of GPU seconds per job.
    public struct RunTime: Codable, Sendable, Hashable {
        public enum Kind: String, Codable, Sendable, Hashable {
            case fixed, uniform, exponential, lognormal
        }

        public var distribution: Kind
        public var meanSeconds: Double
        /// For `lognormal` (the spread) and `uniform` (half the width × √3); ignored otherwise.
        public var stddevSeconds: Double

        public init(distribution: Kind, meanSeconds: Double, stddevSeconds: Double = 0) {
            self.distribution = distribution
            self.meanSeconds = meanSeconds
            self.stddevSeconds = stddevSeconds
        }

        enum CodingKeys: String, CodingKey {
            case distribution
            case meanSeconds = "mean_seconds"
            case stddevSeconds = "stddev_seconds"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            distribution = try c.decodeIfPresent(Kind.self, forKey: .distribution) ?? .fixed
            meanSeconds = try c.decode(Double.self, forKey: .meanSeconds)
            stddevSeconds = try c.decodeIfPresent(Double.self, forKey: .stddevSeconds) ?? 0
        }
    }

    public struct ClusterSpec: Codable, Sendable, Hashable {
        public var name: String
        /// Jobs leased but not yet started the cluster may hold (DESIGN §4).
        public var dispatchLimit: Int
        /// Seconds from lease to start: fetching inputs, handing the job to the runtime.
        public var startDelaySeconds: Double
        public var pools: [PoolSpec]

        public init(name: String, dispatchLimit: Int = 64, startDelaySeconds: Double = 0, pools: [PoolSpec]) {
            self.name = name
            self.dispatchLimit = dispatchLimit
            self.startDelaySeconds = startDelaySeconds
            self.pools = pools
        }

        enum CodingKeys: String, CodingKey {
            case name, pools
            case dispatchLimit = "dispatch_limit"
            case startDelaySeconds = "start_delay_seconds"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            dispatchLimit = try c.decodeIfPresent(Int.self, forKey: .dispatchLimit) ?? 64
            startDelaySeconds = try c.decodeIfPresent(Double.self, forKey: .startDelaySeconds) ?? 0
            pools = try c.decode([PoolSpec].self, forKey: .pools)
        }
    }

    /// Workers of one kind. A burst pool (a training cluster lent for the peak) is used last and
    /// given back first; when its capacity drops, busy workers finish their job, then leave.
    public struct PoolSpec: Codable, Sendable, Hashable {
        public enum Kind: String, Codable, Sendable, Hashable { case primary, burst }

        public var name: String
        public var kind: Kind
        public var accelerator: String
        public var gpusPerWorker: Int
        /// The number of workers over time, under the `manual` fleet.
        public var capacity: [CapacityStep]
        /// The pool's bounds under the `controller` fleet.
        public var autoscale: Autoscale?

        public init(
            name: String, kind: Kind = .primary, accelerator: String, gpusPerWorker: Int = 1, capacity: [CapacityStep] = [],
            autoscale: Autoscale? = nil
        ) {
            self.name = name
            self.kind = kind
            self.accelerator = accelerator
            self.gpusPerWorker = gpusPerWorker
            self.capacity = capacity
            self.autoscale = autoscale
        }

        enum CodingKeys: String, CodingKey {
            case name, kind, accelerator, capacity, autoscale
            case gpusPerWorker = "gpus_per_worker"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            kind = try c.decodeIfPresent(Kind.self, forKey: .kind) ?? .primary
            accelerator = try c.decode(String.self, forKey: .accelerator)
            gpusPerWorker = try c.decodeIfPresent(Int.self, forKey: .gpusPerWorker) ?? 1
            capacity = try c.decodeIfPresent([CapacityStep].self, forKey: .capacity) ?? []
            autoscale = try c.decodeIfPresent(Autoscale.self, forKey: .autoscale)
        }
    }

    /// A pool's bounds and timing under the fleet controller.
    public struct Autoscale: Codable, Sendable, Hashable {
        public var minWorkers: Int
        public var maxWorkers: Int
        /// How long the pool's recommended size must stay lower before it shrinks.
        public var cooldownSeconds: Double
        /// How long new capacity takes to arrive once asked for: seconds for local processes, a
        /// queue wait on a training cluster, minutes for cloud nodes.
        public var provisionSeconds: Double
        /// How long a drained worker's running job may take before it returns to the queue.
        public var drainGraceSeconds: Double
        /// Whether the pool lends what it does not hold, above `min_workers`, to a training cluster
        /// sharing its GPUs; taking it back takes `provision_seconds` (the training jobs are
        /// preempted).
        public var lend: Bool

        public init(
            minWorkers: Int = 0, maxWorkers: Int, cooldownSeconds: Double = 300, provisionSeconds: Double = 0,
            drainGraceSeconds: Double = 600, lend: Bool = false
        ) {
            self.minWorkers = minWorkers
            self.maxWorkers = maxWorkers
            self.cooldownSeconds = cooldownSeconds
            self.provisionSeconds = provisionSeconds
            self.drainGraceSeconds = drainGraceSeconds
            self.lend = lend
        }

        enum CodingKeys: String, CodingKey {
            case minWorkers = "min_workers"
            case maxWorkers = "max_workers"
            case cooldownSeconds = "cooldown_seconds"
            case provisionSeconds = "provision_seconds"
            case drainGraceSeconds = "drain_grace_seconds"
            case lend
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            minWorkers = try c.decodeIfPresent(Int.self, forKey: .minWorkers) ?? 0
            maxWorkers = try c.decode(Int.self, forKey: .maxWorkers)
            cooldownSeconds = try c.decodeIfPresent(Double.self, forKey: .cooldownSeconds) ?? 300
            provisionSeconds = try c.decodeIfPresent(Double.self, forKey: .provisionSeconds) ?? 0
            drainGraceSeconds = try c.decodeIfPresent(Double.self, forKey: .drainGraceSeconds) ?? 600
            lend = try c.decodeIfPresent(Bool.self, forKey: .lend) ?? false
        }
    }

    /// From `atHours`, the pool has `workers` workers; with `overHours`, it gets there linearly from
    /// the level before.
    public struct CapacityStep: Codable, Sendable, Hashable {
        public var atHours: Double
        public var workers: Int
        public var overHours: Double

        public init(atHours: Double, workers: Int, overHours: Double = 0) {
            self.atHours = atHours
            self.workers = workers
            self.overHours = overHours
        }

        enum CodingKeys: String, CodingKey {
            case workers
            case atHours = "at_hours"
            case overHours = "over_hours"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            atHours = try c.decode(Double.self, forKey: .atHours)
            workers = try c.decode(Int.self, forKey: .workers)
            overHours = try c.decodeIfPresent(Double.self, forKey: .overHours) ?? 0
        }
    }

    /// Workers die while running a job: its lease expires after the TTL and the job is retried.
    public struct Failures: Codable, Sendable, Hashable {
        /// Mean GPU-busy hours between failures of one worker.
        public var meanHoursBetweenFailures: Double
        /// Seconds a failed worker is gone before it returns.
        public var recoverySeconds: Double

        public init(meanHoursBetweenFailures: Double, recoverySeconds: Double) {
            self.meanHoursBetweenFailures = meanHoursBetweenFailures
            self.recoverySeconds = recoverySeconds
        }

        enum CodingKeys: String, CodingKey {
            case meanHoursBetweenFailures = "mean_hours_between_failures"
            case recoverySeconds = "recovery_seconds"
        }
    }

    public struct Leases: Codable, Sendable, Hashable {
        public var ttlSeconds: Double
        public var maxAttempts: Int

        public init(ttlSeconds: Double = 30, maxAttempts: Int = 3) {
            self.ttlSeconds = ttlSeconds
            self.maxAttempts = maxAttempts
        }

        enum CodingKeys: String, CodingKey {
            case ttlSeconds = "ttl_seconds"
            case maxAttempts = "max_attempts"
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            ttlSeconds = try c.decodeIfPresent(Double.self, forKey: .ttlSeconds) ?? 30
            maxAttempts = try c.decodeIfPresent(Int.self, forKey: .maxAttempts) ?? 3
        }
    }
}
