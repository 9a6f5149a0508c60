import Foundation
import GRDB
import KilnCore

/// Generations: submission, the lease lifecycle, events.
extension SQLiteJobStore {
    public func submit(_ generation: Generation, admission: Admission, idempotency: IdempotencyClaim?) async throws
        -> Submission
    {
        try await write { db in
            if let idempotency,
                let row = try Row.fetchOne(
                    db, cached: "SELECT generation_id, request_hash FROM idempotency_keys WHERE account_id = ? AND key = ?",
                    arguments: [generation.accountID.rawValue, idempotency.key])
            {
                guard (row["request_hash"] as String) == idempotency.requestHash else {
                    throw KilnError(
                        .conflict, "Idempotency-Key '\(idempotency.key)' was already used with a different request")
                }
                let existing = try Self.fetchGeneration(db, id: GenerationID(unchecked: row["generation_id"]))!
                return Submission(generation: existing, created: false)
            }
            if let cap = admission.maxQueuedPerAccount {
                let queued = try Int.fetchOne(
                    db, cached: "SELECT COUNT(*) FROM generations WHERE account_id = ? AND state = 'queued'",
                    arguments: [generation.accountID.rawValue]) ?? 0
                if queued >= cap {
                    throw KilnError(
                        .rateLimited,
                        "account has \(queued) queued generations, the most its '\(generation.tier)' tier allows (max_queued_per_account \(cap))"
                    )
                }
            }
            if let cap = admission.maxQueuedInTier {
                let queued = try Int.fetchOne(
                    db, cached: "SELECT COUNT(*) FROM generations WHERE tier = ? AND state = 'queued'",
                    arguments: [generation.tier]) ?? 0
                if queued >= cap {
                    throw KilnError(
                        .rateLimited, "the '\(generation.tier)' tier has \(queued) queued generations, its limit (max_queued \(cap))")
                }
            }
            // A new generation starts clean, whatever else the caller's value carried.
            var stored = generation
            stored.state = .queued
            stored.attempts = 0
            stored.progress = JobProgress()
            stored.output = [:]
            stored.error = nil
            stored.lease = nil
            stored.startedAt = nil
            stored.completedAt = nil
            try db.run(
                sql: """
                    INSERT INTO generations (id, account_id, model, version, alias, tier, accelerators, gpus, state, input,
                        input_files, progress_fraction, progress_stage, output, attempts, max_attempts, callback_url, created_at,
                        queued_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, 0, '', '{}', 0, ?, ?, ?, ?)
                    """,
                arguments: [
                    stored.id.rawValue, stored.accountID.rawValue, stored.model, stored.version, stored.alias, stored.tier,
                    Self.encode(stored.accelerators), stored.gpus,
                    JSONValue.object(stored.input).canonicalJSON(), Self.json(stored.inputFiles.mapValues(\.rawValue)),
                    stored.maxAttempts, stored.callbackURL, stored.createdAt.timeIntervalSince1970,
                    stored.queuedAt.timeIntervalSince1970,
                ])
            stored.sequence = db.lastInsertedRowID
            if let idempotency {
                try db.run(
                    sql: "INSERT INTO idempotency_keys (account_id, key, request_hash, generation_id, created_at) VALUES (?, ?, ?, ?, ?)",
                    arguments: [
                        stored.accountID.rawValue, idempotency.key, idempotency.requestHash, stored.id.rawValue,
                        stored.createdAt.timeIntervalSince1970,
                    ])
            }
            try Self.appendEvent(db, stored, .queued, at: stored.createdAt)
            return Submission(generation: stored, created: true)
        }
    }

    public func generation(_ id: GenerationID) async throws -> Generation? {
        try await pool.read { db in try Self.fetchGeneration(db, id: id) }
    }

    public func generation(sequence: Int64) async throws -> Generation? {
        try await pool.read { db in
            try Row.fetchOne(db, cached: "SELECT * FROM generations WHERE seq = ?", arguments: [sequence]).map(Self.generation(from:))
        }
    }

