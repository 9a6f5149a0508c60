import Foundation
import KilnCore

/// The durable state of Kiln: accounts, keys, models, files, workers, generations and their
/// leases and events (DESIGN §8: the store is the truth; memory is a cache rebuilt from it).
///
/// Every method that changes a generation is one transaction that checks the state it starts from,
/// so two processes racing on the same job can never both win: a lease only takes a queued job, a
/// completion only counts with the current fencing token. Backends: ``SQLiteJobStore`` (embedded);
/// a PostgreSQL backend runs the same conformance suite.
///
/// Errors are ``KilnError``: `.notFound`, `.conflict`, `.staleLease`, `.rateLimited`. Worker calls
/// on a generation that was canceled while running throw `.conflict` (the heartbeat instead returns
/// the canceled generation, so the worker learns to stop).
public protocol JobStore: Sendable {
    // MARK: Accounts and keys

    func createAccount(_ account: Account) async throws
    func account(_ id: AccountID) async throws -> Account?
    func accounts() async throws -> [Account]
    /// - Throws: `.notFound`.
    func updateAccountTier(_ id: AccountID, tier: String) async throws -> Account

    func createKey(_ key: APIKeyRecord) async throws
    /// The key with this secret hash, revoked or not.
    func key(secretHash: String) async throws -> APIKeyRecord?
    /// - Throws: `.notFound`.
    func revokeKey(_ id: KeyID, at: Date) async throws

    // MARK: Models and files

    /// - Throws: `.conflict` when the name is taken.
    func createModel(_ model: ModelRecord) async throws
    func model(named name: String) async throws -> ModelRecord?
    func models() async throws -> [ModelRecord]

    /// Stores a file's record (its bytes are already in the object store).
    /// - Parameter quota: with an upload, the most bytes of uploads its account may hold with it.
    /// - Throws: `.payloadTooLarge` when the upload would pass `quota`; nothing is stored.
    func createFile(_ file: FileRecord, quota: Int64?) async throws
    func file(_ id: FileID) async throws -> FileRecord?
    /// The bytes of uploads the account holds.
    func uploadedBytes(of account: AccountID) async throws -> Int64
    /// Deletes one of the account's files; its object is doomed (see ``doomedObjects(limit:)``).
    /// - Throws: `.notFound` when the account has no such file; `.conflict` naming the generation
    ///   when the file is an input or a pending output of a queued or running generation.
    func deleteFile(_ id: FileID, of account: AccountID) async throws
    /// Deletes up to `limit` files created before `cutoff`, oldest first, except those a queued or
    /// running generation needs (its inputs and its pending outputs).
    /// - Returns: how many it deleted.
    func expireFiles(createdBefore cutoff: Date, limit: Int) async throws -> Int
    /// Keys of objects whose records were deleted: the files above, and the outputs that an attempt
    /// uploaded but that did not become the generation's (a stale attempt's, one replaced by
    /// another upload of the same name, those of a generation that failed or was canceled).
    func doomedObjects(limit: Int) async throws -> [String]
    /// Forgets doomed objects once they are deleted from the object store.
    func forgetDoomedObjects(_ keys: [String]) async throws

    // MARK: Model repository

    /// Stores a version; a version with the same id is never changed.
    /// - Returns: false when the version already existed.
    func createVersion(_ version: ModelVersionRecord) async throws -> Bool
    func version(_ id: Digest) async throws -> ModelVersionRecord?
    /// A model's versions, newest first.
    func versions(of model: String) async throws -> [ModelVersionRecord]

    func alias(_ name: String, of model: String) async throws -> AliasRecord?
    func aliases(of model: String) async throws -> [AliasRecord]
    /// Points an alias at `targets` (creating it) and appends the move to its history.
    /// - Throws: `.invalidInput` naming a version that is not one of the model's.
    func moveAlias(_ name: String, of model: String, to targets: [AliasTarget], at: Date) async throws -> AliasRecord
    /// Moves an alias back to what it pointed at before its last promote or split.
    /// - Throws: `.notFound` for an unknown alias; `.conflict` when there is nothing to go back to.
    func rollbackAlias(_ name: String, of model: String, at: Date) async throws -> AliasRecord
    /// An alias's moves, oldest first.
    func aliasHistory(_ name: String, of model: String) async throws -> [AliasChange]

    // MARK: Workers

    func registerWorker(_ worker: WorkerRecord) async throws
    func worker(_ id: WorkerID) async throws -> WorkerRecord?
    func workers() async throws -> [WorkerRecord]
    /// - Throws: `.notFound`.
    func setWorkerState(_ id: WorkerID, _ state: WorkerRecord.State) async throws -> WorkerRecord
    func touchWorker(_ id: WorkerID, at: Date) async throws

