import Foundation
import KilnCore
import KilnFleet
import KilnScheduling
import Yams

/// Everything `kiln server --config kiln.yaml` reads (DESIGN §3); every field has a default.
public struct ServerConfiguration: Sendable, Hashable {
    public struct Cluster: Sendable, Hashable {
        /// Leased-but-not-started jobs the cluster may hold.
        public var dispatchLimit: Int
        public init(dispatchLimit: Int) { self.dispatchLimit = dispatchLimit }
    }

    /// A capacity pool (DESIGN §5): its bounds for the fleet controller, and who acts on them.
    public struct Pool: Sendable, Hashable {
        public enum Provider: String, Sendable, Hashable, CaseIterable {
            /// Workers started by hand: the controller places models on them but never changes
            /// their number.
            case `static`
            /// `kiln worker` processes on this machine, started and stopped by the server.
            case local
            /// `kiln worker` jobs on a Slurm cluster (a training cluster lending its GPUs).
            case slurm
            /// The pods of a Deployment that run `kiln worker`, scaled through its `scale`
            /// subresource.
            case kubernetes
        }

        /// Where a `kubernetes` pool's workers run.
        public struct Kubernetes: Sendable, Hashable {
            /// The Deployment (in the configured namespace) whose replicas are the pool's workers.
            public var deployment: String
            public init(deployment: String) { self.deployment = deployment }
        }

        /// Where a `slurm` pool's workers run.
        public struct Slurm: Sendable, Hashable {
            /// The partition its jobs are submitted to.
            public var partition: String
            /// CPUs each worker job asks for.
            public var cpusPerTask: Int = 1
            /// The jobs' time limit, if the partition needs one; Slurm signals the worker to drain
            /// the pool's drain grace before it.
            public var timeLimitMinutes: Int?

            public init(partition: String, cpusPerTask: Int = 1, timeLimitMinutes: Int? = nil) {
                self.partition = partition
                self.cpusPerTask = cpusPerTask
                self.timeLimitMinutes = timeLimitMinutes
            }
        }

        public var provider: Provider
        public var spec: CapacityPool
        /// For a `slurm` pool.
        public var slurm: Slurm?
        /// For a `kubernetes` pool.
        public var kubernetes: Kubernetes?

        public init(provider: Provider, spec: CapacityPool, slurm: Slurm? = nil, kubernetes: Kubernetes? = nil) {
            self.provider = provider
            self.spec = spec
            self.slurm = provider == .slurm ? slurm ?? Slurm(partition: spec.name) : slurm
            self.kubernetes = provider == .kubernetes ? kubernetes ?? Kubernetes(deployment: spec.name) : kubernetes
        }
    }

    /// How this server reaches a Slurm cluster (`slurm` pools).
    public struct SlurmAccess: Sendable, Hashable {
        /// The `kiln` program as the cluster's nodes see it; nil: this server's own.
        public var program: String?
        /// A folder this server and the nodes share, for the job scripts, their logs, the worker
        /// key and the workers' caches; nil: `DATA/slurm`.
        public var folder: String?
        /// This server's URL as the nodes reach it; nil: the address it listens on.
        public var serverURL: String?
        public init() {}
    }

    /// How this server reaches a Kubernetes API server (`kubernetes` pools); each field unset is
    /// taken from the pod this server runs in (its service account and environment).
    public struct KubernetesAccess: Sendable, Hashable {
        public var apiServer: String?
        public var namespace: String?
        public var tokenFile: String?
        public var caFile: String?
        public init() {}
    }

    /// How often the fleet controller decides, and its settings.
    public struct Fleet: Sendable, Hashable {
        public var tickSeconds: Double = 5
        public var controller = FleetController.Settings()
        public init() {}
    }

    public struct Leases: Sendable, Hashable {
        public var ttlSeconds: Double = 30
        public var maxAttempts: Int = 3
        /// How often workers are told to heartbeat: a third of the TTL unless set.
        public var heartbeatSeconds: Double?
        public var effectiveHeartbeatSeconds: Double { heartbeatSeconds ?? ttlSeconds / 3 }
        public init() {}
    }

