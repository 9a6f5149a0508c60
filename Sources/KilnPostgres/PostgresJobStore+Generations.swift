import Foundation
import KilnCore
import KilnStore
import PostgresNIO

/// Generations: submission, the lease lifecycle, events.
extension PostgresJobStore {
    public func submit(_ generation: Generation, admission: Admission, idempotency: IdempotencyClaim?) async throws
        -> Submission
    {
        try await write { session in
            // Admission is serialized per account, and per tier for the tier's cap, with
            // transaction-scoped advisory locks rather than `FOR UPDATE` on the account row: the
            // tier has no row to lock, and tier changes of the account need not wait for
            // submissions. Always account before tier, so that two submissions never wait on each
            // other. The account lock also makes a repeated idempotency key find the first one.
            if idempotency != nil || admission.maxQueuedPerAccount != nil {
                try await session.lock(.account, generation.accountID.rawValue)
            }
            if admission.maxQueuedInTier != nil { try await session.lock(.tier, generation.tier) }
            if let idempotency,
                let row = try await session.row(
                    """
                    SELECT generation_id, request_hash FROM idempotency_keys
                    WHERE account_id = \(generation.accountID.rawValue) AND key = \(idempotency.key)
                    """)
            {
                guard try row.value("request_hash", as: String.self) == idempotency.requestHash else {
                    throw KilnError.idempotencyKeyReused(idempotency.key)
                }
                let id = GenerationID(unchecked: try row.value("generation_id"))
                guard let existing = try await Self.fetchGeneration(session, id: id) else {
                    throw KilnError(.internal, "Idempotency-Key '\(idempotency.key)' names generation '\(id)', which is not stored")
                }
                return Submission(generation: existing, created: false)
            }
            if let cap = admission.maxQueuedPerAccount {
                let queued = try await session.value(
                    "SELECT COUNT(*) FROM generations WHERE account_id = \(generation.accountID.rawValue) AND state = 'queued'",
                    as: Int.self) ?? 0
                if queued >= cap { throw KilnError.accountQueueFull(queued: queued, cap: cap, tier: generation.tier) }
            }
            if let cap = admission.maxQueuedInTier {
                let queued = try await session.value(
                    "SELECT COUNT(*) FROM generations WHERE tier = \(generation.tier) AND state = 'queued'", as: Int.self) ?? 0
                if queued >= cap { throw KilnError.tierQueueFull(queued: queued, cap: cap, tier: generation.tier) }
            }
            var stored = generation.asSubmitted
            let created = stored.createdAt.timeIntervalSince1970
            // The generation and its `queued` event in one round trip.
            let sequence = try await session.value(
                """
                WITH inserted AS (
                    INSERT INTO generations (id, account_id, model, version, alias, tier, accelerators, gpus, state, input,
                        input_files, progress_fraction, progress_stage, output, attempts, max_attempts, callback_url,
                        callback_events, created_at, queued_at)
                    VALUES (\(stored.id.rawValue), \(stored.accountID.rawValue), \(stored.model), \(stored.version), \(stored.alias),
                        \(stored.tier), \(JSONColumn.encode(stored.accelerators)), \(stored.gpus), 'queued',
                        \(JSONValue.object(stored.input).canonicalJSON()), \(JSONColumn.encode(stored.inputFiles.mapValues(\.rawValue))),
                        0, '', '{}', 0, \(stored.maxAttempts), \(stored.callbackURL),
                        \(stored.callbackEvents.isEmpty ? nil : JSONColumn.encode(stored.callbackEvents)), \(created),
                        \(stored.queuedAt.timeIntervalSince1970))
                    RETURNING seq),
                event AS (
                    INSERT INTO generation_events (generation_id, kind, at, state, progress_fraction, progress_stage)
                    VALUES (\(stored.id.rawValue), \(GenerationEvent.Kind.queued.rawValue), \(created), 'queued', 0, ''))
                SELECT seq FROM inserted
                """, as: Int64.self)
            guard let sequence else { throw KilnError(.internal, "inserting generation '\(stored.id)' returned no sequence") }
            stored.sequence = sequence
            if let idempotency {
                try await session.run(
                    """
                    INSERT INTO idempotency_keys (account_id, key, request_hash, generation_id, created_at)
                    VALUES (\(stored.accountID.rawValue), \(idempotency.key), \(idempotency.requestHash), \(stored.id.rawValue), \(created))
                    """)
            }
            return Submission(generation: stored, created: true)
        }
    }

