import Foundation
import GRDB
import KilnCore

/// Files: uploads with a quota, outputs, deletion and retention. A deleted file's row goes in the
/// same transaction as whatever made it garbage, and its object key goes to `doomed_objects`, which
/// the server empties into the object store afterwards: a crash in between deletes it again, never
/// leaves a record without its bytes.
extension SQLiteJobStore {
    public func createFile(_ file: FileRecord, quota: Int64?) async throws {
        try await write { db in
            if let quota, file.kind == .upload {
                let held = try Self.uploadedBytes(db, file.accountID)
                guard held + file.size <= quota else {
                    throw KilnError.uploadQuota(held: held, adding: file.size, quota: quota)
                }
            }
            try Self.insert(file, db)
        }
    }

    public func file(_ id: FileID) async throws -> FileRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, cached: "SELECT * FROM files WHERE id = ?", arguments: [id.rawValue]).map(Self.file(from:))
        }
    }

    public func uploadedBytes(of account: AccountID) async throws -> Int64 {
        try await pool.read { db in try Self.uploadedBytes(db, account) }
    }

    public func deleteFile(_ id: FileID, of account: AccountID) async throws {
        try await write { db in
            guard let row = try Row.fetchOne(db, cached: "SELECT * FROM files WHERE id = ?", arguments: [id.rawValue]),
                (row["account_id"] as String) == account.rawValue
            else { throw KilnError(.notFound, "no file '\(id)'") }
            if let user = try Self.activeUser(db, of: Self.file(from: row)) {
                throw KilnError(.conflict, "file '\(id)' is needed by generation '\(user)', which has not ended; cancel it or wait")
            }
            try Self.doom(db, fileID: id.rawValue, objectKey: row["object_key"], at: Date())
        }
    }

    public func expireFiles(createdBefore cutoff: Date, limit: Int) async throws -> Int {
        try await write { db in
            // Oldest first, in pages, skipping the files a generation still needs.
            var deleted = 0
            var after = (created: -1.0, id: "")
            while deleted < limit {
                let rows = try Row.fetchAll(
                    db,
                    sql: """
                        SELECT * FROM files WHERE created_at < ? AND (created_at > ? OR (created_at = ? AND id > ?))
                        ORDER BY created_at, id LIMIT ?
                        """,
                    arguments: [cutoff.timeIntervalSince1970, after.created, after.created, after.id, limit])
                guard let last = rows.last else { break }
                after = (last["created_at"], last["id"])
                for row in rows where deleted < limit {
                    guard try Self.activeUser(db, of: Self.file(from: row)) == nil else { continue }
                    try Self.doom(db, fileID: row["id"], objectKey: row["object_key"], at: Date())
                    deleted += 1
                }
            }
            return deleted
        }
    }

    public func doomedObjects(limit: Int) async throws -> [String] {
        try await pool.read { db in
            try String.fetchAll(db, sql: "SELECT object_key FROM doomed_objects ORDER BY doomed_at LIMIT ?", arguments: [limit])
        }
    }

    public func forgetDoomedObjects(_ keys: [String]) async throws {
        guard !keys.isEmpty else { return }
        try await write { db in
            for key in keys { try db.run(sql: "DELETE FROM doomed_objects WHERE object_key = ?", arguments: [key]) }
        }
    }

    // MARK: In a transaction

    static func uploadedBytes(_ db: Database, _ account: AccountID) throws -> Int64 {
        try Int64.fetchOne(
            db, cached: "SELECT COALESCE(SUM(size), 0) FROM files WHERE account_id = ? AND kind = 'upload'", arguments: [account.rawValue]
        ) ?? 0
    }

    /// A queued or running generation that needs `file`: as an input, or as an output one of its
    /// attempts uploaded.
    static func activeUser(_ db: Database, of file: FileRecord) throws -> String? {
        switch file.kind {
        case .upload:
            // Inputs are kept as JSON; the account's unfinished generations are few (capped).
            return try String.fetchOne(
                db,
                cached: """
                    SELECT id FROM generations
                    WHERE account_id = ? AND state IN ('queued', 'running') AND instr(input_files, ?) > 0 LIMIT 1
                    """,
                arguments: [file.accountID.rawValue, "\"\(file.id.rawValue)\""])
        case .output:
            return try String.fetchOne(
                db,
                cached: """
                    SELECT g.id FROM job_outputs o JOIN generations g ON g.id = o.generation_id
                    WHERE o.file_id = ? AND g.state IN ('queued', 'running') LIMIT 1
                    """,
                arguments: [file.id.rawValue])
        }
    }

    /// Deletes a file's row (and any pending attachment of it) and dooms its object.
    static func doom(_ db: Database, fileID: String, objectKey: String, at: Date) throws {
        try db.run(sql: "DELETE FROM job_outputs WHERE file_id = ?", arguments: [fileID])
        try db.run(sql: "DELETE FROM files WHERE id = ?", arguments: [fileID])
        try db.run(
            sql: "INSERT OR IGNORE INTO doomed_objects (object_key, doomed_at) VALUES (?, ?)",
            arguments: [objectKey, at.timeIntervalSince1970])
    }

    /// When a generation ends: its attempts' outputs that are not its own are doomed, and the
    /// attachments forgotten (the outputs it keeps are named in its `output`).
    static func settleOutputs(_ db: Database, of generation: Generation, at: Date) throws {
        let kept = Set(generation.output.values.map(\.fileID.rawValue))
        let staged = try Row.fetchAll(
            db,
            cached: "SELECT o.file_id, f.object_key FROM job_outputs o JOIN files f ON f.id = o.file_id WHERE o.generation_id = ?",
            arguments: [generation.id.rawValue])
        guard !staged.isEmpty else { return }  // most jobs: no outputs, nothing to forget
        for row in staged where !kept.contains(row["file_id"]) {
            try doom(db, fileID: row["file_id"], objectKey: row["object_key"], at: at)
        }
        try db.run(sql: "DELETE FROM job_outputs WHERE generation_id = ?", arguments: [generation.id.rawValue])
    }
}