    // MARK: Generations

    /// Stores new queued generations of one account and tier, each with its `queued` event and (when
    /// given) its idempotency key, in one transaction, checking the admission caps inside it. Each
    /// is admitted or refused on its own, in order: the caps count the ones admitted before it.
    ///
    /// An admitted request with a ``Handoff`` is then leased to its worker in the same transaction,
    /// as ``lease(sequences:to:at:ttl:start:)`` would lease it: one commit from submission to lease.
    /// It is not queued, so it does not count against the queue caps of the requests after it. A
    /// replayed or refused request ignores its handoff.
    ///
    /// - Returns: for each request, in order: the stored generation (with its sequence; leased when
    ///   handed off) or the earlier one with the same idempotency key and request; or why it was refused:
    ///   `.rateLimited` when a cap is reached, `.conflict` when its idempotency key was used for a
    ///   different request.
    /// - Throws: `.invalidRequest` when the requests are not all of one account and tier; what the
    ///   database throws (nothing is then stored).
    func submit(_ batch: [SubmissionRequest], admission: Admission) async throws -> [Result<Submission, KilnError>]

    func generation(_ id: GenerationID) async throws -> Generation?
    func generation(sequence: Int64) async throws -> Generation?
    /// An account's generations (every account's when nil), newest first, older than `before` (a
    /// sequence) when given.
    func generations(of account: AccountID?, state: GenerationState?, limit: Int, before: Int64?) async throws -> [Generation]

    /// Cancels a queued or running generation.
    /// - Throws: `.notFound`; `.conflict` when it already ended.
    func cancel(_ id: GenerationID, at: Date) async throws -> Generation

    /// Leases a queued generation to a worker: attempts + 1, a new fencing token. A generation that
    /// names an alias and no version gets the version the alias resolves to for it, now, recorded
    /// in the same transaction.
    /// With `start`, the lease is also started, as ``start(_:worker:token:at:ttl:)`` would: for a
    /// worker that runs the job at once.
    ///
    /// Several sequences are leased in one transaction, in order, each on its own: one commit for
    /// all the jobs a worker takes at once.
    /// - Returns: by sequence, in order, the leased generation, or nil when it is no longer queued
    ///   (canceled meanwhile).
    func lease(sequences: [Int64], to worker: WorkerRecord, at: Date, ttl: Double, start: Bool) async throws -> [Generation?]

    /// The worker began running the model. Extends the lease; a repeated start only extends it.
    /// - Throws: `.staleLease` when the token no longer holds the lease.
    func start(_ id: GenerationID, worker: WorkerID, token: FencingToken, at: Date, ttl: Double) async throws -> Generation

    /// Extends the lease and records progress.
    /// - Returns: the generation; `state == .canceled` tells the worker to stop.
    /// - Throws: `.staleLease`.
    func heartbeat(
        _ id: GenerationID, worker: WorkerID, token: FencingToken, progress: JobProgress?, at: Date, ttl: Double
    ) async throws -> Generation

    /// Records a file a worker uploaded as output `name` of the lease it holds.
    /// - Throws: `.staleLease`.
    func attachOutput(_ id: GenerationID, worker: WorkerID, token: FencingToken, name: String, file: FileRecord) async throws

    /// Ends generations of one worker as succeeded, each with the named outputs, which must have
    /// been attached: in one transaction, each on its own, in order.
    /// - Returns: for each, the generation as it ended, or why it did not: `.staleLease`,
    ///   `.notFound`, `.invalidInput` naming an output that was not uploaded.
    func complete(_ reports: [CompletionReport], worker: WorkerID, at: Date) async throws -> [Result<Generation, KilnError>]

    /// A worker's round in one transaction and one durable commit: ends `reports` as
    /// ``complete(_:worker:at:)`` does, then leases `sequences` to the same worker as
    /// ``lease(sequences:to:at:ttl:start:)`` does.
    /// - Returns: what each of those two would have returned.
    func exchange(
        completing reports: [CompletionReport], leasing sequences: [Int64], to worker: WorkerRecord, at: Date, ttl: Double, start: Bool
    ) async throws -> (completed: [Result<Generation, KilnError>], leased: [Generation?])

    /// Records a failure: back to the queue (same `queuedAt`) when retryable and attempts remain,
    /// otherwise failed.
    /// - Throws: `.staleLease`.
    func fail(
        _ id: GenerationID, worker: WorkerID, token: FencingToken, error: JobFailure, retryable: Bool, at: Date
    ) async throws -> Generation

