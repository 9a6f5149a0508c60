import Foundation
import KilnCore

// The JSON bodies of the HTTP API (v1), as `Resources/openapi.yaml` in KilnServer documents them.
// Field names are snake_case on the wire; times are RFC 3339.

/// `{"error": {"code": "...", "message": "..."}}`
public struct ErrorBody: Codable, Sendable, Hashable {
    public struct Detail: Codable, Sendable, Hashable {
        public var code: String
        public var message: String

        public init(code: String, message: String) {
            self.code = code
            self.message = message
        }
    }

    public var error: Detail

    public init(code: String, message: String) {
        self.error = Detail(code: code, message: message)
    }
}

/// A request body whose fields are checked by name before decoding, so that a misspelt field is
/// named in the error instead of silently ignored.
public protocol WireRequest: Codable, Sendable {
    static var fields: Set<String> { get }
}

// MARK: - Files

public struct FileObject: Codable, Sendable, Hashable {
    public var id: FileID
    public var size: Int64
    public var sha256: String
    public var contentType: String
    public var createdAt: Date

    enum CodingKeys: String, CodingKey {
        case id, size, sha256
        case contentType = "content_type"
        case createdAt = "created_at"
    }

    public init(id: FileID, size: Int64, sha256: String, contentType: String, createdAt: Date) {
        self.id = id
        self.size = size
        self.sha256 = sha256
        self.contentType = contentType
        self.createdAt = createdAt
    }
}

// MARK: - Generations

public struct CreateGenerationRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["model", "alias", "version", "input", "callback_url"]
    public var model: String
    public var alias: String?
    public var version: String?
    public var input: [String: JSONValue]
    public var callbackURL: String?

    enum CodingKeys: String, CodingKey {
        case model, alias, version, input
        case callbackURL = "callback_url"
    }

    public init(model: String, alias: String? = nil, version: String? = nil, input: [String: JSONValue] = [:], callbackURL: String? = nil) {
        self.model = model
        self.alias = alias
        self.version = version
        self.input = input
        self.callbackURL = callbackURL
    }
}

public struct ProgressObject: Codable, Sendable, Hashable {
    public var fraction: Double
    public var stage: String

    public init(fraction: Double, stage: String) {
        self.fraction = fraction
        self.stage = stage
    }
}

public struct QueueInfo: Codable, Sendable, Hashable {
    /// Jobs the scheduler would dispatch before this one now.
    public var position: Int
    /// Estimated seconds until dispatch, from recent throughput; absent before any was measured.
    public var etaSeconds: Double?
    /// `queued_at + max_wait_seconds` of the tier: the promised latest dispatch.
    public var deadline: Date

    enum CodingKeys: String, CodingKey {
        case position, deadline
        case etaSeconds = "eta_seconds"
    }

    public init(position: Int, etaSeconds: Double?, deadline: Date) {
        self.position = position
        self.etaSeconds = etaSeconds
        self.deadline = deadline
    }
}

public struct OutputObject: Codable, Sendable, Hashable {
    public var fileID: FileID
    public var contentType: String
    public var size: Int64

    enum CodingKeys: String, CodingKey {
        case fileID = "file_id"
        case contentType = "content_type"
        case size
    }

    public init(fileID: FileID, contentType: String, size: Int64) {
        self.fileID = fileID
        self.contentType = contentType
        self.size = size
    }
}

public struct GenerationObject: Codable, Sendable, Hashable {
    public var id: GenerationID
    public var model: String
    public var version: String?
    public var alias: String?
    public var state: GenerationState
    public var tier: String
    public var input: [String: JSONValue]
    public var progress: ProgressObject
    public var queue: QueueInfo?
    public var output: [String: OutputObject]
    public var error: ErrorBody.Detail?
    public var attempts: Int
    public var createdAt: Date
    public var startedAt: Date?
    public var completedAt: Date?

    enum CodingKeys: String, CodingKey {
        case id, model, version, alias, state, tier, input, progress, queue, output, error, attempts
        case createdAt = "created_at"
        case startedAt = "started_at"
        case completedAt = "completed_at"
    }

    public init(
        id: GenerationID, model: String, version: String?, alias: String?, state: GenerationState, tier: String,
        input: [String: JSONValue], progress: ProgressObject, queue: QueueInfo?, output: [String: OutputObject],
        error: ErrorBody.Detail?, attempts: Int, createdAt: Date, startedAt: Date?, completedAt: Date?
    ) {
        self.id = id
        self.model = model
        self.version = version
        self.alias = alias
        self.state = state
        self.tier = tier
        self.input = input
        self.progress = progress
        self.queue = queue
        self.output = output
        self.error = error
        self.attempts = attempts
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.completedAt = completedAt
    }
}

public struct GenerationList: Codable, Sendable, Hashable {
    public var data: [GenerationObject]
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    public var nextCursor: String?

