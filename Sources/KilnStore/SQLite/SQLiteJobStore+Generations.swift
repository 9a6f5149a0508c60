import Foundation
import GRDB
import KilnCore

/// Generations: submission, the lease lifecycle, events.
extension SQLiteJobStore {
    public func submit(_ batch: [SubmissionRequest], admission: Admission) async throws -> [Result<Submission, KilnError>] {
        try SubmissionRequest.checkOneAccountAndTier(batch)
        guard let first = batch.first?.generation else { return [] }
        return try await write { db in
            // Each cap is counted once, at the first item that needs it, then kept up to date.
            var queuedInAccount: Int?
            var queuedInTier: Int?
            return try batch.map { request -> Result<Submission, KilnError> in
                if let idempotency = request.idempotency,
                    let row = try Row.fetchOne(
                        db, cached: "SELECT generation_id, request_hash FROM idempotency_keys WHERE account_id = ? AND key = ?",
                        arguments: [first.accountID.rawValue, idempotency.key])
                {
                    guard (row["request_hash"] as String) == idempotency.requestHash else {
                        return .failure(.idempotencyKeyReused(idempotency.key))
                    }
                    let existing = try Self.fetchGeneration(db, id: GenerationID(unchecked: row["generation_id"]))!
                    return .success(Submission(generation: existing, created: false))
                }
                if let cap = admission.maxQueuedPerAccount {
                    let queued = try queuedInAccount ?? Self.queuedCount(db, "account", first.accountID.rawValue)
                    queuedInAccount = queued
                    if queued >= cap { return .failure(.accountQueueFull(queued: queued, cap: cap, tier: first.tier)) }
                }
                if let cap = admission.maxQueuedInTier {
                    let queued = try queuedInTier ?? Self.queuedCount(db, "tier", first.tier)
                    queuedInTier = queued
                    if queued >= cap { return .failure(.tierQueueFull(queued: queued, cap: cap, tier: first.tier)) }
                }
                let stored = try Self.insert(request, db)
                if let handoff = request.handoff,
                    let leased = try Self.lease(
                        stored.sequence, to: handoff.worker, at: handoff.at, ttl: handoff.ttl, start: handoff.start, db)
                {
                    return .success(Submission(generation: leased, created: true))
                }
                queuedInAccount? += 1
                queuedInTier? += 1
                return .success(Submission(generation: stored, created: true))
            }
        }
    }

    /// The queued generations of an account or a tier (`scope`), as the schema's triggers keep them.
    private static func queuedCount(_ db: Database, _ scope: String, _ name: String) throws -> Int {
        try Int.fetchOne(db, cached: "SELECT queued FROM queued_counts WHERE scope = ? AND name = ?", arguments: [scope, name]) ?? 0
    }

