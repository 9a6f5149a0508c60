import Foundation
import KilnCore
import KilnStore
import PostgresNIO

/// Row mapping: the columns each record is read with, and records from rows.
extension PostgresJobStore {
    /// Every column ``generation(from:)`` and ``StoredGeneration`` read: generations are never read
    /// with `SELECT *`.
    static let generationColumns = """
        seq, id, account_id, model, version, alias, tier, accelerators, gpus, state, input, input_files, progress_fraction,
        progress_stage, output, error_code, error_message, attempts, max_attempts, unacknowledged_leases, callback_url,
        callback_events, created_at, queued_at, started_at, completed_at, lease_token, lease_worker, lease_cluster, leased_at,
        lease_expires_at, lease_started_at, lease_acked, xmin::TEXT::BIGINT AS revision
        """

    /// A generation as read for a change: with the last fencing token issued for it (kept while
    /// it is not leased) and the revision of its row (PostgreSQL's `xmin`, new at every update),
    /// which a conditional write compares: a start and a heartbeat change neither state nor token.
    struct StoredGeneration {
        var generation: Generation
        var token: Int64
        var revision: Int64

        init(_ row: PostgresRandomAccessRow) throws {
            generation = try PostgresJobStore.generation(from: row)
            token = try row.value("lease_token")
            revision = try row.value("revision")
        }
    }

    static let fileColumns = "id, account_id, size, sha256, content_type, object_key, created_at, kind"
    static let workerColumns = "id, cluster, accelerator, gpus, labels, pool, state, key_id, registered_at, last_seen_at"

    static func generation(from row: PostgresRandomAccessRow) throws -> Generation {
        var lease: LeaseInfo?
        if let worker = try row.value("lease_worker", as: String?.self), let leasedAt = try row.optionalDate("leased_at"),
            let expires = try row.optionalDate("lease_expires_at")
        {
            lease = LeaseInfo(
                workerID: WorkerID(unchecked: worker), cluster: try row.value("lease_cluster", as: String?.self) ?? "",
                token: FencingToken(try row.value("lease_token")), leasedAt: leasedAt, expiresAt: expires,
                startedAt: try row.optionalDate("lease_started_at"), acknowledged: try row.value("lease_acked"))
        }
        var error: JobFailure?
        if let code = try row.value("error_code", as: String?.self) {
            error = JobFailure(code: code, message: try row.value("error_message", as: String?.self) ?? "")
        }
        let inputText: String = try row.value("input")
        let input = inputText == "{}" ? [:] : (try? JSONValue.parse(inputText))?.objectValue ?? [:]
        let inputFiles: [String: String] = JSONColumn.decode(try row.value("input_files")) ?? [:]
        var generation = Generation(
            id: GenerationID(unchecked: try row.value("id")), sequence: try row.value("seq"),
            accountID: AccountID(unchecked: try row.value("account_id")), model: try row.value("model"),
            version: try row.value("version"), alias: try row.value("alias"), tier: try row.value("tier"),
            accelerators: JSONColumn.decode(try row.value("accelerators")) ?? [], gpus: try row.value("gpus"),
            state: GenerationState(rawValue: try row.value("state")) ?? .failed, input: input,
            inputFiles: inputFiles.mapValues(FileID.init(unchecked:)),
            progress: JobProgress(fraction: try row.value("progress_fraction"), stage: try row.value("progress_stage")),
            output: JSONColumn.decode(try row.value("output")) ?? [:], error: error, attempts: try row.value("attempts"),
            maxAttempts: try row.value("max_attempts"), callbackURL: try row.value("callback_url"),
            createdAt: try row.date("created_at"), queuedAt: try row.date("queued_at"), startedAt: try row.optionalDate("started_at"),
            completedAt: try row.optionalDate("completed_at"), lease: lease)
        generation.unacknowledgedLeases = try row.value("unacknowledged_leases")
        generation.callbackEvents = JSONColumn.decode(try row.value("callback_events", as: String?.self)) ?? []
        return generation
    }

    static func account(from row: PostgresRandomAccessRow) throws -> Account {
        Account(
            id: AccountID(unchecked: try row.value("id")), name: try row.value("name"), tier: try row.value("tier"),
            createdAt: try row.date("created_at"))
    }

    static func model(from row: PostgresRandomAccessRow) throws -> ModelRecord {
        ModelRecord(
            name: try row.value("name"), description: try row.value("description"),
            inputSchema: try row.value("input_schema", as: String?.self).flatMap { try? JSONValue.parse($0) },
            createdAt: try row.date("created_at"))
    }

    static func file(from row: PostgresRandomAccessRow) throws -> FileRecord {
        FileRecord(
            id: FileID(unchecked: try row.value("id")), accountID: AccountID(unchecked: try row.value("account_id")),
            size: try row.value("size"), sha256: try row.value("sha256"), contentType: try row.value("content_type"),
            objectKey: try row.value("object_key"), createdAt: try row.date("created_at"),
            kind: FileRecord.Kind(rawValue: try row.value("kind")) ?? .upload)
    }

    static func worker(from row: PostgresRandomAccessRow) throws -> WorkerRecord {
        WorkerRecord(
            id: WorkerID(unchecked: try row.value("id")), cluster: try row.value("cluster"), accelerator: try row.value("accelerator"),
            gpus: try row.value("gpus"), labels: JSONColumn.decode(try row.value("labels")) ?? [:], pool: try row.value("pool"),
            state: WorkerRecord.State(rawValue: try row.value("state")) ?? .active,
            keyID: try row.value("key_id", as: String?.self).map(KeyID.init(unchecked:)), registeredAt: try row.date("registered_at"),
            lastSeenAt: try row.date("last_seen_at"))
    }

    static func insert(_ file: FileRecord, _ session: PostgresSession) async throws {
        try await session.run(
            """
            INSERT INTO files (id, account_id, size, sha256, content_type, object_key, created_at, kind)
            VALUES (\(file.id.rawValue), \(file.accountID.rawValue), \(file.size), \(file.sha256), \(file.contentType),
                \(file.objectKey), \(file.createdAt.timeIntervalSince1970), \(file.kind.rawValue))
            """)
    }
}