    enum CodingKeys: String, CodingKey {
        case data
        case nextCursor = "next_cursor"
    }

    public init(data: [GenerationObject], nextCursor: String?) {
        self.data = data
        self.nextCursor = nextCursor
    }
}

/// One server-sent event of `GET /v1/generations/{id}/events` (the `data:` line).
public struct GenerationEventObject: Codable, Sendable, Hashable {
    public var sequence: Int64
    public var kind: String
    public var state: GenerationState
    public var progress: ProgressObject
    public var message: String?
    public var at: Date

    public init(sequence: Int64, kind: String, state: GenerationState, progress: ProgressObject, message: String?, at: Date) {
        self.sequence = sequence
        self.kind = kind
        self.state = state
        self.progress = progress
        self.message = message
        self.at = at
    }
}

// MARK: - Models

public struct ModelObject: Codable, Sendable, Hashable {
    public var name: String
    public var description: String
    /// The input schema of the version `production` points at (or of the model when it has none).
    public var inputSchema: JSONValue?
    public var aliases: [AliasObject]
    public var createdAt: Date

    enum CodingKeys: String, CodingKey {
        case name, description, aliases
        case inputSchema = "input_schema"
        case createdAt = "created_at"
    }

    public init(name: String, description: String, inputSchema: JSONValue?, aliases: [AliasObject] = [], createdAt: Date) {
        self.name = name
        self.description = description
        self.inputSchema = inputSchema
        self.aliases = aliases
        self.createdAt = createdAt
    }
}

// MARK: - Model repository

public struct AliasTargetObject: Codable, Sendable, Hashable {
    public var version: Digest
    public var weight: Int

    public init(version: Digest, weight: Int) {
        self.version = version
        self.weight = weight
    }
}

public struct AliasObject: Codable, Sendable, Hashable {
    public var name: String
    public var targets: [AliasTargetObject]
    public var updatedAt: Date

    enum CodingKeys: String, CodingKey {
        case name, targets
        case updatedAt = "updated_at"
    }

    public init(name: String, targets: [AliasTargetObject], updatedAt: Date) {
        self.name = name
        self.targets = targets
        self.updatedAt = updatedAt
    }
}

public struct AliasChangeObject: Codable, Sendable, Hashable {
    public var action: String
    public var targets: [AliasTargetObject]
    public var at: Date

    public init(action: String, targets: [AliasTargetObject], at: Date) {
        self.action = action
        self.targets = targets
        self.at = at
    }
}

public struct AliasHistory: Codable, Sendable, Hashable {
    public var data: [AliasChangeObject]
    public init(data: [AliasChangeObject]) { self.data = data }
}

/// `PUT /v1/admin/models/{name}/aliases/{alias}`: one target promotes, several split traffic.
public struct MoveAliasRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["targets"]
    public var targets: [AliasTargetObject]
    public init(targets: [AliasTargetObject]) { self.targets = targets }
}

public struct BlobCheckRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["digests"]
    public var digests: [Digest]
    public init(digests: [Digest]) { self.digests = digests }
}

public struct BlobCheckResponse: Codable, Sendable, Hashable {
    /// The digests the server does not have yet: upload these, then the manifest.
    public var missing: [Digest]
    public init(missing: [Digest]) { self.missing = missing }
}

public struct BlobObject: Codable, Sendable, Hashable {
    public var digest: Digest
    public var size: Int64
    public init(digest: Digest, size: Int64) {
        self.digest = digest
        self.size = size
    }
}

public struct VersionObject: Codable, Sendable, Hashable {
    public var id: Digest
    public var model: String
    public var manifest: JSONValue
    public var createdAt: Date
    /// False when the same version had been pushed before (nothing changed).
    public var created: Bool?

    enum CodingKeys: String, CodingKey {
        case id, model, manifest, created
        case createdAt = "created_at"
    }

    public init(id: Digest, model: String, manifest: JSONValue, createdAt: Date, created: Bool? = nil) {
        self.id = id
        self.model = model
        self.manifest = manifest
        self.createdAt = createdAt
        self.created = created
    }
}

public struct VersionList: Codable, Sendable, Hashable {
    public var data: [VersionObject]
    public init(data: [VersionObject]) { self.data = data }
}

public struct ModelList: Codable, Sendable, Hashable {
    public var data: [ModelObject]
    public init(data: [ModelObject]) { self.data = data }
}

public struct CreateModelRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["name", "description", "input_schema"]
    public var name: String
    public var description: String?
    public var inputSchema: JSONValue?

    enum CodingKeys: String, CodingKey {
        case name, description
        case inputSchema = "input_schema"
    }

    public init(name: String, description: String? = nil, inputSchema: JSONValue? = nil) {
        self.name = name
        self.description = description
        self.inputSchema = inputSchema
    }
}