    public struct Limits: Sendable, Hashable {
        /// Largest JSON request body.
        public var maxJSONBytes: Int = 1 << 20
        /// Largest uploaded file (inputs and outputs).
        public var maxFileBytes: Int64 = 2 << 30
        /// Largest model blob (a checkpoint file or a packed environment).
        public var maxBlobBytes: Int64 = 256 << 30
        /// Longest lease long-poll.
        public var maxLeaseWaitSeconds: Double = 60
        /// A connection with no request in progress (idle between requests, or holding a request
        /// head it never finishes) is closed after this long; longer than HTTP clients' own idle
        /// limit (60 s for AsyncHTTPClient), so that they close first.
        public var idleTimeoutSeconds: Double = 90
        /// Bytes of uploads one account may hold; past it an upload gets `413`.
        public var maxAccountFileBytes: Int64 = 10 << 30
        /// Files (uploads and outputs) are deleted this many hours after they were written, unless
        /// a queued or running generation needs them; 0 keeps them until deleted.
        public var fileRetentionHours: Double = 168
        public init() {}
    }

    public var tiers: TierTable = .standard
    /// Seconds files are kept after they were written (`limits.file_retention_hours`); nil: kept.
    public var fileRetention: Double? { limits.fileRetentionHours > 0 ? limits.fileRetentionHours * 3_600 : nil }
    public var clusters: [String: Cluster] = ["default": Cluster(dispatchLimit: 64)]
    /// Capacity pools, in the order the file lists them (under `clusters.NAME.pools`). None: the
    /// fleet is whatever workers register, and any worker takes any model.
    public var pools: [Pool] = []
    public var fleet = Fleet()
    public var slurm = SlurmAccess()
    public var kubernetes = KubernetesAccess()
    /// For clusters the file does not name.
    public var defaultDispatchLimit: Int = 64
    public var leases = Leases()
    public var limits = Limits()
    public var webhooks = Webhooks()
    /// When set, `GET /metrics` needs it as a bearer token (`metrics.token`); open otherwise.
    public var metricsToken: String?
    public var replicas = Replicas()

    /// Several servers on one store (`replicas`): they elect a leader through the store, which
    /// runs the scheduler; the others forward the API to it.
    public struct Replicas: Sendable, Hashable {
        /// Whether this server elects a leader with the others on its store. Off, it leads alone.
        public var enabled = false
        /// How long the leader's lease runs unless renewed (renewed every third of it): the most a
        /// dead leader's successor waits, and so the longest pause in dispatching at a failover.
        public var leaseSeconds: Double = 10
        public init() {}
    }

    /// Delivery of generations' events to their `callback_url`s.
    public struct Webhooks: Sendable, Hashable {
        /// Whether callback URLs may name loopback, link-local and private addresses (a receiver
        /// inside the operator's network; tests).
        public var allowPrivateURLs = false
        /// The most one attempt may take, connection included.
        public var timeoutSeconds: Double = 10
        /// Attempts in flight at once, across receivers.
        public var maxInFlight = 32
        public init() {}
    }
    /// `slo` (the default), `fifo`, `strict`, `edf` or `protected`.
    public var policy: String = "slo"
    /// Under `protected`: the tiers served first, and the most of the dispatches they may take while
    /// other tiers wait (`scheduler.protected_tiers`, `scheduler.protected_share`).
    public var protection = ProtectedPolicy.standard.protection!

    public init() {}