    public func generations(of account: AccountID, state: GenerationState?, limit: Int, before: Int64?) async throws
        -> [Generation]
    {
        try await pool.read { db in
            var sql = "SELECT * FROM generations WHERE account_id = ?"
            var arguments: StatementArguments = [account.rawValue]
            if let state {
                sql += " AND state = ?"
                arguments += [state.rawValue]
            }
            if let before {
                sql += " AND seq < ?"
                arguments += [before]
            }
            sql += " ORDER BY seq DESC LIMIT ?"
            arguments += [limit]
            return try Row.fetchAll(db, cached: sql, arguments: arguments).map(Self.generation(from:))
        }
    }

    public func cancel(_ id: GenerationID, at: Date) async throws -> Generation {
        try await write { db in
            guard var generation = try Self.fetchGeneration(db, id: id) else {
                throw KilnError(.notFound, "no generation '\(id)'")
            }
            guard !generation.state.isFinal else {
                throw KilnError(.conflict, "generation '\(id)' already ended as \(generation.state.rawValue)")
            }
            generation.state = .canceled
            generation.completedAt = at
            try db.run(
                sql: "UPDATE generations SET state = 'canceled', completed_at = ? WHERE id = ?",
                arguments: [at.timeIntervalSince1970, id.rawValue])
            try Self.appendEvent(db, generation, .canceled, at: at)
            return generation
        }
    }

    public func lease(sequence: Int64, to worker: WorkerRecord, at: Date, ttl: Double, start: Bool) async throws -> Generation? {
        try await write { db in
            // Resolve the alias now, in the same transaction: the generation records what it runs.
            if let row = try Row.fetchOne(
                db, cached: "SELECT id, model, alias FROM generations WHERE seq = ? AND state = 'queued' AND version IS NULL",
                arguments: [sequence]),
                let aliasName = row["alias"] as String?,
                let alias = try Self.fetchAlias(db, aliasName, of: row["model"]),
                let version = alias.resolve(for: GenerationID(unchecked: row["id"]))
            {
                try db.run(sql: "UPDATE generations SET version = ? WHERE seq = ?", arguments: [version.description, sequence])
            }
            let time = at.timeIntervalSince1970
            guard
                let generation = try Row.fetchOne(
                    db,
                    cached: """
                        UPDATE generations SET state = 'running', attempts = attempts + 1, lease_token = lease_token + 1,
                            lease_worker = :worker, lease_cluster = :cluster, leased_at = :at, lease_expires_at = :expires,
                            lease_started_at = CASE WHEN :start THEN :at END, lease_acked = :start,
                            started_at = CASE WHEN :start THEN COALESCE(started_at, :at) ELSE started_at END,
                            progress_fraction = 0, progress_stage = CASE WHEN :start THEN 'started' ELSE 'dispatched' END
                        WHERE seq = :sequence AND state = 'queued'
                        RETURNING *
                        """,
                    arguments: [
                        "worker": worker.id.rawValue, "cluster": worker.cluster, "at": time,
                        "expires": (at + ttl).timeIntervalSince1970, "start": start, "sequence": sequence,
                    ]
                ).map(Self.generation(from:))
            else { return nil }
            try Self.appendEvent(
                db, generation, start ? .started : .leased, at: at, message: "attempt \(generation.attempts) on \(worker.id)")
            return generation
        }
    }

    public func start(_ id: GenerationID, worker: WorkerID, token: FencingToken, at: Date, ttl: Double) async throws
        -> Generation
    {
        try await write { db in
            var generation = try Self.holding(db, id, worker: worker, token: token, allowCanceled: false)
            guard generation.lease?.startedAt == nil else {
                // A retried start only extends the lease.
                try db.run(
                    sql: "UPDATE generations SET lease_expires_at = ?, lease_acked = 1 WHERE id = ?",
                    arguments: [(at + ttl).timeIntervalSince1970, id.rawValue])
                generation.lease?.expiresAt = at + ttl
                return generation
            }
            try db.run(
                sql: """
                    UPDATE generations SET lease_started_at = ?, started_at = COALESCE(started_at, ?), lease_expires_at = ?,
                        progress_stage = 'started', lease_acked = 1
                    WHERE id = ?
                    """,
                arguments: [at.timeIntervalSince1970, at.timeIntervalSince1970, (at + ttl).timeIntervalSince1970, id.rawValue])
            generation = try Self.fetchGeneration(db, id: id)!
            try Self.appendEvent(db, generation, .started, at: at)
            return generation
        }
    }

