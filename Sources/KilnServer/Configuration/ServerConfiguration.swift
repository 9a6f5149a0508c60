import Foundation
import KilnCore
import KilnScheduling
import Yams

/// Everything `kiln server --config kiln.yaml` reads (DESIGN §3); every field has a default.
public struct ServerConfiguration: Sendable, Hashable {
    public struct Cluster: Sendable, Hashable {
        /// Leased-but-not-started jobs the cluster may hold.
        public var dispatchLimit: Int
        public init(dispatchLimit: Int) { self.dispatchLimit = dispatchLimit }
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
        public init() {}
    }

    public var tiers: TierTable = .standard
    public var clusters: [String: Cluster] = ["default": Cluster(dispatchLimit: 64)]
    /// For clusters the file does not name.
    public var defaultDispatchLimit: Int = 64
    public var leases = Leases()
    public var limits = Limits()
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
        try top.allow(["tiers", "clusters", "leases", "limits", "scheduler"])
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
                try fields.allow(["dispatch_limit"])
                configuration.clusters[name] = Cluster(dispatchLimit: try fields.int("dispatch_limit") ?? 64)
            }
        }
        if let leases = top["leases"] {
            let fields = try Mapping(leases, path: "\(source): leases")
            try fields.allow(["ttl_seconds", "max_attempts", "heartbeat_seconds"])
            if let value = try fields.double("ttl_seconds") { configuration.leases.ttlSeconds = value }
            if let value = try fields.int("max_attempts") { configuration.leases.maxAttempts = value }
            configuration.leases.heartbeatSeconds = try fields.double("heartbeat_seconds")
        }
        if let limits = top["limits"] {
            let fields = try Mapping(limits, path: "\(source): limits")
            try fields.allow(["max_json_bytes", "max_file_bytes", "max_blob_bytes", "max_lease_wait_seconds"])
            if let value = try fields.int("max_blob_bytes") { configuration.limits.maxBlobBytes = Int64(value) }
            if let value = try fields.int("max_json_bytes") { configuration.limits.maxJSONBytes = value }
            if let value = try fields.int("max_file_bytes") { configuration.limits.maxFileBytes = Int64(value) }
            if let value = try fields.double("max_lease_wait_seconds") { configuration.limits.maxLeaseWaitSeconds = value }
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

    func string(_ key: String) throws -> String? {
        guard let node = self[key] else { return nil }
        guard let value = node.string else { throw KilnError(.invalidInput, "\(path).\(key) must be a string") }
        return value
    }
}