    /// Returns every running generation whose lease expired before `now` to the queue, or fails it
    /// when it has used its attempts. A lease its worker never acknowledged (no heartbeat, no start)
    /// never reached the worker: its generation goes back without the attempt being counted.
    /// - Returns: the changed generations.
    func expireLeases(at now: Date) async throws -> [Generation]
    /// Returns every generation `worker` holds to the queue, charged no attempt (a drain's grace
    /// ran out); each as ``Lifecycle/release(_:reason:)`` says.
    func releaseLeases(of worker: WorkerID, reason: String, at: Date) async throws -> [Generation]
    /// Makes every running lease that expires before `expiry` expire at it, and nothing else: a
    /// server that starts (or a leader that takes over) gives the workers that held leases through
    /// its absence until then to heartbeat again, instead of expiring all their work at once.
    /// - Returns: how many leases it renewed.
    func renewLeases(until expiry: Date) async throws -> Int

    /// The account's queued generation that has waited longest.
    func oldestQueuedGeneration(of account: AccountID) async throws -> Generation?

    /// Every queued generation, oldest first: what the scheduler is rebuilt from.
    func queuedGenerations() async throws -> [Generation]
    /// Every running generation that holds a lease.
    func runningGenerations() async throws -> [Generation]

    /// A generation's events after the given event sequence, oldest first.
    func events(of id: GenerationID, after: Int64, limit: Int) async throws -> [GenerationEvent]

    // MARK: Webhooks

    /// Adds a signing secret to the account; its other valid secrets stay valid until
    /// `othersValidUntil` (a rotation), or indefinitely when nil.
    func createWebhookSecret(_ secret: WebhookSecret, othersValidUntil: Date?) async throws
    /// The account's secrets still valid at `now`, oldest first.
    func webhookSecrets(of account: AccountID, at now: Date) async throws -> [WebhookSecret]
    /// - Throws: `.notFound`.
    func deleteWebhookSecret(_ id: String, of account: AccountID) async throws
    /// Pending deliveries due at `now`, oldest first, each claimed until `claimUntil` (its next
    /// attempt moves there), so that no other sender takes it meanwhile and a sender that dies
    /// mid-attempt leaves it to be tried again then.
    func claimDueDeliveries(at now: Date, claimUntil: Date, limit: Int) async throws -> [WebhookDelivery]
    /// Records an attempt and what follows from it.
    func recordDeliveryAttempt(_ id: String, _ attempt: WebhookAttempt, outcome: WebhookOutcome) async throws
    func delivery(_ id: String) async throws -> WebhookDelivery?
    /// A generation's deliveries, oldest first, with their attempts.
    func deliveries(of generation: GenerationID) async throws -> [WebhookDelivery]
    /// Sends a delivery again from now, whatever became of it, under the same id.
    /// - Throws: `.notFound`.
    func redeliver(_ id: String, at now: Date) async throws -> WebhookDelivery

    // MARK: Change feed

    /// Changes to the records servers cache (keys, accounts, workers, models, versions, aliases),
    /// after `after`, oldest first: each server applies them to its caches, so that a change made
    /// through any server reaches them all.
    func changes(after: Int64, limit: Int) async throws -> [StoreChange]
    /// The sequence of the latest change (0 before any): where a fresh cache starts following.
    func latestChange() async throws -> Int64
    /// Deletes the changes recorded before `cutoff`, except the latest one (so that
    /// ``latestChange()`` stays true). A cache that had not applied a pruned change learns so from
    /// the gap it leaves, and starts afresh.
    /// - Returns: how many were deleted.
    func pruneChanges(recordedBefore cutoff: Date) async throws -> Int

    // MARK: Observation

    /// Calls `observer` after each commit that carried changes, with how many and how long the
    /// transaction took to become durable: the store's side of the server's metrics.
    func observeCommits(_ observer: @escaping @Sendable (CommitTiming) -> Void)
}

/// One durable commit of a store: a group of changes that went to disk together.
public struct CommitTiming: Sendable, Hashable {
    /// The changes in the commit (callers answered by it).
    public var changes: Int
    /// From the transaction's start to its durable end.
    public var seconds: Double

    public init(changes: Int, seconds: Double) {
        self.changes = changes
        self.seconds = seconds
    }
}

/// One entry of the change feed: which cached record changed.
public struct StoreChange: Hashable, Sendable {
    public enum Record: String, Hashable, Sendable {
        /// `key` is the key's id.
        case key
        /// `key` is the account's id.
        case account
        /// `key` is the worker's id.
        case worker
        /// `key` is the model's name: the model itself, or its list of versions.
        case model
        /// `key` is `model/alias`.
        case alias
    }

    public var sequence: Int64
    public var record: Record
    public var key: String

    public init(sequence: Int64, record: Record, key: String) {
        self.sequence = sequence
        self.record = record
        self.key = key
    }
}