// MARK: - Accounts and keys

public struct CreateAccountRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["name", "tier"]
    public var name: String
    public var tier: String
    public init(name: String, tier: String) {
        self.name = name
        self.tier = tier
    }
}

public struct UpdateAccountRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["tier"]
    public var tier: String
    public init(tier: String) { self.tier = tier }
}

public struct AccountObject: Codable, Sendable, Hashable {
    public var id: AccountID
    public var name: String
    public var tier: String
    public var createdAt: Date

    enum CodingKeys: String, CodingKey {
        case id, name, tier
        case createdAt = "created_at"
    }

    public init(id: AccountID, name: String, tier: String, createdAt: Date) {
        self.id = id
        self.name = name
        self.tier = tier
        self.createdAt = createdAt
    }
}

public struct AccountList: Codable, Sendable, Hashable {
    public var data: [AccountObject]
    public init(data: [AccountObject]) { self.data = data }
}

public struct CreateKeyRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["scope"]
    public var scope: KeyScope
    public init(scope: KeyScope) { self.scope = scope }
}

/// A new key. `key` is the secret: shown this once, stored only as a hash.
public struct KeyObject: Codable, Sendable, Hashable {
    public var id: KeyID
    public var key: String
    public var scope: KeyScope
    public var accountID: AccountID?

    enum CodingKeys: String, CodingKey {
        case id, key, scope
        case accountID = "account_id"
    }

    public init(id: KeyID, key: String, scope: KeyScope, accountID: AccountID?) {
        self.id = id
        self.key = key
        self.scope = scope
        self.accountID = accountID
    }
}

// MARK: - Queue and fleet (admin)

public struct QueueView: Codable, Sendable, Hashable {
    public struct Row: Codable, Sendable, Hashable {
        public var tier: String
        public var model: String
        public var queued: Int
        public var parked: Int
        public var oldestQueuedAt: Date?
        public var maxUrgency: Double?

        enum CodingKeys: String, CodingKey {
            case tier, model, queued, parked
            case oldestQueuedAt = "oldest_queued_at"
            case maxUrgency = "max_urgency"
        }

        public init(tier: String, model: String, queued: Int, parked: Int, oldestQueuedAt: Date?, maxUrgency: Double?) {
            self.tier = tier
            self.model = model
            self.queued = queued
            self.parked = parked
            self.oldestQueuedAt = oldestQueuedAt
            self.maxUrgency = maxUrgency
        }
    }

    public struct Entry: Codable, Sendable, Hashable {
        public var id: GenerationID
        public var tier: String
        public var model: String
        public var queuedAt: Date
        public var urgency: Double

        enum CodingKeys: String, CodingKey {
            case id, tier, model, urgency
            case queuedAt = "queued_at"
        }

        public init(id: GenerationID, tier: String, model: String, queuedAt: Date, urgency: Double) {
            self.id = id
            self.tier = tier
            self.model = model
            self.queuedAt = queuedAt
            self.urgency = urgency
        }
    }

    public var policy: String
    public var queued: Int
    public var dispatched: Int
    public var rows: [Row]
    /// The first jobs in dispatch order.
    public var next: [Entry]

    public init(policy: String, queued: Int, dispatched: Int, rows: [Row], next: [Entry]) {
        self.policy = policy
        self.queued = queued
        self.dispatched = dispatched
        self.rows = rows
        self.next = next
    }
}

public struct WorkerObject: Codable, Sendable, Hashable {
    public var id: WorkerID
    public var cluster: String
    public var accelerator: String
    public var gpus: Int
    public var labels: [String: String]
    public var state: WorkerRecord.State
    public var registeredAt: Date
    public var lastSeenAt: Date

    enum CodingKeys: String, CodingKey {
        case id, cluster, accelerator, gpus, labels, state
        case registeredAt = "registered_at"
        case lastSeenAt = "last_seen_at"
    }

    public init(
        id: WorkerID, cluster: String, accelerator: String, gpus: Int, labels: [String: String], state: WorkerRecord.State,
        registeredAt: Date, lastSeenAt: Date
    ) {
        self.id = id
        self.cluster = cluster
        self.accelerator = accelerator
        self.gpus = gpus
        self.labels = labels
        self.state = state
        self.registeredAt = registeredAt
        self.lastSeenAt = lastSeenAt
    }
}

public struct WorkerList: Codable, Sendable, Hashable {
    public var data: [WorkerObject]
    public init(data: [WorkerObject]) { self.data = data }
}

// MARK: - Worker protocol

public struct RegisterWorkerRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["cluster", "accelerator", "gpus", "labels"]
    public var cluster: String
    public var accelerator: String
    public var gpus: Int
    public var labels: [String: String]?

    public init(cluster: String, accelerator: String, gpus: Int, labels: [String: String]? = nil) {
        self.cluster = cluster
        self.accelerator = accelerator
        self.gpus = gpus
        self.labels = labels
    }
}

