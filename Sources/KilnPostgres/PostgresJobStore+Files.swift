import Foundation
import KilnCore
import KilnStore
import PostgresNIO

/// Files: uploads with a quota, outputs, deletion and retention. As on SQLite, a deleted file's
/// row goes in the transaction of whatever made it garbage, and its object key to
/// `doomed_objects`, emptied into the object store afterwards.
extension PostgresJobStore {
    public func createFile(_ file: FileRecord, quota: Int64?) async throws {
        try await write { session in
            if let quota, file.kind == .upload {
                // Under the account's lock: two uploads at once cannot both fit in the last room.
                try await session.lock(.account, file.accountID.rawValue)
                let held = try await Self.uploadedBytes(session, file.accountID)
                guard held + file.size <= quota else {
                    throw KilnError.uploadQuota(held: held, adding: file.size, quota: quota)
                }
            }
            try await Self.insert(file, session)
        }
    }

    public func file(_ id: FileID) async throws -> FileRecord? {
        try await read { session in
            try await session.row("SELECT \(unescaped: Self.fileColumns) FROM files WHERE id = \(id.rawValue)").map(Self.file(from:))
        }
    }

    public func uploadedBytes(of account: AccountID) async throws -> Int64 {
        try await read { session in try await Self.uploadedBytes(session, account) }
    }

    public func deleteFile(_ id: FileID, of account: AccountID) async throws {
        try await write { session in
            guard
                let row = try await session.row(
                    "SELECT \(unescaped: Self.fileColumns) FROM files WHERE id = \(id.rawValue) AND account_id = \(account.rawValue) FOR UPDATE")
            else { throw KilnError(.notFound, "no file '\(id)'") }
            let file = try Self.file(from: row)
            if let user = try await Self.activeUser(session, of: file) {
                throw KilnError(.conflict, "file '\(id)' is needed by generation '\(user)', which has not ended; cancel it or wait")
            }
            try await Self.doom(session, fileID: file.id.rawValue, objectKey: file.objectKey, at: Date())
        }
    }

    public func expireFiles(createdBefore cutoff: Date, limit: Int) async throws -> Int {
        try await write { session in
            // Oldest first, in pages, skipping the files a generation still needs; files another
            // server is expiring meanwhile are skipped, not waited for.
            var deleted = 0
            var after = (created: -1.0, id: "")
            while deleted < limit {
                let rows = try await session.rows(
                    """
                    SELECT \(unescaped: Self.fileColumns) FROM files
                    WHERE created_at < \(cutoff.timeIntervalSince1970) AND (created_at, id) > (\(after.created), \(after.id))
                    ORDER BY created_at, id LIMIT \(limit) FOR UPDATE SKIP LOCKED
                    """)
                guard let last = rows.last else { break }
                after = (try last.value("created_at"), try last.value("id"))
                for row in rows where deleted < limit {
                    let file = try Self.file(from: row)
                    guard try await Self.activeUser(session, of: file) == nil else { continue }
                    try await Self.doom(session, fileID: file.id.rawValue, objectKey: file.objectKey, at: Date())
                    deleted += 1
                }
            }
            return deleted
        }
    }

    public func doomedObjects(limit: Int) async throws -> [String] {
        try await read { session in
            try await session.rows("SELECT object_key FROM doomed_objects ORDER BY doomed_at LIMIT \(limit)").map { try $0.value("object_key") }
        }
    }

    public func forgetDoomedObjects(_ keys: [String]) async throws {
        guard !keys.isEmpty else { return }
        try await change { session in
            try await session.run("DELETE FROM doomed_objects WHERE object_key = ANY(\(keys))")
        }
    }

    // MARK: In a transaction

    static func uploadedBytes(_ session: PostgresSession, _ account: AccountID) async throws -> Int64 {
        try await session.value(
            "SELECT COALESCE(SUM(size), 0)::BIGINT FROM files WHERE account_id = \(account.rawValue) AND kind = 'upload'", as: Int64.self
        ) ?? 0
    }

    /// A queued or running generation that needs `file`: as an input, or as an output one of its
    /// attempts uploaded.
    static func activeUser(_ session: PostgresSession, of file: FileRecord) async throws -> String? {
        switch file.kind {
        case .upload:
            // Inputs are kept as JSON; the account's unfinished generations are few (capped).
            return try await session.value(
                """
                SELECT id FROM generations
                WHERE account_id = \(file.accountID.rawValue) AND state IN ('queued', 'running')
                    AND strpos(input_files, \("\"\(file.id.rawValue)\"")) > 0
                LIMIT 1
                """, as: String.self)
        case .output:
            return try await session.value(
                """
                SELECT g.id FROM job_outputs o JOIN generations g ON g.id = o.generation_id
                WHERE o.file_id = \(file.id.rawValue) AND g.state IN ('queued', 'running') LIMIT 1
                """, as: String.self)
        }
    }

    /// Deletes a file's row (and any pending attachment of it) and dooms its object: one round trip.
    static func doom(_ session: PostgresSession, fileID: String, objectKey: String, at: Date) async throws {
        try await session.run(
            """
            WITH detached AS (DELETE FROM job_outputs WHERE file_id = \(fileID)),
                deleted AS (DELETE FROM files WHERE id = \(fileID))
            INSERT INTO doomed_objects (object_key, doomed_at) VALUES (\(objectKey), \(at.timeIntervalSince1970))
            ON CONFLICT (object_key) DO NOTHING
            """)
    }
}