    public func heartbeat(
        _ id: GenerationID, worker: WorkerID, token: FencingToken, progress: JobProgress?, at: Date, ttl: Double
    ) async throws -> Generation {
        try await write { db in
            var generation = try Self.holding(db, id, worker: worker, token: token, allowCanceled: true)
            guard generation.state == .running else { return generation }
            try db.run(
                sql: "UPDATE generations SET lease_expires_at = ?, lease_acked = 1 WHERE id = ?",
                arguments: [(at + ttl).timeIntervalSince1970, id.rawValue])
            generation.lease?.acknowledged = true
            if let progress, progress != generation.progress {
                try db.run(
                    sql: "UPDATE generations SET progress_fraction = ?, progress_stage = ? WHERE id = ?",
                    arguments: [progress.fraction, progress.stage, id.rawValue])
                generation.progress = progress
                try Self.appendEvent(db, generation, .progress, at: at)
            }
            generation.lease?.expiresAt = at + ttl
            return generation
        }
    }

    public func attachOutput(_ id: GenerationID, worker: WorkerID, token: FencingToken, name: String, file: FileRecord)
        async throws
    {
        try await write { db in
            _ = try Self.holding(db, id, worker: worker, token: token, allowCanceled: false)
            try Self.insert(file, db)
            try db.run(
                sql: "INSERT OR REPLACE INTO job_outputs (generation_id, token, name, file_id) VALUES (?, ?, ?, ?)",
                arguments: [id.rawValue, token.value, name, file.id.rawValue])
        }
    }