public struct RegisterWorkerResponse: Codable, Sendable, Hashable {
    public var id: WorkerID
    public var leaseTTLSeconds: Double
    public var heartbeatSeconds: Double

    enum CodingKeys: String, CodingKey {
        case id
        case leaseTTLSeconds = "lease_ttl_seconds"
        case heartbeatSeconds = "heartbeat_seconds"
    }

    public init(id: WorkerID, leaseTTLSeconds: Double, heartbeatSeconds: Double) {
        self.id = id
        self.leaseTTLSeconds = leaseTTLSeconds
        self.heartbeatSeconds = heartbeatSeconds
    }
}

public struct LeaseRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["wait_seconds"]
    public var waitSeconds: Double?

    enum CodingKeys: String, CodingKey {
        case waitSeconds = "wait_seconds"
    }

    public init(waitSeconds: Double? = nil) { self.waitSeconds = waitSeconds }
}

public struct InputFileObject: Codable, Sendable, Hashable {
    public var size: Int64
    public var sha256: String
    public var contentType: String

    enum CodingKeys: String, CodingKey {
        case size, sha256
        case contentType = "content_type"
    }

    public init(size: Int64, sha256: String, contentType: String) {
        self.size = size
        self.sha256 = sha256
        self.contentType = contentType
    }
}

public struct LeasedJob: Codable, Sendable, Hashable {
    public var id: GenerationID
    public var model: String
    public var version: String?
    public var input: [String: JSONValue]
    public var inputFiles: [String: InputFileObject]
    public var attempt: Int
    /// The promised latest dispatch of the job's tier.
    public var deadline: Date

    enum CodingKeys: String, CodingKey {
        case id, model, version, input, attempt, deadline
        case inputFiles = "input_files"
    }

    public init(
        id: GenerationID, model: String, version: String?, input: [String: JSONValue], inputFiles: [String: InputFileObject],
        attempt: Int, deadline: Date
    ) {
        self.id = id
        self.model = model
        self.version = version
        self.input = input
        self.inputFiles = inputFiles
        self.attempt = attempt
        self.deadline = deadline
    }
}

public struct LeaseObject: Codable, Sendable, Hashable {
    /// The fencing token every later call about this job must carry.
    public var token: String
    public var expiresAt: Date

    enum CodingKeys: String, CodingKey {
        case token
        case expiresAt = "expires_at"
    }

    public init(token: String, expiresAt: Date) {
        self.token = token
        self.expiresAt = expiresAt
    }
}

public struct LeaseResponse: Codable, Sendable, Hashable {
    public var job: LeasedJob
    public var lease: LeaseObject

    public init(job: LeasedJob, lease: LeaseObject) {
        self.job = job
        self.lease = lease
    }
}

public struct TokenRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["token"]
    public var token: String
    public init(token: String) { self.token = token }
}

public struct HeartbeatRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["token", "progress"]
    public var token: String
    public var progress: ProgressObject?

    public init(token: String, progress: ProgressObject? = nil) {
        self.token = token
        self.progress = progress
    }
}

public struct HeartbeatResponse: Codable, Sendable, Hashable {
    /// True when the generation was canceled: stop it and report nothing more.
    public var cancel: Bool
    public var leaseExpiresAt: Date

    enum CodingKeys: String, CodingKey {
        case cancel
        case leaseExpiresAt = "lease_expires_at"
    }

    public init(cancel: Bool, leaseExpiresAt: Date) {
        self.cancel = cancel
        self.leaseExpiresAt = leaseExpiresAt
    }
}

public struct CompleteRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["token", "outputs"]
    public var token: String
    public var outputs: [String]

    public init(token: String, outputs: [String]) {
        self.token = token
        self.outputs = outputs
    }
}

public struct FailRequest: WireRequest, Hashable {
    public static let fields: Set<String> = ["token", "error", "retryable"]
    public var token: String
    public var error: ErrorBody.Detail
    public var retryable: Bool

    public init(token: String, error: ErrorBody.Detail, retryable: Bool) {
        self.token = token
        self.error = error
        self.retryable = retryable
    }
}


/// The encoders every side of the API uses.
public enum WireFormat {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(RFC3339.format(date))
        }
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = RFC3339.parse(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "'\(text)' is not an RFC 3339 time")
            }
            return date
        }
        return decoder
    }
}

/// RFC 3339 times with milliseconds, in UTC.
public enum RFC3339 {
    private static let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt)

    public static func format(_ date: Date) -> String {
        style.format(date)
    }

    public static func parse(_ text: String) -> Date? {
        (try? style.parse(text)) ?? (try? Date.ISO8601FormatStyle(timeZone: .gmt).parse(text))
    }
}
