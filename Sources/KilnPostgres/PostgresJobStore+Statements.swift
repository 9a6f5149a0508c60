import Foundation
import KilnCore
import KilnStore
import PostgresNIO

// The statements on the path of every job, as named prepared statements: each connection has
// PostgreSQL parse them once, and PostgreSQL plans them once it has seen a few executions, instead
// of parsing and planning each call. Every parameter is cast to its type in the SQL, so that the
// server never has to guess one.

extension PostgresJobStore {
    /// A generation by id, unlocked: the read of a transition.
    struct GenerationByID: PostgresPreparedStatement {
        static let sql = "SELECT \(PostgresJobStore.generationColumns) FROM generations WHERE id = $1::TEXT"
        var id: GenerationID

        func makeBindings() -> PostgresBindings {
            var binds = PostgresBindings(capacity: 1)
            binds.append(id.rawValue)
            return binds
        }

        func decodeRow(_ row: PostgresRow) -> PostgresRandomAccessRow { row.makeRandomAccess() }
    }

    /// A generation by sequence, unlocked: the read of a lease.
    struct GenerationBySequence: PostgresPreparedStatement {
        static let sql = "SELECT \(PostgresJobStore.generationColumns) FROM generations WHERE seq = $1::BIGINT"
        var sequence: Int64

        func makeBindings() -> PostgresBindings {
            var binds = PostgresBindings(capacity: 1)
            binds.append(sequence)
            return binds
        }

        func decodeRow(_ row: PostgresRow) -> PostgresRandomAccessRow { row.makeRandomAccess() }
    }

    /// A submitted generation and its `queued` event; returns its sequence.
    struct InsertGeneration: PostgresPreparedStatement {
        static let sql = """
            WITH inserted AS (
                INSERT INTO generations (id, account_id, model, version, alias, tier, accelerators, gpus, state, input,
                    input_files, progress_fraction, progress_stage, output, attempts, max_attempts, callback_url,
                    callback_events, created_at, queued_at)
                VALUES ($1::TEXT, $2::TEXT, $3::TEXT, $4::TEXT, $5::TEXT, $6::TEXT, $7::TEXT, $8::BIGINT, 'queued', $9::TEXT,
                    $10::TEXT, 0, '', '{}', 0, $11::BIGINT, $12::TEXT, $13::TEXT, $14::FLOAT8, $15::FLOAT8)
                RETURNING seq),
            event AS (
                INSERT INTO generation_events (generation_id, kind, at, state, progress_fraction, progress_stage)
                VALUES ($1::TEXT, 'queued', $14::FLOAT8, 'queued', 0, ''))
            SELECT seq FROM inserted
            """
        var generation: Generation

        func makeBindings() -> PostgresBindings {
            var binds = PostgresBindings(capacity: 15)
            binds.append(generation.id.rawValue)
            binds.append(generation.accountID.rawValue)
            binds.append(generation.model)
            binds.append(generation.version)
            binds.append(generation.alias)
            binds.append(generation.tier)
            binds.append(JSONColumn.encode(generation.accelerators))
            binds.append(generation.gpus)
            binds.append(JSONValue.object(generation.input).canonicalJSON())
            binds.append(JSONColumn.encode(generation.inputFiles.mapValues(\.rawValue)))
            binds.append(generation.maxAttempts)
            binds.append(generation.callbackURL)
            binds.append(generation.callbackEvents.isEmpty ? nil : JSONColumn.encode(generation.callbackEvents))
            binds.append(generation.createdAt.timeIntervalSince1970)
            binds.append(generation.queuedAt.timeIntervalSince1970)
            return binds
        }

        func decodeRow(_ row: PostgresRow) throws -> Int64 { try row.decode(Int64.self) }
    }

    /// A transition that neither ends the generation nor owes a webhook (a lease, a start, a
    /// heartbeat, a requeue): the update, conditional on the row's revision (`$25`, with its state
    /// and token), and, only if it applied, the event (when `$22` is not NULL). Returns the
    /// generation's id when the update applied.
    struct PersistTransition: PostgresPreparedStatement {
        static let sql = "WITH \(updated),\n\(event)\nSELECT id FROM updated"

        static let updated = """
            updated AS (
                UPDATE generations SET state = $2::TEXT, version = $3::TEXT, attempts = $4::BIGINT, lease_token = $5::BIGINT,
                    lease_worker = $6::TEXT, lease_cluster = $7::TEXT, leased_at = $8::FLOAT8, lease_expires_at = $9::FLOAT8,
                    lease_started_at = $10::FLOAT8, lease_acked = $11::BOOLEAN, progress_fraction = $12::FLOAT8,
                    progress_stage = $13::TEXT, output = $14::TEXT, error_code = $15::TEXT, error_message = $16::TEXT,
                    started_at = $17::FLOAT8, completed_at = $18::FLOAT8, unacknowledged_leases = $19::BIGINT
                WHERE id = $1::TEXT AND state = $20::TEXT AND lease_token = $21::BIGINT AND xmin::TEXT::BIGINT = $25::BIGINT
                RETURNING id)
            """