    public func complete(_ id: GenerationID, worker: WorkerID, token: FencingToken, outputs: [String], at: Date)
        async throws -> Generation
    {
        try await write { db in
            var generation = try Self.holding(db, id, worker: worker, token: token, allowCanceled: false)
            var files: [String: OutputFile] = [:]
            for name in outputs {
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
            generation.state = .succeeded
            generation.output = files
            generation.completedAt = at
            generation.progress = JobProgress(fraction: 1, stage: "succeeded")
            try db.run(
                sql: """
                    UPDATE generations SET state = 'succeeded', output = ?, completed_at = ?, progress_fraction = 1,
                        progress_stage = 'succeeded'
                    WHERE id = ?
                    """,
                arguments: [Self.encode(files), at.timeIntervalSince1970, id.rawValue])
            try Self.appendEvent(db, generation, .succeeded, at: at)
            return generation
        }
    }

    public func fail(
        _ id: GenerationID, worker: WorkerID, token: FencingToken, error: JobFailure, retryable: Bool, at: Date
    ) async throws -> Generation {
        try await write { db in
            let generation = try Self.holding(db, id, worker: worker, token: token, allowCanceled: false)
            return try Self.endAttempt(db, generation, failure: error, retryable: retryable, at: at)
        }
    }

    public func expireLeases(at now: Date) async throws -> [Generation] {
        try await write { db in
            let expired = try Row.fetchAll(
                db, cached: "SELECT * FROM generations WHERE state = 'running' AND lease_expires_at < ? ORDER BY seq",
                arguments: [now.timeIntervalSince1970]
            ).map(Self.generation(from:))
            return try expired.map { generation in
                if let lease = generation.lease, !lease.acknowledged {
                    return try Self.returnUnacknowledged(db, generation, worker: lease.workerID, at: now)
                }
                let worker = generation.lease.map { " on \($0.workerID)" } ?? ""
                return try Self.endAttempt(
                    db, generation,
                    failure: JobFailure(
                        code: "lease_expired", message: "the worker\(worker) stopped sending heartbeats (attempt \(generation.attempts))"),
                    retryable: true, at: now)
            }
        }
    }

    public func oldestQueuedGeneration(of account: AccountID) async throws -> Generation? {
        try await pool.read { db in
            try Row.fetchOne(
                db, cached: "SELECT * FROM generations WHERE account_id = ? AND state = 'queued' ORDER BY queued_at, seq LIMIT 1",
                arguments: [account.rawValue]
            ).map(Self.generation(from:))
        }
    }

    public func queuedGenerations() async throws -> [Generation] {
        try await pool.read { db in
            try Row.fetchAll(db, cached: "SELECT * FROM generations WHERE state = 'queued' ORDER BY seq").map(Self.generation(from:))
        }
    }

    public func runningGenerations() async throws -> [Generation] {
        try await pool.read { db in
            try Row.fetchAll(db, cached: "SELECT * FROM generations WHERE state = 'running' ORDER BY seq").map(Self.generation(from:))
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

    // MARK: Lease checks and attempts

    /// The generation, if `worker` holds its lease with `token`.
    static func holding(_ db: Database, _ id: GenerationID, worker: WorkerID, token: FencingToken, allowCanceled: Bool)
        throws -> Generation
    {
        guard let generation = try fetchGeneration(db, id: id) else {
            throw KilnError(.notFound, "no generation '\(id)'")
        }
        guard let lease = generation.lease, lease.workerID == worker, lease.token == token else {
            throw KilnError(.staleLease, "the lease token \(token) of worker \(worker) no longer holds generation '\(id)'")
        }
        switch generation.state {
        case .running: return generation
        case .canceled where allowCanceled: return generation
        case .canceled: throw KilnError(.conflict, "generation '\(id)' was canceled")
        case .queued, .succeeded, .failed:
            throw KilnError(.staleLease, "generation '\(id)' is \(generation.state.rawValue); the lease no longer holds it")
        }
    }

    /// Puts back a generation whose lease never reached its worker, without counting the attempt.
    static func returnUnacknowledged(_ db: Database, _ generation: Generation, worker: WorkerID, at: Date) throws
        -> Generation
    {
        var generation = generation
        generation.state = .queued
        generation.lease = nil
        generation.attempts -= 1
        generation.progress = JobProgress(fraction: 0, stage: "requeued")
        try db.run(
            sql: """
                UPDATE generations SET state = 'queued', attempts = attempts - 1, lease_worker = NULL, lease_cluster = NULL,
                    leased_at = NULL, lease_expires_at = NULL, lease_started_at = NULL, progress_fraction = 0,
                    progress_stage = 'requeued'
                WHERE id = ?
                """, arguments: [generation.id.rawValue])
        try appendEvent(db, generation, .requeued, at: at, message: "the lease never reached worker \(worker); not counted as an attempt")
        return generation
    }

    /// Requeues (same `queuedAt`) or fails a running generation whose attempt ended.
    static func endAttempt(_ db: Database, _ generation: Generation, failure: JobFailure, retryable: Bool, at: Date)
        throws -> Generation
    {
        var generation = generation
        if RetryRule.requeues(attempts: generation.attempts, maxAttempts: generation.maxAttempts, retryable: retryable) {
            generation.state = .queued
            generation.lease = nil
            generation.progress = JobProgress(fraction: 0, stage: "requeued")
            try db.run(
                sql: """
                    UPDATE generations SET state = 'queued', lease_worker = NULL, lease_cluster = NULL, leased_at = NULL,
                        lease_expires_at = NULL, lease_started_at = NULL, progress_fraction = 0, progress_stage = 'requeued'
                    WHERE id = ?
                    """, arguments: [generation.id.rawValue])
            try appendEvent(db, generation, .requeued, at: at, message: "\(failure.code): \(failure.message)")
        } else {
            var failure = failure
            if retryable {
                failure.message += " — gave up after \(generation.attempts) attempts"
            }
            generation.state = .failed
            generation.error = failure
            generation.completedAt = at
            try db.run(
                sql: "UPDATE generations SET state = 'failed', error_code = ?, error_message = ?, completed_at = ? WHERE id = ?",
                arguments: [failure.code, failure.message, at.timeIntervalSince1970, generation.id.rawValue])
            try appendEvent(db, generation, .failed, at: at, message: "\(failure.code): \(failure.message)")
        }
        return generation
    }

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