    /// Reads a YAML configuration. Unknown keys and bad values are errors that name the key.
    public static func load(yaml text: String, source: String = "configuration") throws -> ServerConfiguration {
        var configuration = ServerConfiguration()
        guard let root = try Yams.compose(yaml: text) else { return configuration }
        let top = try Mapping(root, path: source)
        try top.allow(["tiers", "clusters", "leases", "limits", "scheduler", "fleet", "slurm", "kubernetes", "webhooks", "metrics", "replicas"])
        if let replicas = top["replicas"] {
            let fields = try Mapping(replicas, path: "\(source): replicas")
            try fields.allow(["enabled", "lease_seconds"])
            if let value = try fields.bool("enabled") { configuration.replicas.enabled = value }
            if let value = try fields.double("lease_seconds") {
                guard value >= 1, value <= 300 else {
                    throw KilnError(.invalidInput, "\(source): replicas.lease_seconds must be from 1 to 300")
                }
                configuration.replicas.leaseSeconds = value
            }
        }
        if let metrics = top["metrics"] {
            let fields = try Mapping(metrics, path: "\(source): metrics")
            try fields.allow(["token"])
            configuration.metricsToken = try fields.string("token")
        }
        if let webhooks = top["webhooks"] {
            let fields = try Mapping(webhooks, path: "\(source): webhooks")
            try fields.allow(["allow_private_urls", "timeout_seconds", "max_in_flight"])
            if let value = try fields.bool("allow_private_urls") { configuration.webhooks.allowPrivateURLs = value }
            if let value = try fields.double("timeout_seconds") {
                guard value <= 300 else { throw KilnError(.invalidInput, "\(source): webhooks.timeout_seconds must be at most 300") }
                configuration.webhooks.timeoutSeconds = value
            }
            if let value = try fields.int("max_in_flight") { configuration.webhooks.maxInFlight = value }
        }
        if let tiers = top["tiers"] {
            let mapping = try Mapping(tiers, path: "\(source): tiers")
            var list: [Tier] = []
            for (name, node) in mapping.entries {
                let fields = try Mapping(node, path: "\(source): tiers.\(name)")
                try fields.allow(["max_wait_seconds", "max_queued_per_account", "max_running_per_account", "max_queued"])
                var tier = TierTable.standard[name] ?? Tier(name: name, maxWait: 0)
                if let value = try fields.double("max_wait_seconds") { tier.maxWait = value }
                guard tier.maxWait > 0 else {
                    throw KilnError(.invalidInput, "\(source): tiers.\(name).max_wait_seconds is required and must be positive")
                }
                if let value = try fields.int("max_queued_per_account") { tier.maxQueuedPerAccount = value }
                if let value = try fields.int("max_running_per_account") { tier.maxRunningPerAccount = value }
                if let value = try fields.int("max_queued") { tier.maxQueued = value }
                list.append(tier)
            }
            configuration.tiers = try TierTable(list)
        }
        if let clusters = top["clusters"] {
            let mapping = try Mapping(clusters, path: "\(source): clusters")
            configuration.clusters = [:]
            for (name, node) in mapping.entries {
                let fields = try Mapping(node, path: "\(source): clusters.\(name)")
                try fields.allow(["dispatch_limit", "pools"])
                configuration.clusters[name] = Cluster(dispatchLimit: try fields.int("dispatch_limit") ?? 64)
                if let pools = fields["pools"] {
                    for (poolName, poolNode) in try Mapping(pools, path: "\(source): clusters.\(name).pools").entries {
                        guard !configuration.pools.contains(where: { $0.spec.name == poolName }) else {
                            throw KilnError(.invalidInput, "\(source): clusters.\(name).pools.\(poolName): a pool of that name exists already")
                        }
                        configuration.pools.append(
                            try Self.pool(poolName, cluster: name, node: poolNode, path: "\(source): clusters.\(name).pools.\(poolName)"))
                    }
                }
            }
        }
        if let slurm = top["slurm"] {
            let fields = try Mapping(slurm, path: "\(source): slurm")
            try fields.allow(["program", "folder", "server_url"])
            configuration.slurm.program = try fields.string("program")
            configuration.slurm.folder = try fields.string("folder")
            configuration.slurm.serverURL = try fields.string("server_url")
        }
        if let kubernetes = top["kubernetes"] {
            let fields = try Mapping(kubernetes, path: "\(source): kubernetes")
            try fields.allow(["api_server", "namespace", "token_file", "ca_file"])
            configuration.kubernetes.apiServer = try fields.string("api_server")
            configuration.kubernetes.namespace = try fields.string("namespace")
            configuration.kubernetes.tokenFile = try fields.string("token_file")
            configuration.kubernetes.caFile = try fields.string("ca_file")
        }
        if let fleet = top["fleet"] {
            let fields = try Mapping(fleet, path: "\(source): fleet")
            try fields.allow(["tick_seconds", "headroom", "dwell_seconds", "minimum_horizon_seconds", "rate_window_seconds"])
            if let value = try fields.double("tick_seconds") { configuration.fleet.tickSeconds = value }
            if let value = try fields.double("headroom") { configuration.fleet.controller.headroom = value }
            if let value = try fields.count("dwell_seconds") { configuration.fleet.controller.dwellSeconds = Double(value) }
            if let value = try fields.double("minimum_horizon_seconds") { configuration.fleet.controller.minimumHorizonSeconds = value }
            if let value = try fields.double("rate_window_seconds") { configuration.fleet.controller.rateWindowSeconds = value }
        }
        if let leases = top["leases"] {
            let fields = try Mapping(leases, path: "\(source): leases")
            try fields.allow(["ttl_seconds", "max_attempts", "heartbeat_seconds"])
            if let value = try fields.double("ttl_seconds") { configuration.leases.ttlSeconds = value }
            if let value = try fields.int("max_attempts") { configuration.leases.maxAttempts = value }
            configuration.leases.heartbeatSeconds = try fields.double("heartbeat_seconds")
            let leases = configuration.leases
            guard leases.effectiveHeartbeatSeconds < leases.ttlSeconds else {
                throw KilnError(
                    .invalidInput,
                    "\(source): leases.heartbeat_seconds (\(leases.effectiveHeartbeatSeconds)) must be below ttl_seconds (\(leases.ttlSeconds)), or every lease expires between heartbeats")
            }
        }
        if let limits = top["limits"] {
            let fields = try Mapping(limits, path: "\(source): limits")
            try fields.allow([
                "max_json_bytes", "max_file_bytes", "max_blob_bytes", "max_lease_wait_seconds", "idle_timeout_seconds",
                "max_account_file_bytes", "file_retention_hours",
            ])
            if let value = try fields.int("max_blob_bytes") { configuration.limits.maxBlobBytes = Int64(value) }
            if let value = try fields.int("max_json_bytes") { configuration.limits.maxJSONBytes = value }
            if let value = try fields.int("max_file_bytes") { configuration.limits.maxFileBytes = Int64(value) }
            if let value = try fields.double("max_lease_wait_seconds") { configuration.limits.maxLeaseWaitSeconds = value }
            if let value = try fields.double("idle_timeout_seconds") { configuration.limits.idleTimeoutSeconds = value }
            if let value = try fields.int("max_account_file_bytes") { configuration.limits.maxAccountFileBytes = Int64(value) }
            if let value = try fields.count("file_retention_hours") { configuration.limits.fileRetentionHours = Double(value) }
        }
        if let scheduler = top["scheduler"] {
            let fields = try Mapping(scheduler, path: "\(source): scheduler")
            try fields.allow(["policy", "default_dispatch_limit", "protected_tiers", "protected_share"])
            if let value = try fields.string("policy") { configuration.policy = value }
            if let value = try fields.int("default_dispatch_limit") { configuration.defaultDispatchLimit = value }
            if fields["protected_tiers"] != nil || fields["protected_share"] != nil, configuration.policy != "protected" {
                throw KilnError(
                    .invalidInput, "\(source): scheduler.protected_tiers and protected_share apply only to policy 'protected'")
            }
            if let node = fields["protected_tiers"] {
                guard let names = node.sequence?.map({ $0.string }), let tiers = names as? [String] else {
                    throw KilnError(.invalidInput, "\(source): scheduler.protected_tiers must be a list of tier names")
                }
                for name in tiers where configuration.tiers[name] == nil {
                    throw KilnError(
                        .invalidInput,
                        "\(source): scheduler.protected_tiers: '\(name)' is not one of \(configuration.tiers.names.joined(separator: ", "))")
                }
                configuration.protection.tiers = Set(tiers)
            }
            if let node = fields["protected_share"] {
                guard let share = node.float else {
                    throw KilnError(.invalidInput, "\(source): scheduler.protected_share must be a number from 0 to below 1")
                }
                configuration.protection = try Protection(tiers: configuration.protection.tiers, share: share)
            }
        }
        _ = try configuration.schedulingPolicy()
        return configuration
    }

