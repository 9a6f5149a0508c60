import Foundation
import KilnCore
import KilnStore
import PostgresNIO

extension PostgresJobStore: LeaderElection {
    public func claimLeadership(holder: String, url: String, at: Date, ttl: Double) async throws -> LeaderLease {
        let now = at.timeIntervalSince1970
        return try await change { session in
            // One statement takes a free or lapsed lease (the epoch grows) or renews the holder's;
            // claims that race wait for each other on the row and see the winner's lease.
            var lease = try await session.row(
                """
                INSERT INTO leadership (id, holder, epoch, url, expires_at) VALUES (1, \(holder), 1, \(url), \(now + ttl))
                ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, url = excluded.url, expires_at = excluded.expires_at,
                    epoch = CASE WHEN leadership.holder = excluded.holder THEN leadership.epoch ELSE leadership.epoch + 1 END
                WHERE leadership.holder = excluded.holder OR leadership.expires_at <= \(now)
                RETURNING holder, epoch, url, expires_at
                """)
            if lease == nil { lease = try await session.row("SELECT holder, epoch, url, expires_at FROM leadership WHERE id = 1") }
            guard let row = lease else { throw KilnError(.internal, "the leadership lease is neither claimed nor held") }
            return LeaderLease(
                holder: try row.value("holder"), epoch: try row.value("epoch"), url: try row.value("url"),
                expiresAt: try row.date("expires_at"))
        }
    }

    public func resignLeadership(holder: String) async throws {
        try await change { session in
            try await session.run("UPDATE leadership SET expires_at = 0 WHERE id = 1 AND holder = \(holder)")
        }
    }
}
