import Foundation
import KilnCore
import PostgresNIO

/// The PostgreSQL schema, as an ordered list of versioned migrations, recorded in
/// `kiln_migrations`. Version 1 is the SQLite schema as its migrations left it (v1 to v10),
/// translated: times are seconds since the epoch (`DOUBLE PRECISION`, as SQLite's `REAL`, so that
/// a time reads back exactly as it was written); JSON columns are `TEXT` holding the same
/// canonical, key-sorted JSON (compared as text, never queried into); sequences are `BIGINT`
/// identities; integers are `BIGINT`; manifests are `BYTEA`.
enum PostgresSchema {
    struct Migration {
        var version: Int
        var name: String
        /// Run in order, in the migration's transaction.
        var statements: [String]
    }

    static let migrations: [Migration] = [
        Migration(
            version: 1, name: "schema",
            statements: [
                """
                CREATE TABLE accounts (
                    id TEXT PRIMARY KEY, name TEXT NOT NULL, tier TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)
                """,
                """
                CREATE TABLE api_keys (
                    id TEXT PRIMARY KEY, scope TEXT NOT NULL, account_id TEXT REFERENCES accounts(id),
                    secret_hash TEXT NOT NULL UNIQUE, created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION)
                """,
                """
                CREATE TABLE models (
                    name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '', input_schema TEXT,
                    created_at DOUBLE PRECISION NOT NULL)
                """,
                """
                CREATE TABLE files (
                    id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), size BIGINT NOT NULL,
                    sha256 TEXT NOT NULL, content_type TEXT NOT NULL, object_key TEXT NOT NULL,
                    created_at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL DEFAULT 'upload')
                """,
                "CREATE INDEX files_by_account ON files(account_id, kind)",
                "CREATE INDEX files_by_age ON files(created_at, id)",
                """
                CREATE TABLE workers (
                    id TEXT PRIMARY KEY, cluster TEXT NOT NULL, accelerator TEXT NOT NULL, gpus BIGINT NOT NULL,
                    labels TEXT NOT NULL, pool TEXT, state TEXT NOT NULL, key_id TEXT,
                    registered_at DOUBLE PRECISION NOT NULL, last_seen_at DOUBLE PRECISION NOT NULL)
                """,
                """
                CREATE TABLE generations (
                    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    id TEXT NOT NULL UNIQUE,
                    account_id TEXT NOT NULL REFERENCES accounts(id),
                    model TEXT NOT NULL, version TEXT, alias TEXT, tier TEXT NOT NULL,
                    accelerators TEXT NOT NULL DEFAULT '[]', gpus BIGINT NOT NULL DEFAULT 0,
                    state TEXT NOT NULL,
                    input TEXT NOT NULL, input_files TEXT NOT NULL,
                    progress_fraction DOUBLE PRECISION NOT NULL, progress_stage TEXT NOT NULL,
                    output TEXT NOT NULL, error_code TEXT, error_message TEXT,
                    attempts BIGINT NOT NULL, max_attempts BIGINT NOT NULL,
                    unacknowledged_leases BIGINT NOT NULL DEFAULT 0,
                    callback_url TEXT, callback_events TEXT,
                    created_at DOUBLE PRECISION NOT NULL, queued_at DOUBLE PRECISION NOT NULL,
                    started_at DOUBLE PRECISION, completed_at DOUBLE PRECISION,
                    lease_token BIGINT NOT NULL DEFAULT 0, lease_worker TEXT, lease_cluster TEXT,
                    leased_at DOUBLE PRECISION, lease_expires_at DOUBLE PRECISION, lease_started_at DOUBLE PRECISION,
                    lease_acked BOOLEAN NOT NULL DEFAULT FALSE)
                """,
                "CREATE INDEX generations_by_account ON generations(account_id, seq)",
                "CREATE INDEX generations_by_account_state ON generations(account_id, state)",
                "CREATE INDEX generations_by_state ON generations(state, tier)",
                "CREATE INDEX generations_by_lease ON generations(state, lease_expires_at)",
                "CREATE INDEX generations_by_worker ON generations(lease_worker, state)",
                """
                CREATE TABLE idempotency_keys (
                    account_id TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL,
                    generation_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
                    PRIMARY KEY (account_id, key))
                """,
                """
                CREATE TABLE job_outputs (
                    generation_id TEXT NOT NULL, token BIGINT NOT NULL, name TEXT NOT NULL,
                    file_id TEXT NOT NULL REFERENCES files(id),
                    PRIMARY KEY (generation_id, token, name))
                """,
                "CREATE INDEX job_outputs_by_file ON job_outputs(file_id)",
                """
                CREATE TABLE generation_events (
                    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    generation_id TEXT NOT NULL, kind TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL,
                    progress_fraction DOUBLE PRECISION NOT NULL, progress_stage TEXT NOT NULL, message TEXT)
                """,
                "CREATE INDEX generation_events_by_generation ON generation_events(generation_id, seq)",
                """
                CREATE TABLE model_versions (
                    id TEXT PRIMARY KEY, model TEXT NOT NULL REFERENCES models(name), manifest BYTEA NOT NULL,
                    created_at DOUBLE PRECISION NOT NULL)
                """,
                "CREATE INDEX model_versions_by_model ON model_versions(model, created_at)",
                """
                CREATE TABLE aliases (
                    model TEXT NOT NULL, name TEXT NOT NULL, targets TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
                    PRIMARY KEY (model, name))
                """,
                """
                CREATE TABLE alias_history (
                    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, model TEXT NOT NULL, alias TEXT NOT NULL,
                    action TEXT NOT NULL, targets TEXT NOT NULL, at DOUBLE PRECISION NOT NULL)
                """,
                "CREATE INDEX alias_history_by_alias ON alias_history(model, alias, seq)",
                """
                CREATE TABLE changes (
                    sequence BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, record TEXT NOT NULL, key TEXT NOT NULL,
                    recorded_at DOUBLE PRECISION NOT NULL)
                """,
                "CREATE TABLE doomed_objects (object_key TEXT PRIMARY KEY, doomed_at DOUBLE PRECISION NOT NULL)",
                """
                CREATE TABLE webhook_secrets (
                    id TEXT PRIMARY KEY, account_id TEXT NOT NULL, secret TEXT NOT NULL,
                    created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION)
                """,
                "CREATE INDEX webhook_secrets_by_account ON webhook_secrets(account_id, created_at)",
                """
                CREATE TABLE webhook_deliveries (
                    id TEXT PRIMARY KEY, generation_id TEXT NOT NULL, account_id TEXT NOT NULL, type TEXT NOT NULL,
                    url TEXT NOT NULL, state TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
                    next_attempt_at DOUBLE PRECISION)
                """,
                "CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at)",
                "CREATE INDEX webhook_deliveries_by_generation ON webhook_deliveries(generation_id, created_at)",
                """
                CREATE TABLE webhook_attempts (
                    delivery_id TEXT NOT NULL, seq BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL, status BIGINT,
                    error TEXT, duration DOUBLE PRECISION NOT NULL, PRIMARY KEY (delivery_id, seq))
                """,
            ]),
        Migration(
            version: 2, name: "leadership",
            statements: [
                // One row at most: the lease of the server that leads (see `LeaderElection`).
                """
                CREATE TABLE leadership (
                    id BIGINT PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, epoch BIGINT NOT NULL, url TEXT NOT NULL,
                    expires_at DOUBLE PRECISION NOT NULL)
                """
            ]),
        Migration(
            version: 3, name: "generations-by-state",
            statements: [
                // The admin's latest generations in a state (the dashboard's failures), newest first.
                "CREATE INDEX generations_by_state_seq ON generations(state, seq)"
            ]),
        Migration(
            version: 4, name: "partial-indexes",
            statements: [
                // A tier's queued count and a worker's running jobs read indexes of those
                // generations only, which every transition of a job no longer rewrites; the lease
                // reaper reads the running generations (at most the fleet) by state.
                "DROP INDEX generations_by_state",
                "DROP INDEX generations_by_lease",
                "DROP INDEX generations_by_worker",
                "CREATE INDEX generations_queued_by_tier ON generations(tier) WHERE state = 'queued'",
                "CREATE INDEX generations_running_by_worker ON generations(lease_worker) WHERE state = 'running'",
            ]),
    ]

