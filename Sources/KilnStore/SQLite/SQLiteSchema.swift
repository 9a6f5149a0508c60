import GRDB

/// The SQLite schema, as an ordered list of migrations. Times are seconds since the epoch (REAL).
enum SQLiteSchema {
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE accounts (
                        id TEXT PRIMARY KEY, name TEXT NOT NULL, tier TEXT NOT NULL, created_at REAL NOT NULL);
                    CREATE TABLE api_keys (
                        id TEXT PRIMARY KEY, scope TEXT NOT NULL, account_id TEXT REFERENCES accounts(id),
                        secret_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, revoked_at REAL);
                    CREATE TABLE models (
                        name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '', input_schema TEXT,
                        created_at REAL NOT NULL);
                    CREATE TABLE files (
                        id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), size INTEGER NOT NULL,
                        sha256 TEXT NOT NULL, content_type TEXT NOT NULL, object_key TEXT NOT NULL, created_at REAL NOT NULL);
                    CREATE TABLE workers (
                        id TEXT PRIMARY KEY, cluster TEXT NOT NULL, accelerator TEXT NOT NULL, gpus INTEGER NOT NULL,
                        labels TEXT NOT NULL, state TEXT NOT NULL, registered_at REAL NOT NULL, last_seen_at REAL NOT NULL);
                    CREATE TABLE generations (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        id TEXT NOT NULL UNIQUE,
                        account_id TEXT NOT NULL REFERENCES accounts(id),
                        model TEXT NOT NULL, version TEXT, alias TEXT, tier TEXT NOT NULL,
                        state TEXT NOT NULL,
                        input TEXT NOT NULL, input_files TEXT NOT NULL,
                        progress_fraction REAL NOT NULL, progress_stage TEXT NOT NULL,
                        output TEXT NOT NULL, error_code TEXT, error_message TEXT,
                        attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL,
                        callback_url TEXT,
                        created_at REAL NOT NULL, queued_at REAL NOT NULL, started_at REAL, completed_at REAL,
                        lease_token INTEGER NOT NULL DEFAULT 0, lease_worker TEXT, lease_cluster TEXT,
                        leased_at REAL, lease_expires_at REAL, lease_started_at REAL);
                    CREATE INDEX generations_by_account ON generations(account_id, seq);
                    CREATE INDEX generations_by_account_state ON generations(account_id, state);
                    CREATE INDEX generations_by_state ON generations(state, tier);
                    CREATE INDEX generations_by_lease ON generations(state, lease_expires_at);
                    CREATE TABLE idempotency_keys (
                        account_id TEXT NOT NULL, key TEXT NOT NULL, request_hash TEXT NOT NULL,
                        generation_id TEXT NOT NULL, created_at REAL NOT NULL,
                        PRIMARY KEY (account_id, key));
                    CREATE TABLE job_outputs (
                        generation_id TEXT NOT NULL, token INTEGER NOT NULL, name TEXT NOT NULL,
                        file_id TEXT NOT NULL REFERENCES files(id),
                        PRIMARY KEY (generation_id, token, name));
                    CREATE TABLE generation_events (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        generation_id TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL, state TEXT NOT NULL,
                        progress_fraction REAL NOT NULL, progress_stage TEXT NOT NULL, message TEXT);
                    CREATE INDEX generation_events_by_generation ON generation_events(generation_id, seq);
                    """)
        }
        migrator.registerMigration("v2-model-repository") { db in
            try db.execute(
                sql: """
                    CREATE TABLE model_versions (
                        id TEXT PRIMARY KEY, model TEXT NOT NULL REFERENCES models(name), manifest BLOB NOT NULL,
                        created_at REAL NOT NULL);
                    CREATE INDEX model_versions_by_model ON model_versions(model, created_at);
                    CREATE TABLE aliases (
                        model TEXT NOT NULL, name TEXT NOT NULL, targets TEXT NOT NULL, updated_at REAL NOT NULL,
                        PRIMARY KEY (model, name));
                    CREATE TABLE alias_history (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, alias TEXT NOT NULL, action TEXT NOT NULL,
                        targets TEXT NOT NULL, at REAL NOT NULL);
                    CREATE INDEX alias_history_by_alias ON alias_history(model, alias, seq);
                    ALTER TABLE generations ADD COLUMN accelerators TEXT NOT NULL DEFAULT '[]';
                    ALTER TABLE generations ADD COLUMN gpus INTEGER NOT NULL DEFAULT 0;
                    """)
        }
        migrator.registerMigration("v3-worker-keys") { db in
            try db.execute(sql: "ALTER TABLE workers ADD COLUMN key_id TEXT")
        }
        migrator.registerMigration("v4-lease-acknowledged") { db in
            try db.execute(sql: "ALTER TABLE generations ADD COLUMN lease_acked INTEGER NOT NULL DEFAULT 0")
        }
        migrator.registerMigration("v5-change-feed") { db in
            try db.execute(
                sql: """
                    CREATE TABLE changes (
                        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
                        record TEXT NOT NULL,
                        key TEXT NOT NULL
                    )
                    """)
        }
        migrator.registerMigration("v6-change-feed-time") { db in
            // When each change was recorded, so that old ones can be pruned.
            try db.execute(sql: "ALTER TABLE changes ADD COLUMN recorded_at REAL NOT NULL DEFAULT 0")
        }
        migrator.registerMigration("v7-worker-pools") { db in
            // The capacity pool a worker belongs to, and the running generations of a worker.
            try db.execute(sql: "ALTER TABLE workers ADD COLUMN pool TEXT")
            try db.execute(sql: "CREATE INDEX generations_by_worker ON generations(lease_worker, state)")
        }
        migrator.registerMigration("v8-unacknowledged-leases") { db in
            // Lease expiries before the worker acknowledged the lease: free only up to a bound.
            try db.execute(sql: "ALTER TABLE generations ADD COLUMN unacknowledged_leases INTEGER NOT NULL DEFAULT 0")
        }
        migrator.registerMigration("v9-file-lifecycle") { db in
            // Uploads count against a quota, outputs do not; files are deleted (by a user, by the
            // retention, or as the output of an attempt that did not count) row first, and their
            // objects later from `doomed_objects`, so that no crash leaves a row without its bytes.
            try db.execute(
                sql: """
                    ALTER TABLE files ADD COLUMN kind TEXT NOT NULL DEFAULT 'upload';
                    UPDATE files SET kind = 'output' WHERE id IN (SELECT file_id FROM job_outputs);
                    CREATE INDEX files_by_account ON files(account_id, kind);
                    CREATE INDEX files_by_age ON files(created_at);
                    CREATE INDEX job_outputs_by_file ON job_outputs(file_id);
                    CREATE TABLE doomed_objects (object_key TEXT PRIMARY KEY, doomed_at REAL NOT NULL);
                    """)
        }
        migrator.registerMigration("v10-webhooks") { db in
            // Deliveries are written in the transaction of the transition they tell of, so none is
            // lost; attempts are kept for the deliveries view.
            try db.execute(
                sql: """
                    ALTER TABLE generations ADD COLUMN callback_events TEXT;
                    CREATE TABLE webhook_secrets (
                        id TEXT PRIMARY KEY, account_id TEXT NOT NULL, secret TEXT NOT NULL, created_at REAL NOT NULL,
                        expires_at REAL);
                    CREATE INDEX webhook_secrets_by_account ON webhook_secrets(account_id, created_at);
                    CREATE TABLE webhook_deliveries (
                        id TEXT PRIMARY KEY, generation_id TEXT NOT NULL, account_id TEXT NOT NULL, type TEXT NOT NULL,
                        url TEXT NOT NULL, state TEXT NOT NULL, created_at REAL NOT NULL, next_attempt_at REAL);
                    CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
                    CREATE INDEX webhook_deliveries_by_generation ON webhook_deliveries(generation_id, created_at);
                    CREATE TABLE webhook_attempts (
                        delivery_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, status INTEGER, error TEXT,
                        duration REAL NOT NULL, PRIMARY KEY (delivery_id, seq));
                    """)
        }
        migrator.registerMigration("v11-leadership") { db in
            // One row at most: the lease of the server that leads (see `LeaderElection`).
            try db.execute(
                sql: """
                    CREATE TABLE leadership (
                        id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, epoch INTEGER NOT NULL, url TEXT NOT NULL,
                        expires_at REAL NOT NULL);
                    """)
        }
        migrator.registerMigration("v12-generations-by-state") { db in
            // The admin's latest generations in a state (the dashboard's failures), newest first.
            try db.execute(sql: "CREATE INDEX generations_by_state_seq ON generations(state, seq)")
        }
        migrator.registerMigration("v13-partial-indexes") { db in
            // The indexes that serve a tier's queued count and a worker's running jobs hold only
            // those generations: a handful of pages, where indexes of every generation took a page
            // of each for every transition of a job. The lease reaper reads the running
            // generations (at most the fleet's size) through `generations_by_state_seq`.
            try db.execute(
                sql: """
                    DROP INDEX generations_by_state;
                    DROP INDEX generations_by_lease;
                    DROP INDEX generations_by_worker;
                    CREATE INDEX generations_queued_by_tier ON generations(tier) WHERE state = 'queued';
                    CREATE INDEX generations_running_by_worker ON generations(lease_worker) WHERE state = 'running';
                    """)
        }
        migrator.registerMigration("v14-queued-counts") { db in
            // Admission reads an account's and a tier's queued count on every submission. Counted
            // from an index, that read grew with the queue (a launch-day tier holds 100,000 queued
            // jobs, an enterprise account 10,000); kept by triggers on every change of a row's
            // state, it is one lookup, and it cannot drift from the rows, whatever statement
            // changes them. The tier's partial index served that count alone.
            try db.execute(
                sql: """
                    CREATE TABLE queued_counts (
                        scope TEXT NOT NULL, name TEXT NOT NULL, queued INTEGER NOT NULL, PRIMARY KEY (scope, name)
                    ) WITHOUT ROWID;
                    INSERT INTO queued_counts (scope, name, queued)
                        SELECT 'account', account_id, COUNT(*) FROM generations WHERE state = 'queued' GROUP BY account_id
                        UNION ALL
                        SELECT 'tier', tier, COUNT(*) FROM generations WHERE state = 'queued' GROUP BY tier;
                    CREATE TRIGGER generations_enter_queue_on_insert AFTER INSERT ON generations WHEN NEW.state = 'queued'
                    BEGIN
                        \(Self.countQueued("NEW", by: 1))
                    END;
                    CREATE TRIGGER generations_enter_queue AFTER UPDATE OF state, account_id, tier ON generations
                    WHEN NEW.state = 'queued'
                    BEGIN
                        \(Self.countQueued("NEW", by: 1))
                    END;
                    CREATE TRIGGER generations_leave_queue AFTER UPDATE OF state, account_id, tier ON generations
                    WHEN OLD.state = 'queued'
                    BEGIN
                        \(Self.countQueued("OLD", by: -1))
                    END;
                    CREATE TRIGGER generations_leave_queue_on_delete AFTER DELETE ON generations WHEN OLD.state = 'queued'
                    BEGIN
                        \(Self.countQueued("OLD", by: -1))
                    END;
                    DROP INDEX generations_queued_by_tier;
                    """)
        }
        return migrator
    }

    /// A trigger's statements that add `delta` to the queued counts of the account and the tier of
    /// `row` (`NEW` or `OLD`).
    private static func countQueued(_ row: String, by delta: Int) -> String {
        [("account", "account_id"), ("tier", "tier")].map { scope, column in
            """
            INSERT INTO queued_counts (scope, name, queued) VALUES ('\(scope)', \(row).\(column), \(delta))
                ON CONFLICT (scope, name) DO UPDATE SET queued = queued + excluded.queued;
            """
        }.joined(separator: "\n")
    }
}
