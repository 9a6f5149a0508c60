import Foundation
import GRDB
import KilnCore

/// Row mapping: records from rows, and the JSON columns.
extension SQLiteJobStore {
    static func fetchGeneration(_ db: Database, id: GenerationID) throws -> Generation? {
        try Row.fetchOne(db, sql: "SELECT * FROM generations WHERE id = ?", arguments: [id.rawValue]).map(generation(from:))
    }

    static func insert(_ file: FileRecord, _ db: Database) throws {
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

    static func account(from row: Row) -> Account {
        Account(
            id: AccountID(unchecked: row["id"]), name: row["name"], tier: row["tier"],
            createdAt: Date(timeIntervalSince1970: row["created_at"]))
    }

    static func model(from row: Row) -> ModelRecord {
        ModelRecord(
            name: row["name"], description: row["description"],
            inputSchema: (row["input_schema"] as String?).flatMap { try? JSONValue.parse($0) },
            createdAt: Date(timeIntervalSince1970: row["created_at"]))
    }

    static func file(from row: Row) -> FileRecord {
        FileRecord(
            id: FileID(unchecked: row["id"]), accountID: AccountID(unchecked: row["account_id"]), size: row["size"],
            sha256: row["sha256"], contentType: row["content_type"], objectKey: row["object_key"],
            createdAt: Date(timeIntervalSince1970: row["created_at"]))
    }

    static func worker(from row: Row) -> WorkerRecord {
        WorkerRecord(
            id: WorkerID(unchecked: row["id"]), cluster: row["cluster"], accelerator: row["accelerator"], gpus: row["gpus"],
            labels: decode(row["labels"]) ?? [:], state: WorkerRecord.State(rawValue: row["state"]) ?? .active,
            keyID: (row["key_id"] as String?).map(KeyID.init(unchecked:)), registeredAt: Date(timeIntervalSince1970: row["registered_at"]),
            lastSeenAt: Date(timeIntervalSince1970: row["last_seen_at"]))
    }

    static func json(_ value: [String: String]) -> String { encode(value) }

    static func encode<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ text: String?) -> T? {
        guard let text else { return nil }
        return try? JSONDecoder().decode(T.self, from: Data(text.utf8))
    }
}
