import Foundation

/// The life of a generation:
///
///     queued ──lease──▶ running ──complete──▶ succeeded
///       ▲                 │  └────fail───────▶ failed
///       └─lease expired / retryable failure (attempts < max)
///     queued | running ──cancel──▶ canceled
///
/// A leased job is `running` to its owner from the moment it leaves the queue; the worker's
/// `start` call marks the moment its model begins (``LeaseInfo/startedAt``), which is what the
/// cluster's dispatch limit counts.
public enum GenerationState: String, Hashable, Sendable, Codable, CaseIterable {
    case queued, running, succeeded, failed, canceled

    public var isFinal: Bool {
        switch self {
        case .succeeded, .failed, .canceled: true
        case .queued, .running: false
        }
    }
}

public struct JobProgress: Hashable, Sendable, Codable {
    /// 0…1.
    public var fraction: Double
    public var stage: String

    public init(fraction: Double = 0, stage: String = "") {
        self.fraction = fraction
        self.stage = stage
    }
}

/// Why a generation failed.
public struct JobFailure: Hashable, Sendable, Codable {
    public var code: String
    public var message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }
}

/// A file a generation produced.
public struct OutputFile: Hashable, Sendable, Codable {
    public var fileID: FileID
    public var contentType: String
    public var size: Int64

    public init(fileID: FileID, contentType: String, size: Int64) {
        self.fileID = fileID
        self.contentType = contentType
        self.size = size
    }
}

/// The fencing token of a lease: it grows by one at every lease of the same generation, so a
/// worker that lost its lease can never act on the job again.
public struct FencingToken: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var value: Int64
    public init(_ value: Int64) { self.value = value }
    public init?(_ text: String) {
        guard let value = Int64(text), value > 0 else { return nil }
        self.value = value
    }
    public var description: String { String(value) }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.value < rhs.value }

    /// The token of a job's next lease: larger than `previous` (fencing orders leases by it) by a
    /// random step of up to 2^32, so that no one guesses a lease's token from the job's history.
    /// Two billion leases of one job fit below `Int64.max`.
    public static func next(after previous: FencingToken) -> FencingToken {
        FencingToken(previous.value + 1 + Int64.random(in: 0..<(1 << 32)))
    }
}

/// Who holds a running generation, and until when.
public struct LeaseInfo: Hashable, Sendable {
    public var workerID: WorkerID
    public var cluster: String
    public var token: FencingToken
    public var leasedAt: Date
    public var expiresAt: Date
    /// When the worker began running the model; nil while it only holds the job (prefetching).
    public var startedAt: Date?
    /// Whether the worker has answered for the lease (a heartbeat or a start). A lease that expires
    /// unacknowledged never reached its worker (a long poll whose worker had died): it costs no attempt.
    public var acknowledged: Bool

    public init(
        workerID: WorkerID, cluster: String, token: FencingToken, leasedAt: Date, expiresAt: Date, startedAt: Date? = nil,
        acknowledged: Bool = false
    ) {
        self.acknowledged = acknowledged
        self.workerID = workerID
        self.cluster = cluster
        self.token = token
        self.leasedAt = leasedAt
        self.expiresAt = expiresAt
        self.startedAt = startedAt
    }
}

/// A generation as the store keeps it.
public struct Generation: Hashable, Sendable {
    public var id: GenerationID
    /// The store's insertion order: newest-first listing and the scheduler's tie-breaker.
    public var sequence: Int64
    public var accountID: AccountID
    public var model: String
    public var version: String?
    public var alias: String?
    public var tier: String
    /// Accelerator kinds the model's version runs on (empty: any), from its manifest.
    public var accelerators: [String]
    /// GPUs one replica of the version needs.
    public var gpus: Int
    public var state: GenerationState
    public var input: [String: JSONValue]
    /// Input fields that name files, with the file each names.
    public var inputFiles: [String: FileID]
    public var progress: JobProgress
    public var output: [String: OutputFile]
    public var error: JobFailure?
    /// How many times it has been leased.
    public var attempts: Int
    public var maxAttempts: Int
    /// Leases that expired before their worker acknowledged them (no start, no heartbeat), given
    /// back uncharged; past ``Lifecycle/freeUnacknowledgedLeases`` such expiries are charged.
    public var unacknowledgedLeases: Int = 0
    public var callbackURL: String?
    /// Events besides the final one that go to `callbackURL`: `started`, `progress`.
    public var callbackEvents: [String] = []
    public var createdAt: Date
    /// When it entered the queue; kept across retries, so a retried job keeps its urgency.
    public var queuedAt: Date
    /// When a worker first began running it.
    public var startedAt: Date?
    public var completedAt: Date?
    public var lease: LeaseInfo?

    public init(
        id: GenerationID, sequence: Int64 = 0, accountID: AccountID, model: String, version: String? = nil,
        alias: String? = nil, tier: String, accelerators: [String] = [], gpus: Int = 0, state: GenerationState = .queued,
        input: [String: JSONValue] = [:],
        inputFiles: [String: FileID] = [:], progress: JobProgress = JobProgress(), output: [String: OutputFile] = [:],
        error: JobFailure? = nil, attempts: Int = 0, maxAttempts: Int = 3, callbackURL: String? = nil,
        createdAt: Date, queuedAt: Date? = nil, startedAt: Date? = nil, completedAt: Date? = nil, lease: LeaseInfo? = nil
    ) {
        self.id = id
        self.sequence = sequence
        self.accountID = accountID
        self.model = model
        self.version = version
        self.alias = alias
        self.tier = tier
        self.accelerators = accelerators
        self.gpus = gpus
        self.state = state
        self.input = input
        self.inputFiles = inputFiles
        self.progress = progress
        self.output = output
        self.error = error
        self.attempts = attempts
        self.maxAttempts = maxAttempts
        self.callbackURL = callbackURL
        self.createdAt = createdAt
        self.queuedAt = queuedAt ?? createdAt
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.lease = lease
    }
}

/// One entry of a generation's append-only event log.
public struct GenerationEvent: Hashable, Sendable {
    public enum Kind: String, Hashable, Sendable, Codable {
        case queued, leased, started, progress, requeued, succeeded, failed, canceled
    }

    public var sequence: Int64
    public var generationID: GenerationID
    public var kind: Kind
    public var at: Date
    public var state: GenerationState
    public var progress: JobProgress
    public var message: String?

    public init(
        sequence: Int64, generationID: GenerationID, kind: Kind, at: Date, state: GenerationState, progress: JobProgress,
        message: String? = nil
    ) {
        self.sequence = sequence
        self.generationID = generationID
        self.kind = kind
        self.at = at
        self.state = state
        self.progress = progress
        self.message = message
    }
}