    /// Inserts a submitted generation, its idempotency key and its `queued` event.
    /// - Returns: the generation with its sequence.
    private static func insert(_ request: SubmissionRequest, _ db: Database) throws -> Generation {
        var stored = request.generation.asSubmitted
        try db.run(
            sql: """
                INSERT INTO generations (id, account_id, model, version, alias, tier, accelerators, gpus, state, input,
                    input_files, progress_fraction, progress_stage, output, attempts, max_attempts, callback_url,
                    callback_events, created_at, queued_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, 0, '', '{}', 0, ?, ?, ?, ?, ?)
                """,
            arguments: [
                stored.id.rawValue, stored.accountID.rawValue, stored.model, stored.version, stored.alias, stored.tier,
                JSONColumn.encode(stored.accelerators), stored.gpus,
                JSONValue.object(stored.input).canonicalJSON(), JSONColumn.encode(stored.inputFiles.mapValues(\.rawValue)),
                stored.maxAttempts, stored.callbackURL, stored.callbackEvents.isEmpty ? nil : JSONColumn.encode(stored.callbackEvents),
                stored.createdAt.timeIntervalSince1970, stored.queuedAt.timeIntervalSince1970,
            ])
        stored.sequence = db.lastInsertedRowID
        if let idempotency = request.idempotency {
            try db.run(
                sql: "INSERT INTO idempotency_keys (account_id, key, request_hash, generation_id, created_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [
                    stored.accountID.rawValue, idempotency.key, idempotency.requestHash, stored.id.rawValue,
                    stored.createdAt.timeIntervalSince1970,
                ])
        }
        try appendEvent(db, stored, .queued, at: stored.createdAt)
        return stored
    }

    public func generation(_ id: GenerationID) async throws -> Generation? {
        try await pool.read { db in try Self.fetchGeneration(db, id: id) }
    }

    public func generation(sequence: Int64) async throws -> Generation? {
        try await pool.read { db in
            try Row.fetchOne(db, cached: Self.generationBySequence, arguments: [sequence]).map(Self.generation(from:))
        }
    }

    public func generations(of account: AccountID?, state: GenerationState?, limit: Int, before: Int64?) async throws
        -> [Generation]
    {
        try await pool.read { db in
            var conditions: [String] = []
            var arguments: StatementArguments = []
            if let account {
                conditions.append("account_id = ?")
                arguments += [account.rawValue]
            }
            if let state {
                conditions.append("state = ?")
                arguments += [state.rawValue]
            }
            if let before {
                conditions.append("seq < ?")
                arguments += [before]
            }
            var sql = "SELECT \(Self.generationColumns) FROM generations"
            if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
            sql += " ORDER BY seq DESC LIMIT ?"
            arguments += [limit]
            return try Row.fetchAll(db, cached: sql, arguments: arguments).map(Self.generation(from:))
        }
    }

    public func cancel(_ id: GenerationID, at: Date) async throws -> Generation {
        try await write { db in
            guard let (generation, token) = try Self.fetchForTransition(db, id: id) else {
                throw KilnError(.notFound, "no generation '\(id)'")
            }
            return try Self.persist(db, Lifecycle.cancel(generation, at: at), from: generation, token: token, at: at)
        }
    }

    public func lease(sequences: [Int64], to worker: WorkerRecord, at: Date, ttl: Double, start: Bool) async throws -> [Generation?] {
        try await write { db in try sequences.map { try Self.lease($0, to: worker, at: at, ttl: ttl, start: start, db) } }
    }

    private static func lease(_ sequence: Int64, to worker: WorkerRecord, at: Date, ttl: Double, start: Bool, _ db: Database) throws
        -> Generation?
    {
        guard let row = try Row.fetchOne(db, cached: generationBySequence, arguments: [sequence]) else {
            return nil
        }
        let generation = Self.generation(from: row)
        guard generation.state == .queued else { return nil }
        let token: Int64 = row[.leaseToken]
        // Resolve the alias now, in the same transaction: the generation records what it runs.
        var version: String?
        if generation.version == nil, let aliasName = generation.alias, let alias = try fetchAlias(db, aliasName, of: generation.model) {
            version = alias.resolve(for: generation.id)?.description
        }
        let transition = try Lifecycle.lease(
            generation, to: worker.id, cluster: worker.cluster, token: FencingToken.next(after: FencingToken(token)), version: version,
            at: at, ttl: ttl, start: start)
        return try persist(db, transition, from: generation, token: token, at: at)
    }

    public func start(_ id: GenerationID, worker: WorkerID, token: FencingToken, at: Date, ttl: Double) async throws
        -> Generation
    {
        try await transition(id, at: at) { try Lifecycle.start($0, worker: worker, token: token, at: at, ttl: ttl) }
    }

    public func heartbeat(
        _ id: GenerationID, worker: WorkerID, token: FencingToken, progress: JobProgress?, at: Date, ttl: Double
    ) async throws -> Generation {
        try await transition(id, at: at) {
            try Lifecycle.heartbeat($0, worker: worker, token: token, progress: progress, at: at, ttl: ttl)
        }
    }

    public func attachOutput(_ id: GenerationID, worker: WorkerID, token: FencingToken, name: String, file: FileRecord)
        async throws
    {
        try await write { db in
            guard let (generation, _) = try Self.fetchForTransition(db, id: id) else { throw KilnError(.notFound, "no generation '\(id)'") }
            try Lifecycle.holding(generation, worker: worker, token: token, allowCanceled: false)
            // An upload of the same name by the same attempt replaces the earlier one.
            if let replaced = try Row.fetchOne(
                db,
                cached: """
                    SELECT f.id, f.object_key FROM job_outputs o JOIN files f ON f.id = o.file_id
                    WHERE o.generation_id = ? AND o.token = ? AND o.name = ?
                    """,
                arguments: [id.rawValue, token.value, name])
            {
                try Self.doom(db, fileID: replaced["id"], objectKey: replaced["object_key"], at: file.createdAt)
            }
            try Self.insert(file, db)
            try db.run(
                sql: "INSERT INTO job_outputs (generation_id, token, name, file_id) VALUES (?, ?, ?, ?)",
                arguments: [id.rawValue, token.value, name, file.id.rawValue])
        }
    }

    public func complete(_ reports: [CompletionReport], worker: WorkerID, at: Date) async throws -> [Result<Generation, KilnError>] {
        try await write { db in try Self.complete(reports, worker: worker, at: at, db) }
    }

    public func exchange(
        completing reports: [CompletionReport], leasing sequences: [Int64], to worker: WorkerRecord, at: Date, ttl: Double, start: Bool
    ) async throws -> (completed: [Result<Generation, KilnError>], leased: [Generation?]) {
        try await write { db in
            let completed = try Self.complete(reports, worker: worker.id, at: at, db)
            return (completed, try sequences.map { try Self.lease($0, to: worker, at: at, ttl: ttl, start: start, db) })
        }
    }

    /// Ends each report in a savepoint of its own: one refused changes nothing, and the others go.
    private static func complete(_ reports: [CompletionReport], worker: WorkerID, at: Date, _ db: Database) throws
        -> [Result<Generation, KilnError>]
    {
        try reports.map { report in
            var result: Result<Generation, KilnError>?
            try db.inSavepoint {
                do {
                    result = .success(try Self.complete(report, worker: worker, at: at, db))
                    return .commit
                } catch let error as KilnError where error.refusesItem {
                    result = .failure(error)
                    return .rollback
                }
            }
            return result!
        }
    }

    private static func complete(_ report: CompletionReport, worker: WorkerID, at: Date, _ db: Database) throws -> Generation {
        let (id, token) = (report.id, report.token)
        guard let (generation, held) = try fetchForTransition(db, id: id) else {
            throw KilnError(.notFound, "no generation '\(id)'")
        }
        // The lease first: a stale token is told so, whatever outputs it names.
        try Lifecycle.holding(generation, worker: worker, token: token, allowCanceled: false)
        var files: [String: OutputFile] = [:]
        for name in report.outputs {
            guard
                let row = try Row.fetchOne(
                    db,
                    cached: """
                        SELECT f.* FROM job_outputs o JOIN files f ON f.id = o.file_id
                        WHERE o.generation_id = ? AND o.token = ? AND o.name = ?
                        """,
                    arguments: [id.rawValue, token.value, name])
            else {
                throw KilnError(.invalidInput, "outputs: '\(name)' was not uploaded for this lease")
            }
            let file = Self.file(from: row)
            files[name] = OutputFile(fileID: file.id, contentType: file.contentType, size: file.size)
        }
        let transition = try Lifecycle.complete(generation, worker: worker, token: token, outputs: files, at: at)
        return try persist(db, transition, from: generation, token: held, at: at)
    }

    public func fail(
        _ id: GenerationID, worker: WorkerID, token: FencingToken, error: JobFailure, retryable: Bool, at: Date
    ) async throws -> Generation {
        try await transition(id, at: at) {
            try Lifecycle.fail($0, worker: worker, token: token, error: error, retryable: retryable, at: at)
        }
    }

    public func expireLeases(at now: Date) async throws -> [Generation] {
        try await write { db in
            let expired = try Row.fetchAll(
                db,
                cached: "SELECT \(Self.generationColumns) FROM generations WHERE state = 'running' AND lease_expires_at < ? ORDER BY seq",
                arguments: [now.timeIntervalSince1970])
            return try expired.map { row in
                let generation = Self.generation(from: row)
                return try Self.persist(db, Lifecycle.expire(generation, at: now), from: generation, token: row[.leaseToken], at: now)
            }
        }
    }

    public func renewLeases(until expiry: Date) async throws -> Int {
        try await write { db in
            try db.execute(
                sql: "UPDATE generations SET lease_expires_at = ? WHERE state = 'running' AND lease_expires_at < ?",
                arguments: [expiry.timeIntervalSince1970, expiry.timeIntervalSince1970])
            return db.changesCount
        }
    }

    public func releaseLeases(of worker: WorkerID, reason: String, at: Date) async throws -> [Generation] {
        try await write { db in
            let held = try Row.fetchAll(
                db, cached: "SELECT \(Self.generationColumns) FROM generations WHERE lease_worker = ? AND state = 'running' ORDER BY seq",
                arguments: [worker.rawValue])
            return try held.map { row in
                let generation = Self.generation(from: row)
                return try Self.persist(
                    db, Lifecycle.release(generation, reason: reason), from: generation, token: row[.leaseToken], at: at)
            }
        }
    }

    public func oldestQueuedGeneration(of account: AccountID) async throws -> Generation? {
        try await pool.read { db in
            try Row.fetchOne(
                db,
                cached: """
                    SELECT \(Self.generationColumns) FROM generations WHERE account_id = ? AND state = 'queued'
                    ORDER BY queued_at, seq LIMIT 1
                    """,
                arguments: [account.rawValue]
            ).map(Self.generation(from:))
        }
    }

    public func queuedGenerations() async throws -> [Generation] {
        try await pool.read { db in
            try Row.fetchAll(db, cached: "SELECT \(Self.generationColumns) FROM generations WHERE state = 'queued' ORDER BY seq")
                .map(Self.generation(from:))
        }
    }

    public func runningGenerations() async throws -> [Generation] {
        try await pool.read { db in
            try Row.fetchAll(db, cached: "SELECT \(Self.generationColumns) FROM generations WHERE state = 'running' ORDER BY seq")
                .map(Self.generation(from:))
        }
    }

    public func events(of id: GenerationID, after: Int64, limit: Int) async throws -> [GenerationEvent] {
        try await pool.read { db in
            try Row.fetchAll(
                db, cached: "SELECT * FROM generation_events WHERE generation_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                arguments: [id.rawValue, after, limit]
            ).map { row in
                GenerationEvent(
                    sequence: row["seq"], generationID: GenerationID(unchecked: row["generation_id"]),
                    kind: GenerationEvent.Kind(rawValue: row["kind"]) ?? .progress, at: Date(timeIntervalSince1970: row["at"]),
                    state: GenerationState(rawValue: row["state"]) ?? .queued,
                    progress: JobProgress(fraction: row["progress_fraction"], stage: row["progress_stage"]), message: row["message"])
            }
        }
    }

    // MARK: Transitions

    /// Reads the generation, applies `change` (one of ``Lifecycle``'s functions) and persists it.
    func transition(_ id: GenerationID, at: Date, _ change: @escaping @Sendable (Generation) throws -> Transition) async throws
        -> Generation
    {
        try await write { db in
            guard let (generation, token) = try Self.fetchForTransition(db, id: id) else {
                throw KilnError(.notFound, "no generation '\(id)'")
            }
            return try Self.persist(db, change(generation), from: generation, token: token, at: at)
        }
    }

    /// The generation and the last fencing token issued for it (kept while it is not leased).
    static func fetchForTransition(_ db: Database, id: GenerationID) throws -> (Generation, Int64)? {
        try Row.fetchOne(db, cached: generationByID, arguments: [id.rawValue]).map {
            (generation(from: $0), $0[.leaseToken])
        }
    }

    /// Writes a transition of `before` (read with fencing token `token`) and its event: one
    /// conditional update of every column a transition may change, refused unless the row still
    /// has the state and token it was read with.
    ///
    /// A transition that keeps the state and the worker (a start, a heartbeat) leaves `state` and
    /// `lease_worker` out of its update: SQLite rewrites an index entry whenever a column of the
    /// index is assigned, even to the value it had, and those two columns are in three indexes.
    static func persist(_ db: Database, _ transition: Transition, from before: Generation, token: Int64, at: Date) throws
        -> Generation
    {
        let after = transition.generation
        if after != before {
            let lease = after.lease
            let indexed = after.state != before.state || lease?.workerID != before.lease?.workerID
            // Positional arguments, by the row's key: named ones are a dictionary built per call.
            var arguments: StatementArguments = [
                after.version, after.attempts, lease?.token.value ?? token,
                lease?.cluster, lease?.leasedAt.timeIntervalSince1970, lease?.expiresAt.timeIntervalSince1970,
                lease?.startedAt?.timeIntervalSince1970, lease?.acknowledged ?? false,
                after.progress.fraction, after.progress.stage, JSONColumn.encode(after.output),
                after.error?.code, after.error?.message,
                after.startedAt?.timeIntervalSince1970, after.completedAt?.timeIntervalSince1970, after.unacknowledgedLeases,
            ]
            if indexed { arguments += [after.state.rawValue, lease?.workerID.rawValue] }
            arguments += [after.sequence, before.state.rawValue, token]
            try db.run(sql: indexed ? updateGeneration : updateGenerationKeepingState, arguments: arguments)
            guard db.changesCount == 1 else {
                throw KilnError.generationChanged(after.id)
            }
        }
        if after.state.isFinal, !before.state.isFinal { try settleOutputs(db, of: after, at: at) }
        if let event = transition.event {
            try appendEvent(db, after, event, at: at, message: transition.message)
            if after.callbackURL != nil { try enqueueWebhook(db, for: after, event: event, at: at) }
        }
        return after
    }

    /// The columns of no index that a transition may change.
    private static let unindexedColumns = """
        version = ?, attempts = ?, lease_token = ?, lease_cluster = ?, leased_at = ?, lease_expires_at = ?,
            lease_started_at = ?, lease_acked = ?, progress_fraction = ?, progress_stage = ?, output = ?, error_code = ?,
            error_message = ?, started_at = ?, completed_at = ?, unacknowledged_leases = ?
        """
    /// Every column a transition may change, by the row's key, if it still has the state and token
    /// it was read with.
    private static let updateGeneration =
        "UPDATE generations SET \(unindexedColumns), state = ?, lease_worker = ? WHERE seq = ? AND state = ? AND lease_token = ?"
    /// ``updateGeneration`` without `state` and `lease_worker`, for a transition that keeps both.
    private static let updateGenerationKeepingState =
        "UPDATE generations SET \(unindexedColumns) WHERE seq = ? AND state = ? AND lease_token = ?"

    static func appendEvent(_ db: Database, _ generation: Generation, _ kind: GenerationEvent.Kind, at: Date, message: String? = nil)
        throws
    {
        try db.run(
            sql: """
                INSERT INTO generation_events (generation_id, kind, at, state, progress_fraction, progress_stage, message)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                generation.id.rawValue, kind.rawValue, at.timeIntervalSince1970, generation.state.rawValue,
                generation.progress.fraction, generation.progress.stage, message,
            ])
    }
}
