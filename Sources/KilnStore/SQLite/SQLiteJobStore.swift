import Foundation
import GRDB
import KilnCore

/// The embedded ``JobStore``: one SQLite database in write-ahead-log mode (GRDB's `DatabasePool`),
/// so readers never wait for the writer. Each change runs in its own savepoint; changes that arrive
/// together share one transaction and one fsync (``GroupCommit``), with `synchronous = FULL` on the
/// writing connection, so an acknowledged change survives a power loss, not only a crash.
public final class SQLiteJobStore: JobStore {
    let pool: DatabasePool
    let writer: GroupCommit

    /// Opens (creating and migrating when needed) the database at `path`.
    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(10)
        // Every change runs in a savepoint, whose undo log (the statement journal) SQLite keeps in a
        // temporary file once it outgrows 64 KiB, unless temporary storage is memory: on a file,
        // two thirds of the writer's system calls went to that log, none of which need reach a disk.
        configuration.prepareDatabase { try $0.execute(sql: "PRAGMA temp_store = MEMORY") }
        pool = try DatabasePool(path: path, configuration: configuration)
        // After the pool is open: its write-ahead-log set-up runs on the writer after
        // `prepareDatabase` and sets `synchronous = NORMAL`, which would override one set there.
        try pool.writeWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = FULL") }
        try SQLiteSchema.migrator.migrate(pool)
        writer = GroupCommit(pool: pool)
    }

    /// A `PRAGMA`'s value as the writing connection has it (`synchronous`: 2 is `FULL`).
    public func writerPragma(_ name: String) throws -> Int {
        try pool.writeWithoutTransaction { try Int.fetchOne($0, sql: "PRAGMA \(name)") ?? -1 }
    }

    public func observeCommits(_ observer: @escaping @Sendable (CommitTiming) -> Void) {
        writer.observe(observer)
    }

    /// Runs `body` in the next group commit; a constraint it breaks is a conflict.
    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await writer.write(body)
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw KilnError(.conflict, "the change conflicts with stored data: \(error.message ?? "constraint failed")")
        }
    }

    // MARK: - Change feed

    public func changes(after: Int64, limit: Int) async throws -> [StoreChange] {
        try await pool.read { db in
            try Row.fetchAll(
                db, cached: "SELECT sequence, record, key FROM changes WHERE sequence > ? ORDER BY sequence LIMIT ?",
                arguments: [after, limit]
            ).compactMap { row in
                StoreChange.Record(rawValue: row["record"]).map { StoreChange(sequence: row["sequence"], record: $0, key: row["key"]) }
            }
        }
    }

    public func latestChange() async throws -> Int64 {
        try await pool.read { db in try Int64.fetchOne(db, cached: "SELECT MAX(sequence) FROM changes") ?? 0 }
    }

    /// Appends to the change feed, in the transaction of the change itself.
    static func recordChange(_ db: Database, _ record: StoreChange.Record, _ key: String) throws {
        try db.run(
            sql: "INSERT INTO changes (record, key, recorded_at) VALUES (?, ?, (julianday('now') - 2440587.5) * 86400.0)",
            arguments: [record.rawValue, key])
    }

    public func pruneChanges(recordedBefore cutoff: Date) async throws -> Int {
        try await write { db in
            try db.run(
                sql: "DELETE FROM changes WHERE recorded_at < ? AND sequence < (SELECT MAX(sequence) FROM changes)",
                arguments: [cutoff.timeIntervalSince1970])
            return db.changesCount
        }
    }
}
