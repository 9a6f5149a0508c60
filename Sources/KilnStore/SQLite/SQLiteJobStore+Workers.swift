import Foundation
import GRDB
import KilnCore

/// Workers.
extension SQLiteJobStore {
    public func registerWorker(_ worker: WorkerRecord) async throws {
        try await write { db in
            try db.run(
                sql: """
                    INSERT INTO workers (id, cluster, accelerator, gpus, labels, pool, state, key_id, registered_at, last_seen_at)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    worker.id.rawValue, worker.cluster, worker.accelerator, worker.gpus, JSONColumn.encode(worker.labels), worker.pool,
                    worker.state.rawValue, worker.keyID?.rawValue, worker.registeredAt.timeIntervalSince1970,
                    worker.lastSeenAt.timeIntervalSince1970,
                ])
        }
    }

    public func worker(_ id: WorkerID) async throws -> WorkerRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, cached: "SELECT * FROM workers WHERE id = ?", arguments: [id.rawValue]).map(Self.worker(from:))
        }
    }

    public func workers() async throws -> [WorkerRecord] {
        try await pool.read { db in
            try Row.fetchAll(db, cached: "SELECT * FROM workers ORDER BY registered_at, id").map(Self.worker(from:))
        }
    }

    public func setWorkerState(_ id: WorkerID, _ state: WorkerRecord.State) async throws -> WorkerRecord {
        try await write { db in
            try db.run(sql: "UPDATE workers SET state = ? WHERE id = ?", arguments: [state.rawValue, id.rawValue])
            guard db.changesCount == 1,
                let row = try Row.fetchOne(db, cached: "SELECT * FROM workers WHERE id = ?", arguments: [id.rawValue])
            else { throw KilnError(.notFound, "no worker '\(id)'") }
            try Self.recordChange(db, .worker, id.rawValue)
            return Self.worker(from: row)
        }
    }

    public func touchWorker(_ id: WorkerID, at: Date) async throws {
        try await write { db in
            try db.run(
                sql: "UPDATE workers SET last_seen_at = ? WHERE id = ?", arguments: [at.timeIntervalSince1970, id.rawValue])
        }
    }
}