    /// Applies the migrations the database lacks, in one transaction that holds the migrations'
    /// advisory lock: servers that start together wait for each other, and the later ones find
    /// nothing left to do. A migration that fails rolls back with every other one of the run.
    /// - Returns: the versions it applied.
    static func migrate(_ session: PostgresSession) async throws -> [Int] {
        try await session.run("BEGIN")
        do {
            try await session.run("SELECT pg_advisory_xact_lock(\(AdvisoryLock.migrations.rawValue), 0)")
            try await session.run(
                """
                CREATE TABLE IF NOT EXISTS kiln_migrations (
                    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)
                """)
            let applied = Set(try await appliedVersions(session))
            var newlyApplied: [Int] = []
            for migration in migrations where !applied.contains(migration.version) {
                for statement in migration.statements {
                    try await session.run(PostgresQuery(unsafeSQL: statement))
                }
                try await session.run(
                    """
                    INSERT INTO kiln_migrations (version, name, applied_at)
                    VALUES (\(migration.version), \(migration.name), extract(epoch FROM clock_timestamp()))
                    """)
                newlyApplied.append(migration.version)
            }
            try await session.run("COMMIT")
            return newlyApplied
        } catch {
            _ = try? await session.run("ROLLBACK")
            throw error
        }
    }

    /// The versions recorded in `kiln_migrations`, in order.
    static func appliedVersions(_ session: PostgresSession) async throws -> [Int] {
        try await session.rows("SELECT version FROM kiln_migrations ORDER BY version").map { try $0.value("version") }
    }
}
