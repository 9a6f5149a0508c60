import Foundation
import GRDB

extension SQLiteJobStore: LeaderElection {
    public func claimLeadership(holder: String, url: String, at: Date, ttl: Double) async throws -> LeaderLease {
        let now = at.timeIntervalSince1970
        return try await write { db in
            let expiry = now + ttl
            guard let row = try Row.fetchOne(db, cached: "SELECT holder, epoch, url, expires_at FROM leadership WHERE id = 1") else {
                try db.run(
                    sql: "INSERT INTO leadership (id, holder, epoch, url, expires_at) VALUES (1, ?, 1, ?, ?)",
                    arguments: [holder, url, expiry])
                return LeaderLease(holder: holder, epoch: 1, url: url, expiresAt: Date(timeIntervalSince1970: expiry))
            }
            var lease = LeaderLease(
                holder: row["holder"], epoch: row["epoch"], url: row["url"],
                expiresAt: Date(timeIntervalSince1970: row["expires_at"]))
            if lease.holder == holder {
                lease.url = url
            } else if lease.expiresAt.timeIntervalSince1970 <= now {
                lease = LeaderLease(holder: holder, epoch: lease.epoch + 1, url: url, expiresAt: lease.expiresAt)
            } else {
                return lease
            }
            lease.expiresAt = Date(timeIntervalSince1970: expiry)
            try db.run(
                sql: "UPDATE leadership SET holder = ?, epoch = ?, url = ?, expires_at = ? WHERE id = 1",
                arguments: [lease.holder, lease.epoch, lease.url, expiry])
            return lease
        }
    }

    public func resignLeadership(holder: String) async throws {
        try await write { db in
            try db.run(sql: "UPDATE leadership SET expires_at = 0 WHERE id = 1 AND holder = ?", arguments: [holder])
        }
    }
}
