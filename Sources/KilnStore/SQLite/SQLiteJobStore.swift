import Foundation
import GRDB
import KilnCore

/// The embedded ``JobStore``: one SQLite database in write-ahead-log mode (GRDB's `DatabasePool`),
/// so readers never wait for the writer. Each change runs in its own savepoint; changes that arrive
/// together share one transaction and one fsync (``GroupCommit``), with `synchronous = FULL` on the
/// writing connection, so an acknowledged change survives a power loss, not only a crash.
public final class SQLiteJobStore: JobStore {
    let pool: DatabasePool
    private let writer: GroupCommit

    /// Opens (creating and migrating when needed) the database at `path`.
    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        pool = try DatabasePool(path: path, configuration: configuration)
        // After the pool is open: its write-ahead-log set-up runs on the writer after
        // `prepareDatabase` and sets `synchronous = NORMAL`, which would override one set there.
        try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = FULL") }
        try SQLiteSchema.migrator.migrate(pool)
        writer = GroupCommit(pool: pool)
    }

    /// `PRAGMA synchronous` as the writing connection has it (2 is `FULL`).
    public func writerSynchronousMode() throws -> Int {
        try pool.writeWithoutTransaction { try Int.fetchOne($0, sql: "PRAGMA synchronous") ?? -1 }
    }

    // MARK: Accounts and keys

    public func createAccount(_ account: Account) async throws {
        try await write { db in
            try db.execute(
                sql: "INSERT INTO accounts (id, name, tier, created_at) VALUES (?, ?, ?, ?)",
                arguments: [account.id.rawValue, account.name, account.tier, account.createdAt.timeIntervalSince1970])
        }
    }

    public func account(_ id: AccountID) async throws -> Account? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM accounts WHERE id = ?", arguments: [id.rawValue]).map(Self.account(from:))
        }
    }

    public func accounts() async throws -> [Account] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM accounts ORDER BY created_at, id").map(Self.account(from:))
        }
    }

    public func updateAccountTier(_ id: AccountID, tier: String) async throws -> Account {
        try await write { db in
            try db.execute(sql: "UPDATE accounts SET tier = ? WHERE id = ?", arguments: [tier, id.rawValue])
            guard db.changesCount == 1,
                let row = try Row.fetchOne(db, sql: "SELECT * FROM accounts WHERE id = ?", arguments: [id.rawValue])
            else { throw KilnError(.notFound, "no account '\(id)'") }
            try Self.recordChange(db, .account, id.rawValue)
            return Self.account(from: row)
        }
    }

    public func createKey(_ key: APIKeyRecord) async throws {
        try await write { db in
            try db.execute(
                sql: "INSERT INTO api_keys (id, scope, account_id, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [
                    key.id.rawValue, key.scope.rawValue, key.accountID?.rawValue, key.secretHash,
                    key.createdAt.timeIntervalSince1970,
                ])
        }
    }

    public func key(secretHash: String) async throws -> APIKeyRecord? {
        try await pool.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM api_keys WHERE secret_hash = ?", arguments: [secretHash])
            else { return nil }
            return APIKeyRecord(
                id: KeyID(unchecked: row["id"]), scope: KeyScope(rawValue: row["scope"]) ?? .user,
                accountID: (row["account_id"] as String?).map(AccountID.init(unchecked:)), secretHash: row["secret_hash"],
                createdAt: Date(timeIntervalSince1970: row["created_at"]),
                revokedAt: (row["revoked_at"] as Double?).map(Date.init(timeIntervalSince1970:)))
        }
    }

    public func revokeKey(_ id: KeyID, at: Date) async throws {
        try await write { db in
            try db.execute(
                sql: "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                arguments: [at.timeIntervalSince1970, id.rawValue])
            guard db.changesCount == 1 else { throw KilnError(.notFound, "no key '\(id)'") }
            try Self.recordChange(db, .key, id.rawValue)
        }
    }

    // MARK: Models and files

    public func createModel(_ model: ModelRecord) async throws {
        try await write { db in
            if try Bool.fetchOne(db, sql: "SELECT 1 FROM models WHERE name = ?", arguments: [model.name]) == true {
                throw KilnError(.conflict, "a model named '\(model.name)' already exists")
            }
            try db.execute(
                sql: "INSERT INTO models (name, description, input_schema, created_at) VALUES (?, ?, ?, ?)",
                arguments: [model.name, model.description, model.inputSchema?.canonicalJSON(), model.createdAt.timeIntervalSince1970])
        }
    }

    public func model(named name: String) async throws -> ModelRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM models WHERE name = ?", arguments: [name]).map(Self.model(from:))
        }
    }

    public func models() async throws -> [ModelRecord] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM models ORDER BY name").map(Self.model(from:))
        }
    }

    public func createFile(_ file: FileRecord) async throws {
        try await write { db in try Self.insert(file, db) }
    }

    public func file(_ id: FileID) async throws -> FileRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM files WHERE id = ?", arguments: [id.rawValue]).map(Self.file(from:))
        }
    }

    // MARK: Model repository

    public func createVersion(_ version: ModelVersionRecord) async throws -> Bool {
        try await write { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM models WHERE name = ?", arguments: [version.model]) == true else {
                throw KilnError(.notFound, "no model named '\(version.model)'")
            }
            if let model = try String.fetchOne(db, sql: "SELECT model FROM model_versions WHERE id = ?", arguments: [version.id.description]) {
                guard model == version.model else {
                    throw KilnError(.conflict, "version \(version.id) already belongs to model '\(model)'")
                }
                return false
            }
            try db.execute(
                sql: "INSERT INTO model_versions (id, model, manifest, created_at) VALUES (?, ?, ?, ?)",
                arguments: [version.id.description, version.model, version.manifest, version.createdAt.timeIntervalSince1970])
            try Self.recordChange(db, .model, version.model)
            return true
        }
    }

    public func version(_ id: Digest) async throws -> ModelVersionRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM model_versions WHERE id = ?", arguments: [id.description]).map(Self.version(from:))
        }
    }

    public func versions(of model: String) async throws -> [ModelVersionRecord] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM model_versions WHERE model = ? ORDER BY created_at DESC, id", arguments: [model]
            ).map(Self.version(from:))
        }
    }

    public func alias(_ name: String, of model: String) async throws -> AliasRecord? {
        try await pool.read { db in try Self.fetchAlias(db, name, of: model) }
    }

    public func aliases(of model: String) async throws -> [AliasRecord] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM aliases WHERE model = ? ORDER BY name", arguments: [model]).map(Self.alias(from:))
        }
    }

    public func moveAlias(_ name: String, of model: String, to targets: [AliasTarget], at: Date) async throws -> AliasRecord {
        try AliasRecord.validate(targets)
        return try await write { db in
            for target in targets {
                let owner = try String.fetchOne(
                    db, sql: "SELECT model FROM model_versions WHERE id = ?", arguments: [target.version.description])
                guard owner == model else {
                    throw KilnError(.invalidInput, "targets: \(target.version) is not a version of model '\(model)'")
                }
            }
            return try Self.setAlias(db, name, of: model, targets: targets, action: targets.count == 1 ? .promote : .split, at: at)
        }
    }

    public func rollbackAlias(_ name: String, of model: String, at: Date) async throws -> AliasRecord {
        try await write { db in
            guard try Self.fetchAlias(db, name, of: model) != nil else {
                throw KilnError(.notFound, "model '\(model)' has no alias '\(name)'")
            }
            guard let previous = AliasChange.rollbackTarget(history: try Self.fetchHistory(db, name, of: model)) else {
                throw KilnError(.conflict, "alias '\(name)' of model '\(model)' has nothing to roll back to")
            }
            return try Self.setAlias(db, name, of: model, targets: previous, action: .rollback, at: at)
        }
    }

    public func aliasHistory(_ name: String, of model: String) async throws -> [AliasChange] {
        try await pool.read { db in try Self.fetchHistory(db, name, of: model) }
    }

    private static func setAlias(
        _ db: Database, _ name: String, of model: String, targets: [AliasTarget], action: AliasChange.Action, at: Date
    ) throws -> AliasRecord {
        let encoded = encode(targets)
        try db.execute(
            sql: """
                INSERT INTO aliases (model, name, targets, updated_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (model, name) DO UPDATE SET targets = excluded.targets, updated_at = excluded.updated_at
                """,
            arguments: [model, name, encoded, at.timeIntervalSince1970])
        try db.execute(
            sql: "INSERT INTO alias_history (model, alias, action, targets, at) VALUES (?, ?, ?, ?, ?)",
            arguments: [model, name, action.rawValue, encoded, at.timeIntervalSince1970])
        try recordChange(db, .alias, "\(model)/\(name)")
        return AliasRecord(model: model, name: name, targets: targets, updatedAt: at)
    }

    private static func fetchAlias(_ db: Database, _ name: String, of model: String) throws -> AliasRecord? {
        try Row.fetchOne(db, sql: "SELECT * FROM aliases WHERE model = ? AND name = ?", arguments: [model, name]).map(alias(from:))
    }

    private static func fetchHistory(_ db: Database, _ name: String, of model: String) throws -> [AliasChange] {
        try Row.fetchAll(
            db, sql: "SELECT * FROM alias_history WHERE model = ? AND alias = ? ORDER BY seq", arguments: [model, name]
        ).map { row in
            AliasChange(
                sequence: row["seq"], model: row["model"], alias: row["alias"],
                action: AliasChange.Action(rawValue: row["action"]) ?? .promote, targets: decode(row["targets"]) ?? [],
                at: Date(timeIntervalSince1970: row["at"]))
        }
    }

    private static func version(from row: Row) -> ModelVersionRecord {
        ModelVersionRecord(
            id: Digest(row["id"] as String)!, model: row["model"], manifest: row["manifest"],
            createdAt: Date(timeIntervalSince1970: row["created_at"]))
    }

    private static func alias(from row: Row) -> AliasRecord {
        AliasRecord(
            model: row["model"], name: row["name"], targets: decode(row["targets"]) ?? [],
            updatedAt: Date(timeIntervalSince1970: row["updated_at"]))
    }

    // MARK: Workers

    public func registerWorker(_ worker: WorkerRecord) async throws {
        try await write { db in
            try db.execute(
                sql: """
                    INSERT INTO workers (id, cluster, accelerator, gpus, labels, state, key_id, registered_at, last_seen_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    worker.id.rawValue, worker.cluster, worker.accelerator, worker.gpus, Self.json(worker.labels),
                    worker.state.rawValue, worker.keyID?.rawValue, worker.registeredAt.timeIntervalSince1970,
                    worker.lastSeenAt.timeIntervalSince1970,
                ])
        }
    }

    public func worker(_ id: WorkerID) async throws -> WorkerRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM workers WHERE id = ?", arguments: [id.rawValue]).map(Self.worker(from:))
        }
    }

    public func workers() async throws -> [WorkerRecord] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM workers ORDER BY registered_at, id").map(Self.worker(from:))
        }
    }

    public func setWorkerState(_ id: WorkerID, _ state: WorkerRecord.State) async throws -> WorkerRecord {
        try await write { db in
            try db.execute(sql: "UPDATE workers SET state = ? WHERE id = ?", arguments: [state.rawValue, id.rawValue])
            guard db.changesCount == 1,
                let row = try Row.fetchOne(db, sql: "SELECT * FROM workers WHERE id = ?", arguments: [id.rawValue])
            else { throw KilnError(.notFound, "no worker '\(id)'") }
            try Self.recordChange(db, .worker, id.rawValue)
            return Self.worker(from: row)
        }
    }

    public func touchWorker(_ id: WorkerID, at: Date) async throws {
        try await write { db in
            try db.execute(
                sql: "UPDATE workers SET last_seen_at = ? WHERE id = ?", arguments: [at.timeIntervalSince1970, id.rawValue])
        }
    }

    // MARK: Generations

    public func submit(_ generation: Generation, admission: Admission, idempotency: IdempotencyClaim?) async throws
        -> Submission
    {
        try await write { db in
            if let idempotency,
                let row = try Row.fetchOne(
                    db, sql: "SELECT generation_id, request_hash FROM idempotency_keys WHERE account_id = ? AND key = ?",
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
                    db, sql: "SELECT COUNT(*) FROM generations WHERE account_id = ? AND state = 'queued'",
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
                    db, sql: "SELECT COUNT(*) FROM generations WHERE tier = ? AND state = 'queued'",
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
            try db.execute(
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
                try db.execute(
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
            try Row.fetchOne(db, sql: "SELECT * FROM generations WHERE seq = ?", arguments: [sequence]).map(Self.generation(from:))
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
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.generation(from:))
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
            try db.execute(
                sql: "UPDATE generations SET state = 'canceled', completed_at = ? WHERE id = ?",
                arguments: [at.timeIntervalSince1970, id.rawValue])
            try Self.appendEvent(db, generation, .canceled, at: at)
            return generation
        }
    }

    public func lease(sequence: Int64, to worker: WorkerRecord, at: Date, ttl: Double) async throws -> Generation? {
        try await write { db in
            // Resolve the alias now, in the same transaction: the generation records what it runs.
            if let row = try Row.fetchOne(
                db, sql: "SELECT id, model, alias FROM generations WHERE seq = ? AND state = 'queued' AND version IS NULL",
                arguments: [sequence]),
                let aliasName = row["alias"] as String?,
                let alias = try Self.fetchAlias(db, aliasName, of: row["model"]),
                let version = alias.resolve(for: GenerationID(unchecked: row["id"]))
            {
                try db.execute(sql: "UPDATE generations SET version = ? WHERE seq = ?", arguments: [version.description, sequence])
            }
            try db.execute(
                sql: """
                    UPDATE generations SET state = 'running', attempts = attempts + 1, lease_token = lease_token + 1,
                        lease_worker = ?, lease_cluster = ?, leased_at = ?, lease_expires_at = ?, lease_started_at = NULL, lease_acked = 0,
                        progress_fraction = 0, progress_stage = 'dispatched'
                    WHERE seq = ? AND state = 'queued'
                    """,
                arguments: [
                    worker.id.rawValue, worker.cluster, at.timeIntervalSince1970, (at + ttl).timeIntervalSince1970, sequence,
                ])
            guard db.changesCount == 1,
                let generation = try Row.fetchOne(db, sql: "SELECT * FROM generations WHERE seq = ?", arguments: [sequence])
                    .map(Self.generation(from:))
            else { return nil }
            try Self.appendEvent(db, generation, .leased, at: at, message: "attempt \(generation.attempts) on \(worker.id)")
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
                try db.execute(
                    sql: "UPDATE generations SET lease_expires_at = ?, lease_acked = 1 WHERE id = ?",
                    arguments: [(at + ttl).timeIntervalSince1970, id.rawValue])
                generation.lease?.expiresAt = at + ttl
                return generation
            }
            try db.execute(
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
            try db.execute(
                sql: "UPDATE generations SET lease_expires_at = ?, lease_acked = 1 WHERE id = ?",
                arguments: [(at + ttl).timeIntervalSince1970, id.rawValue])
            generation.lease?.acknowledged = true
            if let progress, progress != generation.progress {
                try db.execute(
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
            try db.execute(
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
                        sql: """
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
            try db.execute(
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
                db, sql: "SELECT * FROM generations WHERE state = 'running' AND lease_expires_at < ? ORDER BY seq",
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
                db, sql: "SELECT * FROM generations WHERE account_id = ? AND state = 'queued' ORDER BY queued_at, seq LIMIT 1",
                arguments: [account.rawValue]
            ).map(Self.generation(from:))
        }
    }

    public func queuedGenerations() async throws -> [Generation] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM generations WHERE state = 'queued' ORDER BY seq").map(Self.generation(from:))
        }
    }

    public func runningGenerations() async throws -> [Generation] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM generations WHERE state = 'running' ORDER BY seq").map(Self.generation(from:))
        }
    }

    public func events(of id: GenerationID, after: Int64, limit: Int) async throws -> [GenerationEvent] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM generation_events WHERE generation_id = ? AND seq > ? ORDER BY seq LIMIT ?",
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

    // MARK: - Change feed

    public func changes(after: Int64, limit: Int) async throws -> [StoreChange] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT sequence, record, key FROM changes WHERE sequence > ? ORDER BY sequence LIMIT ?",
                arguments: [after, limit]
            ).compactMap { row in
                StoreChange.Record(rawValue: row["record"]).map { StoreChange(sequence: row["sequence"], record: $0, key: row["key"]) }
            }
        }
    }

    public func latestChange() async throws -> Int64 {
        try await pool.read { db in try Int64.fetchOne(db, sql: "SELECT MAX(sequence) FROM changes") ?? 0 }
    }

    /// Appends to the change feed, in the transaction of the change itself.
    private static func recordChange(_ db: Database, _ record: StoreChange.Record, _ key: String) throws {
        try db.execute(sql: "INSERT INTO changes (record, key) VALUES (?, ?)", arguments: [record.rawValue, key])
    }

    // MARK: - Transactions

    private func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await writer.write(body)
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw KilnError(.conflict, "the change conflicts with stored data: \(error.message ?? "constraint failed")")
        }
    }

    /// The generation, if `worker` holds its lease with `token`.
    private static func holding(_ db: Database, _ id: GenerationID, worker: WorkerID, token: FencingToken, allowCanceled: Bool)
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
    private static func returnUnacknowledged(_ db: Database, _ generation: Generation, worker: WorkerID, at: Date) throws
        -> Generation
    {
        var generation = generation
        generation.state = .queued
        generation.lease = nil
        generation.attempts -= 1
        generation.progress = JobProgress(fraction: 0, stage: "requeued")
        try db.execute(
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
    private static func endAttempt(_ db: Database, _ generation: Generation, failure: JobFailure, retryable: Bool, at: Date)
        throws -> Generation
    {
        var generation = generation
        if RetryRule.requeues(attempts: generation.attempts, maxAttempts: generation.maxAttempts, retryable: retryable) {
            generation.state = .queued
            generation.lease = nil
            generation.progress = JobProgress(fraction: 0, stage: "requeued")
            try db.execute(
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
            try db.execute(
                sql: "UPDATE generations SET state = 'failed', error_code = ?, error_message = ?, completed_at = ? WHERE id = ?",
                arguments: [failure.code, failure.message, at.timeIntervalSince1970, generation.id.rawValue])
            try appendEvent(db, generation, .failed, at: at, message: "\(failure.code): \(failure.message)")
        }
        return generation
    }

    private static func appendEvent(_ db: Database, _ generation: Generation, _ kind: GenerationEvent.Kind, at: Date, message: String? = nil)
        throws
    {
        try db.execute(
            sql: """
                INSERT INTO generation_events (generation_id, kind, at, state, progress_fraction, progress_stage, message)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                generation.id.rawValue, kind.rawValue, at.timeIntervalSince1970, generation.state.rawValue,
                generation.progress.fraction, generation.progress.stage, message,
            ])
    }

    // MARK: - Rows

    private static func fetchGeneration(_ db: Database, id: GenerationID) throws -> Generation? {
        try Row.fetchOne(db, sql: "SELECT * FROM generations WHERE id = ?", arguments: [id.rawValue]).map(generation(from:))
    }

    private static func insert(_ file: FileRecord, _ db: Database) throws {
        try db.execute(
            sql: "INSERT INTO files (id, account_id, size, sha256, content_type, object_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            arguments: [
                file.id.rawValue, file.accountID.rawValue, file.size, file.sha256, file.contentType, file.objectKey,
                file.createdAt.timeIntervalSince1970,
            ])
    }

    static func generation(from row: Row) -> Generation {
        var lease: LeaseInfo?
        if let worker = row["lease_worker"] as String?, let leasedAt = row["leased_at"] as Double?,
            let expires = row["lease_expires_at"] as Double?
        {
            lease = LeaseInfo(
                workerID: WorkerID(unchecked: worker), cluster: row["lease_cluster"] ?? "", token: FencingToken(row["lease_token"] as Int64),
                leasedAt: Date(timeIntervalSince1970: leasedAt), expiresAt: Date(timeIntervalSince1970: expires),
                startedAt: (row["lease_started_at"] as Double?).map(Date.init(timeIntervalSince1970:)),
                acknowledged: (row["lease_acked"] as Int?) == 1)
        }
        var error: JobFailure?
        if let code = row["error_code"] as String? {
            error = JobFailure(code: code, message: row["error_message"] ?? "")
        }
        let input = (try? JSONValue.parse(row["input"]))?.objectValue ?? [:]
        let inputFiles: [String: String] = decode(row["input_files"]) ?? [:]
        return Generation(
            id: GenerationID(unchecked: row["id"]), sequence: row["seq"], accountID: AccountID(unchecked: row["account_id"]),
            model: row["model"], version: row["version"], alias: row["alias"], tier: row["tier"],
            accelerators: decode(row["accelerators"]) ?? [], gpus: row["gpus"],
            state: GenerationState(rawValue: row["state"]) ?? .failed, input: input,
            inputFiles: inputFiles.mapValues(FileID.init(unchecked:)),
            progress: JobProgress(fraction: row["progress_fraction"], stage: row["progress_stage"]),
            output: decode(row["output"]) ?? [:], error: error, attempts: row["attempts"], maxAttempts: row["max_attempts"],
            callbackURL: row["callback_url"], createdAt: Date(timeIntervalSince1970: row["created_at"]),
            queuedAt: Date(timeIntervalSince1970: row["queued_at"]),
            startedAt: (row["started_at"] as Double?).map(Date.init(timeIntervalSince1970:)),
            completedAt: (row["completed_at"] as Double?).map(Date.init(timeIntervalSince1970:)), lease: lease)
    }

    private static func account(from row: Row) -> Account {
        Account(
            id: AccountID(unchecked: row["id"]), name: row["name"], tier: row["tier"],
            createdAt: Date(timeIntervalSince1970: row["created_at"]))
    }

    private static func model(from row: Row) -> ModelRecord {
        ModelRecord(
            name: row["name"], description: row["description"],
            inputSchema: (row["input_schema"] as String?).flatMap { try? JSONValue.parse($0) },
            createdAt: Date(timeIntervalSince1970: row["created_at"]))
    }

    private static func file(from row: Row) -> FileRecord {
        FileRecord(
            id: FileID(unchecked: row["id"]), accountID: AccountID(unchecked: row["account_id"]), size: row["size"],
            sha256: row["sha256"], contentType: row["content_type"], objectKey: row["object_key"],
            createdAt: Date(timeIntervalSince1970: row["created_at"]))
    }

    private static func worker(from row: Row) -> WorkerRecord {
        WorkerRecord(
            id: WorkerID(unchecked: row["id"]), cluster: row["cluster"], accelerator: row["accelerator"], gpus: row["gpus"],
            labels: decode(row["labels"]) ?? [:], state: WorkerRecord.State(rawValue: row["state"]) ?? .active,
            keyID: (row["key_id"] as String?).map(KeyID.init(unchecked:)), registeredAt: Date(timeIntervalSince1970: row["registered_at"]),
            lastSeenAt: Date(timeIntervalSince1970: row["last_seen_at"]))
    }

    private static func json(_ value: [String: String]) -> String { encode(value) }

    private static func encode<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    private static func decode<T: Decodable>(_ text: String?) -> T? {
        guard let text else { return nil }
        return try? JSONDecoder().decode(T.self, from: Data(text.utf8))
    }
}
