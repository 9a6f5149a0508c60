import Foundation
import GRDB
import KilnCore

/// Row mapping: records from rows, and the JSON columns.
extension SQLiteJobStore {
    static func fetchGeneration(_ db: Database, id: GenerationID) throws -> Generation? {
        try fetchForTransition(db, id: id)?.0
    }

    static func insert(_ file: FileRecord, _ db: Database) throws {
        try db.run(
            sql: """
                INSERT INTO files (id, account_id, size, sha256, content_type, object_key, created_at, kind)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """,
            arguments: [
                file.id.rawValue, file.accountID.rawValue, file.size, file.sha256, file.contentType, file.objectKey,
                file.createdAt.timeIntervalSince1970, file.kind.rawValue,
            ])
    }

    /// The columns every read of a generation selects, in ``GenerationColumn`` order.
    static let generationColumns = GenerationColumn.allCases.map(\.name).joined(separator: ", ")
    /// A generation by its key, and by its id: the reads of every transition, their SQL built once.
    static let generationBySequence = "SELECT \(generationColumns) FROM generations WHERE seq = ?"
    static let generationByID = "SELECT \(generationColumns) FROM generations WHERE id = ?"

    /// A generation from a row of ``generationColumns``.
    static func generation(from row: Row) -> Generation {
        var lease: LeaseInfo?
        if let worker = row[.leaseWorker] as String?, let leasedAt = row[.leasedAt] as Double?,
            let expires = row[.leaseExpiresAt] as Double?
        {
            lease = LeaseInfo(
                workerID: WorkerID(unchecked: worker), cluster: row[.leaseCluster] ?? "", token: FencingToken(row[.leaseToken] as Int64),
                leasedAt: Date(timeIntervalSince1970: leasedAt), expiresAt: Date(timeIntervalSince1970: expires),
                startedAt: (row[.leaseStartedAt] as Double?).map(Date.init(timeIntervalSince1970:)),
                acknowledged: (row[.leaseAcked] as Int?) == 1)
        }
        var error: JobFailure?
        if let code = row[.errorCode] as String? {
            error = JobFailure(code: code, message: row[.errorMessage] ?? "")
        }
        let inputText: String = row[.input]
        let input = inputText == "{}" ? [:] : (try? JSONValue.parse(inputText))?.objectValue ?? [:]
        let inputFiles: [String: String] = JSONColumn.decode(row[.inputFiles]) ?? [:]
        var generation = Generation(
            id: GenerationID(unchecked: row[.id]), sequence: row[.seq], accountID: AccountID(unchecked: row[.accountID]),
            model: row[.model], version: row[.version], alias: row[.alias], tier: row[.tier],
            accelerators: JSONColumn.decode(row[.accelerators]) ?? [], gpus: row[.gpus],
            state: GenerationState(rawValue: row[.state]) ?? .failed, input: input,
            inputFiles: inputFiles.mapValues(FileID.init(unchecked:)),
            progress: JobProgress(fraction: row[.progressFraction], stage: row[.progressStage]),
            output: JSONColumn.decode(row[.output]) ?? [:], error: error, attempts: row[.attempts], maxAttempts: row[.maxAttempts],
            callbackURL: row[.callbackURL], createdAt: Date(timeIntervalSince1970: row[.createdAt]),
            queuedAt: Date(timeIntervalSince1970: row[.queuedAt]),
            startedAt: (row[.startedAt] as Double?).map(Date.init(timeIntervalSince1970:)),
            completedAt: (row[.completedAt] as Double?).map(Date.init(timeIntervalSince1970:)), lease: lease)
        generation.unacknowledgedLeases = row[.unacknowledgedLeases]
        generation.callbackEvents = JSONColumn.decode(row[.callbackEvents]) ?? []
        return generation
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
            createdAt: Date(timeIntervalSince1970: row["created_at"]), kind: FileRecord.Kind(rawValue: row["kind"]) ?? .upload)
    }

    static func worker(from row: Row) -> WorkerRecord {
        WorkerRecord(
            id: WorkerID(unchecked: row["id"]), cluster: row["cluster"], accelerator: row["accelerator"], gpus: row["gpus"],
            labels: JSONColumn.decode(row["labels"]) ?? [:], pool: row["pool"], state: WorkerRecord.State(rawValue: row["state"]) ?? .active,
            keyID: (row["key_id"] as String?).map(KeyID.init(unchecked:)), registeredAt: Date(timeIntervalSince1970: row["registered_at"]),
            lastSeenAt: Date(timeIntervalSince1970: row["last_seen_at"]))
    }
}

/// A column of ``SQLiteJobStore/generationColumns``: a generation is read by position, since a read
/// by name compares the name, lowercased, with each column's.
enum GenerationColumn: Int, CaseIterable {
    case seq, id, accountID, model, version, alias, tier, state, input, inputFiles, progressFraction, progressStage, output
    case errorCode, errorMessage, attempts, maxAttempts, callbackURL, createdAt, queuedAt, startedAt, completedAt
    case leaseToken, leaseWorker, leaseCluster, leasedAt, leaseExpiresAt, leaseStartedAt, leaseAcked, unacknowledgedLeases
    case accelerators, gpus, callbackEvents

    /// Its name in the table: the case's name in snake case (`accountID` is `account_id`).
    var name: String {
        var name = ""
        var afterLowercase = false
        for character in String(describing: self) {
            if character.isUppercase, afterLowercase { name.append("_") }
            afterLowercase = character.isLowercase
            name += character.lowercased()
        }
        return name
    }
}

extension Row {
    subscript<Value: DatabaseValueConvertible>(_ column: GenerationColumn) -> Value { self[column.rawValue] }
}

// The store's SQL goes through each connection's statement cache: a statement is compiled once per
// connection, not once per call (compiling also runs GRDB's authorizer over every column).
extension Database {
    func run(sql: String, arguments: StatementArguments = []) throws {
        try cachedStatement(sql: sql).execute(arguments: arguments)
    }
}

extension Row {
    static func fetchOne(_ db: Database, cached sql: String, arguments: StatementArguments = []) throws -> Row? {
        try fetchOne(db.cachedStatement(sql: sql), arguments: arguments)
    }

    static func fetchAll(_ db: Database, cached sql: String, arguments: StatementArguments = []) throws -> [Row] {
        try fetchAll(db.cachedStatement(sql: sql), arguments: arguments)
    }
}

extension DatabaseValueConvertible {
    static func fetchOne(_ db: Database, cached sql: String, arguments: StatementArguments = []) throws -> Self? {
        try fetchOne(db.cachedStatement(sql: sql), arguments: arguments)
    }
}