    public func generation(_ id: GenerationID) async throws -> Generation? {
        try await autocommit { session in try await Self.fetchGeneration(session, id: id) }
    }

    public func generation(sequence: Int64) async throws -> Generation? {
        try await autocommit { session in
            try await session.row("SELECT \(unescaped: Self.generationColumns) FROM generations WHERE seq = \(sequence)")
                .map(Self.generation(from:))
        }
    }

    public func generations(of account: AccountID, state: GenerationState?, limit: Int, before: Int64?) async throws
        -> [Generation]
    {
        try await autocommit { session in
            try await session.rows(
                """
                SELECT \(unescaped: Self.generationColumns) FROM generations
                WHERE account_id = \(account.rawValue) AND (\(state?.rawValue)::TEXT IS NULL OR state = \(state?.rawValue))
                    AND (\(before)::BIGINT IS NULL OR seq < \(before))
                ORDER BY seq DESC LIMIT \(limit)
                """
            ).map(Self.generation(from:))
        }
    }

    public func cancel(_ id: GenerationID, at: Date) async throws -> Generation {
        try await transition(id, at: at) { try Lifecycle.cancel($0, at: at) }
    }

    public func lease(sequence: Int64, to worker: WorkerRecord, at: Date, ttl: Double, start: Bool) async throws -> Generation? {
        try await write { session in
            guard
                let row = try await session.row(
                    "SELECT \(unescaped: Self.generationColumns) FROM generations WHERE seq = \(sequence) FOR UPDATE")
            else { return nil }
            let generation = try Self.generation(from: row)
            guard generation.state == .queued else { return nil }
            let token: Int64 = try row.value("lease_token")
            // Resolve the alias now, in the same transaction: the generation records what it runs.
            var version: String?
            if generation.version == nil, let aliasName = generation.alias,
                let alias = try await Self.fetchAlias(session, aliasName, of: generation.model)
            {
                version = alias.resolve(for: generation.id)?.description
            }
            let transition = try Lifecycle.lease(
                generation, to: worker.id, cluster: worker.cluster, token: FencingToken.next(after: FencingToken(token)),
                version: version, at: at, ttl: ttl, start: start)
            return try await Self.persist(session, transition, from: generation, token: token, at: at)
        }
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
        try await write { session in
            guard let (generation, _) = try await Self.fetchForTransition(session, id: id) else {
                throw KilnError(.notFound, "no generation '\(id)'")
            }
            try Lifecycle.holding(generation, worker: worker, token: token, allowCanceled: false)
            // An upload of the same name by the same attempt replaces the earlier one.
            if let replaced = try await session.row(
                """
                SELECT f.id, f.object_key FROM job_outputs o JOIN files f ON f.id = o.file_id
                WHERE o.generation_id = \(id.rawValue) AND o.token = \(token.value) AND o.name = \(name)
                """)
            {
                try await Self.doom(session, fileID: try replaced.value("id"), objectKey: try replaced.value("object_key"), at: file.createdAt)
            }
            try await Self.insert(file, session)
            try await session.run(
                """
                INSERT INTO job_outputs (generation_id, token, name, file_id)
                VALUES (\(id.rawValue), \(token.value), \(name), \(file.id.rawValue))
                """)
        }
    }

    public func complete(_ id: GenerationID, worker: WorkerID, token: FencingToken, outputs: [String], at: Date)
        async throws -> Generation
    {
        try await write { session in
            guard let (generation, held) = try await Self.fetchForTransition(session, id: id) else {
                throw KilnError(.notFound, "no generation '\(id)'")
            }
            // The lease first: a stale token is told so, whatever outputs it names.
            try Lifecycle.holding(generation, worker: worker, token: token, allowCanceled: false)
            var files: [String: OutputFile] = [:]
            if !outputs.isEmpty {
                let attached = try await session.rows(
                    """
                    SELECT o.name, f.id, f.content_type, f.size FROM job_outputs o JOIN files f ON f.id = o.file_id
                    WHERE o.generation_id = \(id.rawValue) AND o.token = \(token.value) AND o.name = ANY(\(outputs))
                    """)
                for row in attached {
                    files[try row.value("name")] = OutputFile(
                        fileID: FileID(unchecked: try row.value("id")), contentType: try row.value("content_type"),
                        size: try row.value("size"))
                }
                if let missing = outputs.first(where: { files[$0] == nil }) {
                    throw KilnError(.invalidInput, "outputs: '\(missing)' was not uploaded for this lease")
                }
            }
            let transition = try Lifecycle.complete(generation, worker: worker, token: token, outputs: files, at: at)
            return try await Self.persist(session, transition, from: generation, token: held, at: at)
        }
    }