        static let event = """
            event AS (
                INSERT INTO generation_events (generation_id, kind, at, state, progress_fraction, progress_stage, message)
                SELECT id, $22::TEXT, $23::FLOAT8, $2::TEXT, $12::FLOAT8, $13::TEXT, $24::TEXT FROM updated
                WHERE $22::TEXT IS NOT NULL)
            """

        var transition: Transition
        var before: StoredGeneration
        var at: Date

        func makeBindings() -> PostgresBindings {
            let after = transition.generation
            let lease = after.lease
            var binds = PostgresBindings(capacity: 30)
            binds.append(after.id.rawValue)  // $1
            binds.append(after.state.rawValue)
            binds.append(after.version)
            binds.append(after.attempts)
            binds.append(lease?.token.value ?? before.token)  // $5
            binds.append(lease?.workerID.rawValue)
            binds.append(lease?.cluster)
            binds.append(lease?.leasedAt.timeIntervalSince1970)
            binds.append(lease?.expiresAt.timeIntervalSince1970)
            binds.append(lease?.startedAt?.timeIntervalSince1970)  // $10
            binds.append(lease?.acknowledged ?? false)
            binds.append(after.progress.fraction)
            binds.append(after.progress.stage)
            binds.append(JSONColumn.encode(after.output))
            binds.append(after.error?.code)  // $15
            binds.append(after.error?.message)
            binds.append(after.startedAt?.timeIntervalSince1970)
            binds.append(after.completedAt?.timeIntervalSince1970)
            binds.append(after.unacknowledgedLeases)
            binds.append(before.generation.state.rawValue)  // $20
            binds.append(before.token)
            binds.append(transition.event?.rawValue)
            binds.append(at.timeIntervalSince1970)
            binds.append(transition.message)
            binds.append(before.revision)  // $25
            return binds
        }

        func decodeRow(_ row: PostgresRow) throws -> String { try row.decode(String.self) }
    }

    /// Any other transition, as ``persist`` describes it: ``PersistTransition``'s update and
    /// event, and, only if the update applied, the settling of outputs (when `$26`: those not in
    /// `$27` are doomed, every attachment forgotten; foreign keys are checked at the end of the
    /// statement, after both deletes) and the webhook delivery (when `$30` is not NULL; progress is
    /// coalesced: while one progress delivery waits for its first attempt, no other is added).
    /// Returns the generation's id when the update applied.
    struct PersistEndingTransition: PostgresPreparedStatement {
        static let sql = """
            WITH \(PersistTransition.updated),
            \(PersistTransition.event),
            unkept AS (
                SELECT o.file_id, f.object_key FROM job_outputs o JOIN files f ON f.id = o.file_id
                WHERE $26::BOOLEAN AND o.generation_id = $1::TEXT AND o.file_id <> ALL($27::TEXT[])
                    AND EXISTS (SELECT 1 FROM updated)),
            doomed AS (
                INSERT INTO doomed_objects (object_key, doomed_at) SELECT object_key, $23::FLOAT8 FROM unkept
                ON CONFLICT (object_key) DO NOTHING),
            detached AS (
                DELETE FROM job_outputs
                WHERE ($26::BOOLEAN AND generation_id = $1::TEXT AND EXISTS (SELECT 1 FROM updated))
                    OR file_id IN (SELECT file_id FROM unkept)),
            dropped AS (DELETE FROM files WHERE id IN (SELECT file_id FROM unkept)),
            delivery AS (
                INSERT INTO webhook_deliveries (id, generation_id, account_id, type, url, state, created_at, next_attempt_at)
                SELECT $28::TEXT, id, $29::TEXT, $30::TEXT, $31::TEXT, 'pending', $23::FLOAT8, $23::FLOAT8 FROM updated
                WHERE $30::TEXT IS NOT NULL AND ($30::TEXT <> 'generation.progress' OR NOT EXISTS (
                    SELECT 1 FROM webhook_deliveries d
                    WHERE d.generation_id = $1::TEXT AND d.type = 'generation.progress' AND d.state = 'pending'
                    AND NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.delivery_id = d.id))))
            SELECT id FROM updated
            """
        var base: PersistTransition
        var settles: Bool
        var deliveryType: String?

        func makeBindings() -> PostgresBindings {
            let after = base.transition.generation
            var binds = base.makeBindings()
            binds.append(settles)  // $26
            binds.append(after.output.values.map(\.fileID.rawValue).sorted())
            binds.append(deliveryType.map { _ in WebhookDelivery.newID() })
            binds.append(after.accountID.rawValue)
            binds.append(deliveryType)
            binds.append(after.callbackURL)  // $31
            return binds
        }

        func decodeRow(_ row: PostgresRow) throws -> String { try row.decode(String.self) }
    }
}