/// Caps checked when a generation is submitted.
public struct Admission: Sendable, Hashable {
    public var maxQueuedPerAccount: Int?
    public var maxQueuedInTier: Int?

    public init(maxQueuedPerAccount: Int? = nil, maxQueuedInTier: Int? = nil) {
        self.maxQueuedPerAccount = maxQueuedPerAccount
        self.maxQueuedInTier = maxQueuedInTier
    }
}

/// An `Idempotency-Key` and a digest of the request it came with.
public struct IdempotencyClaim: Sendable, Hashable {
    public var key: String
    public var requestHash: String

    public init(key: String, requestHash: String) {
        self.key = key
        self.requestHash = requestHash
    }
}

/// A worker's report that a job of its lease succeeded, with the names of the outputs it attached.
public struct CompletionReport: Sendable, Hashable {
    public var id: GenerationID
    public var token: FencingToken
    public var outputs: [String]

    public init(_ id: GenerationID, token: FencingToken, outputs: [String]) {
        self.id = id
        self.token = token
        self.outputs = outputs
    }
}

/// A generation to submit, with the idempotency key it came with.
public struct SubmissionRequest: Sendable, Hashable {
    public var generation: Generation
    public var idempotency: IdempotencyClaim?
    /// The waiting worker that takes it in the submission's own transaction, if any.
    public var handoff: Handoff?

    public init(_ generation: Generation, idempotency: IdempotencyClaim? = nil, handoff: Handoff? = nil) {
        self.generation = generation
        self.idempotency = idempotency
        self.handoff = handoff
    }
}

/// A lease made in a submission's own transaction: a worker was waiting in a long poll for a job it
/// could run, and the dispatcher reserved it for this one (see ``JobStore/submit(_:admission:)``).
public struct Handoff: Sendable, Hashable {
    public var worker: WorkerRecord
    public var at: Date
    /// The lease's time to live, in seconds.
    public var ttl: Double
    /// Started as it is leased, for a worker that runs the job at once.
    public var start: Bool

    public init(worker: WorkerRecord, at: Date, ttl: Double, start: Bool) {
        self.worker = worker
        self.at = at
        self.ttl = ttl
        self.start = start
    }
}

public struct Submission: Sendable, Hashable {
    public var generation: Generation
    /// False when an earlier submission with the same idempotency key was returned.
    public var created: Bool

    public init(generation: Generation, created: Bool) {
        self.generation = generation
        self.created = created
    }
}

extension JobStore {
    /// Stores one new queued generation: ``submit(_:admission:)`` with a batch of one.
    ///
    /// - Throws: `.rateLimited` when a cap is reached; `.conflict` when the idempotency key was used
    ///   for a different request.
    public func submit(_ generation: Generation, admission: Admission, idempotency: IdempotencyClaim?) async throws
        -> Submission
    {
        let results = try await submit([SubmissionRequest(generation, idempotency: idempotency)], admission: admission)
        return try results[0].get()
    }

    /// A backend that has no commit to report reports none.
    public func observeCommits(_ observer: @escaping @Sendable (CommitTiming) -> Void) {}

    /// Ends a generation as succeeded: ``complete(_:worker:at:)`` of one.
    /// - Throws: `.staleLease`; `.invalidInput` naming an output that was not uploaded.
    public func complete(_ id: GenerationID, worker: WorkerID, token: FencingToken, outputs: [String], at: Date) async throws
        -> Generation
    {
        try await complete([CompletionReport(id, token: token, outputs: outputs)], worker: worker, at: at)[0].get()
    }

    /// Leases one generation: ``lease(sequences:to:at:ttl:start:)`` of one.
    /// - Returns: nil when the generation is no longer queued (canceled meanwhile).
    public func lease(sequence: Int64, to worker: WorkerRecord, at: Date, ttl: Double, start: Bool) async throws -> Generation? {
        try await lease(sequences: [sequence], to: worker, at: at, ttl: ttl, start: start)[0]
    }

    /// Leases without starting: the worker prefetches, then calls ``start(_:worker:token:at:ttl:)``.
    public func lease(sequence: Int64, to worker: WorkerRecord, at: Date, ttl: Double) async throws -> Generation? {
        try await lease(sequence: sequence, to: worker, at: at, ttl: ttl, start: false)
    }
}

extension KilnError {
    /// An upload refused because the account's uploads would pass their quota.
    public static func uploadQuota(held: Int64, adding size: Int64, quota: Int64) -> KilnError {
        KilnError(
            .payloadTooLarge,
            "the account's uploads hold \(held) bytes; \(size) more would pass its quota of \(quota) bytes "
                + "(limits.max_account_file_bytes): delete files or wait for them to expire")
    }
}