    public func fail(
        _ id: GenerationID, worker: WorkerID, token: FencingToken, error: JobFailure, retryable: Bool, at: Date
    ) async throws -> Generation {
        try await transition(id, at: at) {
            try Lifecycle.fail($0, worker: worker, token: token, error: error, retryable: retryable, at: at)
        }
    }

    public func expireLeases(at now: Date) async throws -> [Generation] {
        try await write { session in
            // Rows another server is changing are waited for, then checked again against the
            // condition (read committed): one that was heartbeated meanwhile is not expired.
            let expired = try await session.rows(
                """
                SELECT \(unescaped: Self.generationColumns) FROM generations
                WHERE state = 'running' AND lease_expires_at < \(now.timeIntervalSince1970) ORDER BY seq FOR UPDATE
                """)
            var changed: [Generation] = []
            for row in expired {
                let generation = try Self.generation(from: row)
                changed.append(
                    try await Self.persist(
                        session, Lifecycle.expire(generation, at: now), from: generation, token: try row.value("lease_token"), at: now))
            }
            return changed
        }
    }

    public func renewLeases(until expiry: Date) async throws -> Int {
        try await autocommit { session in
            try await session.run(
                """
                UPDATE generations SET lease_expires_at = \(expiry.timeIntervalSince1970)
                WHERE state = 'running' AND lease_expires_at < \(expiry.timeIntervalSince1970) RETURNING 1
                """)
        }
    }

    public func releaseLeases(of worker: WorkerID, reason: String, at: Date) async throws -> [Generation] {
        try await write { session in
            let held = try await session.rows(
                """
                SELECT \(unescaped: Self.generationColumns) FROM generations
                WHERE lease_worker = \(worker.rawValue) AND state = 'running' ORDER BY seq FOR UPDATE
                """)
            var released: [Generation] = []
            for row in held {
                let generation = try Self.generation(from: row)
                released.append(
                    try await Self.persist(
                        session, Lifecycle.release(generation, reason: reason), from: generation, token: try row.value("lease_token"),
                        at: at))
            }
            return released
        }
    }

    public func oldestQueuedGeneration(of account: AccountID) async throws -> Generation? {
        try await autocommit { session in
            try await session.row(
                """
                SELECT \(unescaped: Self.generationColumns) FROM generations
                WHERE account_id = \(account.rawValue) AND state = 'queued' ORDER BY queued_at, seq LIMIT 1
                """
            ).map(Self.generation(from:))
        }
    }

    public func queuedGenerations() async throws -> [Generation] {
        try await autocommit { session in
            try await session.rows("SELECT \(unescaped: Self.generationColumns) FROM generations WHERE state = 'queued' ORDER BY seq")
                .map(Self.generation(from:))
        }
    }

    public func runningGenerations() async throws -> [Generation] {
        try await autocommit { session in
            try await session.rows("SELECT \(unescaped: Self.generationColumns) FROM generations WHERE state = 'running' ORDER BY seq")
                .map(Self.generation(from:))
        }
    }

    public func events(of id: GenerationID, after: Int64, limit: Int) async throws -> [GenerationEvent] {
        try await autocommit { session in
            try await session.rows(
                """
                SELECT seq, generation_id, kind, at, state, progress_fraction, progress_stage, message FROM generation_events
                WHERE generation_id = \(id.rawValue) AND seq > \(after) ORDER BY seq LIMIT \(limit)
                """
            ).map { row in
                GenerationEvent(
                    sequence: try row.value("seq"), generationID: GenerationID(unchecked: try row.value("generation_id")),
                    kind: GenerationEvent.Kind(rawValue: try row.value("kind")) ?? .progress, at: try row.date("at"),
                    state: GenerationState(rawValue: try row.value("state")) ?? .queued,
                    progress: JobProgress(fraction: try row.value("progress_fraction"), stage: try row.value("progress_stage")),
                    message: try row.value("message"))
            }
        }
    }

    // MARK: Transitions

    /// Locks the generation, applies `change` (one of ``Lifecycle``'s functions) and persists it.
    func transition(_ id: GenerationID, at: Date, _ change: (Generation) throws -> Transition) async throws -> Generation {
        try await write { session in
            guard let (generation, token) = try await Self.fetchForTransition(session, id: id) else {
                throw KilnError(.notFound, "no generation '\(id)'")
            }
            return try await Self.persist(session, change(generation), from: generation, token: token, at: at)
        }
    }

