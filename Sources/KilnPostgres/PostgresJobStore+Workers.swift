import Foundation
import KilnCore
import KilnStore
import PostgresNIO

/// Workers.
extension PostgresJobStore {
    public func registerWorker(_ worker: WorkerRecord) async throws {
        try await write { session in
            try await session.run(
                """
                INSERT INTO workers (id, cluster, accelerator, gpus, labels, pool, state, key_id, registered_at, last_seen_at)
                VALUES (\(worker.id.rawValue), \(worker.cluster), \(worker.accelerator), \(worker.gpus),
                    \(JSONColumn.encode(worker.labels)), \(worker.pool), \(worker.state.rawValue), \(worker.keyID?.rawValue),
                    \(worker.registeredAt.timeIntervalSince1970), \(worker.lastSeenAt.timeIntervalSince1970))
                """)
        }
    }

    public func worker(_ id: WorkerID) async throws -> WorkerRecord? {
        try await read { session in
            try await session.row("SELECT \(unescaped: Self.workerColumns) FROM workers WHERE id = \(id.rawValue)").map(Self.worker(from:))
        }
    }

    public func workers() async throws -> [WorkerRecord] {
        try await read { session in
            try await session.rows("SELECT \(unescaped: Self.workerColumns) FROM workers ORDER BY registered_at, id").map(Self.worker(from:))
        }
    }

    public func setWorkerState(_ id: WorkerID, _ state: WorkerRecord.State) async throws -> WorkerRecord {
        try await write { session in
            guard
                let row = try await session.row(
                    "UPDATE workers SET state = \(state.rawValue) WHERE id = \(id.rawValue) RETURNING \(unescaped: Self.workerColumns)")
            else { throw KilnError(.notFound, "no worker '\(id)'") }
            try await Self.recordChange(session, .worker, id.rawValue)
            return try Self.worker(from: row)
        }
    }

    public func touchWorker(_ id: WorkerID, at: Date) async throws {
        // One statement: atomic without a transaction of its own.
        try await change { session in
            try await session.run("UPDATE workers SET last_seen_at = \(at.timeIntervalSince1970) WHERE id = \(id.rawValue)")
        }
    }
}