    private static func pool(_ name: String, cluster: String, node: Node, path: String) throws -> Pool {
        let fields = try Mapping(node, path: path)
        try fields.allow([
            "provider", "kind", "accelerator", "gpus_per_worker", "min_workers", "max_workers", "cooldown_seconds", "drain_grace_seconds",
            "provision_seconds", "lend", "partition", "cpus_per_task", "time_limit_minutes", "deployment",
        ])
        let providerName = try fields.string("provider") ?? "static"
        guard let provider = Pool.Provider(rawValue: providerName) else {
            throw KilnError(
                .invalidInput,
                "\(path).provider: '\(providerName)' is not one of \(Pool.Provider.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let kindName = try fields.string("kind") ?? "primary"
        guard let kind = CapacityPool.Kind(rawValue: kindName) else {
            throw KilnError(.invalidInput, "\(path).kind: '\(kindName)' is not primary or burst")
        }
        let minimum = try fields.count("min_workers") ?? 0
        let maximum = try fields.count("max_workers") ?? max(minimum, 1)
        guard maximum >= minimum else {
            throw KilnError(.invalidInput, "\(path): max_workers (\(maximum)) is below min_workers (\(minimum))")
        }
        let lend = try fields.bool("lend") ?? false
        guard !lend || provider == .slurm || provider == .kubernetes else {
            throw KilnError(
                .invalidInput, "\(path).lend: only a pool on a shared cluster (provider slurm or kubernetes) can lend what it does not hold")
        }
        guard !lend || kind == .primary else {
            throw KilnError(.invalidInput, "\(path).lend: a burst pool is borrowed capacity; only a primary pool lends")
        }
        let spec = CapacityPool(
            name: name, cluster: cluster, kind: kind, accelerator: try fields.string("accelerator") ?? "cpu",
            gpusPerWorker: try fields.count("gpus_per_worker") ?? 0, minWorkers: minimum, maxWorkers: maximum,
            cooldownSeconds: Double(try fields.count("cooldown_seconds") ?? 300),
            drainGraceSeconds: Double(try fields.count("drain_grace_seconds") ?? 600),
            provisionSeconds: Double(try fields.count("provision_seconds") ?? 0), lends: lend)
        let partition = try fields.string("partition")
        let cpus = try fields.int("cpus_per_task")
        let limit = try fields.int("time_limit_minutes")
        guard provider == .slurm || (partition == nil && cpus == nil && limit == nil) else {
            throw KilnError(.invalidInput, "\(path): partition, cpus_per_task and time_limit_minutes apply only to provider 'slurm'")
        }
        let slurm = Pool.Slurm(partition: partition ?? name, cpusPerTask: cpus ?? 1, timeLimitMinutes: limit)
        let deployment = try fields.string("deployment")
        guard provider == .kubernetes || deployment == nil else {
            throw KilnError(.invalidInput, "\(path): deployment applies only to provider 'kubernetes'")
        }
        return Pool(
            provider: provider, spec: spec, slurm: provider == .slurm ? slurm : nil,
            kubernetes: provider == .kubernetes ? Pool.Kubernetes(deployment: deployment ?? name) : nil)
    }

    public func schedulingPolicy() throws -> any SchedulingPolicy {
        policy == "protected" ? ProtectedPolicy(protection) : try SchedulingPolicies.named(policy)
    }
}

/// A YAML mapping with the checks every section needs, its errors naming the key at fault.
private struct Mapping {
    let entries: [(String, Node)]
    let path: String

    init(_ node: Node, path: String) throws {
        guard let mapping = node.mapping else { throw KilnError(.invalidInput, "\(path) must be a mapping") }
        self.entries = mapping.map { ($0.key.string ?? "", $0.value) }
        self.path = path
    }

    subscript(key: String) -> Node? { entries.first(where: { $0.0 == key })?.1 }

    func allow(_ keys: Set<String>) throws {
        for (key, _) in entries where !keys.contains(key) {
            throw KilnError(.invalidInput, "\(path): unknown key '\(key)'; expected one of \(keys.sorted().joined(separator: ", "))")
        }
    }

    func double(_ key: String) throws -> Double? {
        guard let node = self[key] else { return nil }
        guard let value = node.float, value.isFinite, value > 0 else {
            throw KilnError(.invalidInput, "\(path).\(key) must be a positive number")
        }
        return value
    }

    func int(_ key: String) throws -> Int? {
        guard let node = self[key] else { return nil }
        guard let value = node.int, value >= 1 else {
            throw KilnError(.invalidInput, "\(path).\(key) must be a whole number of at least 1")
        }
        return value
    }

    /// A whole number of at least 0.
    func count(_ key: String) throws -> Int? {
        guard let node = self[key] else { return nil }
        guard let value = node.int, value >= 0 else {
            throw KilnError(.invalidInput, "\(path).\(key) must be a whole number of at least 0")
        }
        return value
    }

    func bool(_ key: String) throws -> Bool? {
        guard let node = self[key] else { return nil }
        guard let value = node.bool else { throw KilnError(.invalidInput, "\(path).\(key) must be true or false") }
        return value
    }

    func string(_ key: String) throws -> String? {
        guard let node = self[key] else { return nil }
        guard let value = node.string else { throw KilnError(.invalidInput, "\(path).\(key) must be a string") }
        return value
    }
}