    static func fetchGeneration(_ session: PostgresSession, id: GenerationID) async throws -> Generation? {
        try await session.row("SELECT \(unescaped: generationColumns) FROM generations WHERE id = \(id.rawValue)").map(generation(from:))
    }

    /// The generation, locked until the transaction ends, and the last fencing token issued for it
    /// (kept while it is not leased).
    static func fetchForTransition(_ session: PostgresSession, id: GenerationID) async throws -> (Generation, Int64)? {
        guard
            let row = try await session.row(
                "SELECT \(unescaped: generationColumns) FROM generations WHERE id = \(id.rawValue) FOR UPDATE")
        else { return nil }
        return (try generation(from: row), try row.value("lease_token"))
    }

    /// Writes a transition of `before` (read with fencing token `token`) and its event: one
    /// conditional update of every column a transition may change, refused unless the row still
    /// has the state and token it was read with, and the event inserted by the same statement.
    static func persist(_ session: PostgresSession, _ transition: Transition, from before: Generation, token: Int64, at: Date)
        async throws -> Generation
    {
        let after = transition.generation
        let event = transition.event
        if after != before {
            let lease = after.lease
            var binds = PostgresBindings(capacity: 28)
            binds.append(after.state.rawValue)  // $1
            binds.append(after.version)
            binds.append(after.attempts)
            binds.append(lease?.token.value ?? token)
            binds.append(lease?.workerID.rawValue)  // $5
            binds.append(lease?.cluster)
            binds.append(lease?.leasedAt.timeIntervalSince1970)
            binds.append(lease?.expiresAt.timeIntervalSince1970)
            binds.append(lease?.startedAt?.timeIntervalSince1970)
            binds.append(lease?.acknowledged ?? false)  // $10
            binds.append(after.progress.fraction)
            binds.append(after.progress.stage)
            binds.append(after.output.isEmpty ? "{}" : JSONColumn.encode(after.output))
            binds.append(after.error?.code)
            binds.append(after.error?.message)  // $15
            binds.append(after.startedAt?.timeIntervalSince1970)
            binds.append(after.completedAt?.timeIntervalSince1970)
            binds.append(after.unacknowledgedLeases)
            binds.append(after.id.rawValue)
            binds.append(before.state.rawValue)  // $20
            binds.append(token)
            var sql = """
                UPDATE generations SET state = $1, version = $2, attempts = $3, lease_token = $4, lease_worker = $5,
                    lease_cluster = $6, leased_at = $7, lease_expires_at = $8, lease_started_at = $9, lease_acked = $10,
                    progress_fraction = $11, progress_stage = $12, output = $13, error_code = $14, error_message = $15,
                    started_at = $16, completed_at = $17, unacknowledged_leases = $18
                WHERE id = $19 AND state = $20 AND lease_token = $21
                RETURNING id
                """
            if let event {
                binds.append(event.rawValue)  // $22
                binds.append(at.timeIntervalSince1970)
                binds.append(transition.message)
                sql = """
                    WITH updated AS (\(sql))
                    INSERT INTO generation_events (generation_id, kind, at, state, progress_fraction, progress_stage, message)
                    SELECT id, $22, $23, $1, $11, $12, $24 FROM updated
                    RETURNING generation_id
                    """
            }
            guard try await session.run(PostgresQuery(unsafeSQL: sql, binds: binds)) == 1 else {
                throw KilnError.generationChanged(after.id)
            }
        } else if let event {
            try await appendEvent(session, after, event, at: at, message: transition.message)
        }
        if after.state.isFinal, !before.state.isFinal { try await settleOutputs(session, of: after, at: at) }
        if let event { try await enqueueWebhook(session, for: after, event: event, at: at) }
        return after
    }

    static func appendEvent(
        _ session: PostgresSession, _ generation: Generation, _ kind: GenerationEvent.Kind, at: Date, message: String? = nil
    ) async throws {
        try await session.run(
            """
            INSERT INTO generation_events (generation_id, kind, at, state, progress_fraction, progress_stage, message)
            VALUES (\(generation.id.rawValue), \(kind.rawValue), \(at.timeIntervalSince1970), \(generation.state.rawValue),
                \(generation.progress.fraction), \(generation.progress.stage), \(message))
            """)
    }
}
