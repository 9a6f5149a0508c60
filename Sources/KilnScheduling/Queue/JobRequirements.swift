import KilnCore

/// What a job needs of the worker that runs it. Jobs with equal requirements form one class and
/// share a queue per tier.
public struct JobRequirements: Hashable, Sendable {
    public var model: String
    /// A pinned version; nil runs on whichever version of the model the worker serves.
    public var version: String?
    /// Accelerator kinds the job runs on; empty means any.
    public var accelerators: Set<String>
    /// GPUs one replica needs.
    public var gpus: Int

    public init(model: String, version: String? = nil, accelerators: Set<String> = [], gpus: Int = 0) {
        self.model = model
        self.version = version
        self.accelerators = accelerators
        self.gpus = gpus
    }

    /// Whether a worker with this offer can run such a job.
    public func admits(_ worker: WorkerOffer) -> Bool {
        if !accelerators.isEmpty, !accelerators.contains(worker.accelerator) { return false }
        if gpus > worker.gpus { return false }
        if let models = worker.models, !models.contains(model) { return false }
        if let version, let versions = worker.versions, !versions.contains(version) { return false }
        return true
    }
}

/// A worker asking for work: where it is and what it can run.
public struct WorkerOffer: Hashable, Sendable {
    public var cluster: String
    public var accelerator: String
    public var gpus: Int
    /// The models placement has put on this worker; nil takes any model.
    public var models: Set<String>?
    /// The versions this worker serves; nil takes any version.
    public var versions: Set<String>?

    public init(cluster: String, accelerator: String, gpus: Int, models: Set<String>? = nil, versions: Set<String>? = nil) {
        self.cluster = cluster
        self.accelerator = accelerator
        self.gpus = gpus
        self.models = models
        self.versions = versions
    }
}

/// A job waiting for a worker.
public struct QueuedJob: Hashable, Sendable {
    /// Unique and increasing with arrival (the store's sequence); the last tie-breaker.
    public var sequence: Int64
    public var account: AccountID
    public var tier: String
    public var requirements: JobRequirements
    /// Seconds since the epoch; a retried job keeps its first one.
    public var queuedAt: Double

    public init(sequence: Int64, account: AccountID, tier: String, requirements: JobRequirements, queuedAt: Double) {
        self.sequence = sequence
        self.account = account
        self.tier = tier
        self.requirements = requirements
        self.queuedAt = queuedAt
    }
}
