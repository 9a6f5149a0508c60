import Foundation
import GRDB
import KilnCore

/// Webhook secrets and deliveries. A delivery is inserted by ``persist`` in the transaction of the
/// transition it tells of: a committed final state always has its delivery.
extension SQLiteJobStore {
    public func createWebhookSecret(_ secret: WebhookSecret, othersValidUntil: Date?) async throws {
        try await write { db in
            if let othersValidUntil {
                try db.run(
                    sql: """
                        UPDATE webhook_secrets SET expires_at = ?
                        WHERE account_id = ? AND (expires_at IS NULL OR expires_at > ?)
                        """,
                    arguments: [
                        othersValidUntil.timeIntervalSince1970, secret.accountID.rawValue, othersValidUntil.timeIntervalSince1970,
                    ])
            }
            try db.run(
                sql: "INSERT INTO webhook_secrets (id, account_id, secret, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [
                    secret.id, secret.accountID.rawValue, secret.secret, secret.createdAt.timeIntervalSince1970,
                    secret.expiresAt?.timeIntervalSince1970,
                ])
        }
    }

    public func webhookSecrets(of account: AccountID, at now: Date) async throws -> [WebhookSecret] {
        try await pool.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM webhook_secrets WHERE account_id = ? AND (expires_at IS NULL OR expires_at > ?)
                    ORDER BY created_at, id
                    """,
                arguments: [account.rawValue, now.timeIntervalSince1970]
            ).map {
                WebhookSecret(
                    id: $0["id"], accountID: AccountID(unchecked: $0["account_id"]), secret: $0["secret"],
                    createdAt: Date(timeIntervalSince1970: $0["created_at"]),
                    expiresAt: ($0["expires_at"] as Double?).map(Date.init(timeIntervalSince1970:)))
            }
        }
    }

    public func deleteWebhookSecret(_ id: String, of account: AccountID) async throws {
        try await write { db in
            try db.run(sql: "DELETE FROM webhook_secrets WHERE id = ? AND account_id = ?", arguments: [id, account.rawValue])
            guard db.changesCount == 1 else { throw KilnError(.notFound, "no webhook secret '\(id)'") }
        }
    }

    public func claimDueDeliveries(at now: Date, claimUntil: Date, limit: Int) async throws -> [WebhookDelivery] {
        // Polled several times a second: the writer is taken only when something is due.
        let due = try await pool.read { db in
            try Bool.fetchOne(
                db, cached: "SELECT 1 FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= ? LIMIT 1",
                arguments: [now.timeIntervalSince1970]) == true
        }
        guard due else { return [] }
        return try await write { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= ?
                    ORDER BY next_attempt_at LIMIT ?
                    """,
                arguments: [now.timeIntervalSince1970, limit])
            var claimed: [WebhookDelivery] = []
            for row in rows {
                try db.run(
                    sql: "UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ?",
                    arguments: [claimUntil.timeIntervalSince1970, row["id"] as String])
                claimed.append(try Self.delivery(from: row, db))
            }
            return claimed
        }
    }

    public func recordDeliveryAttempt(_ id: String, _ attempt: WebhookAttempt, outcome: WebhookOutcome) async throws {
        try await write { db in
            let count = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM webhook_attempts WHERE delivery_id = ?", arguments: [id]) ?? 0
            try db.run(
                sql: "INSERT INTO webhook_attempts (delivery_id, seq, at, status, error, duration) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [id, count + 1, attempt.at.timeIntervalSince1970, attempt.status, attempt.error, attempt.durationSeconds])
            let (state, next) = outcome.next
            try db.run(
                sql: "UPDATE webhook_deliveries SET state = ?, next_attempt_at = ? WHERE id = ?",
                arguments: [state.rawValue, next?.timeIntervalSince1970, id])
        }
    }

    public func delivery(_ id: String) async throws -> WebhookDelivery? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM webhook_deliveries WHERE id = ?", arguments: [id]).map { try Self.delivery(from: $0, db) }
        }
    }

    public func deliveries(of generation: GenerationID) async throws -> [WebhookDelivery] {
        try await pool.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM webhook_deliveries WHERE generation_id = ? ORDER BY created_at, id", arguments: [generation.rawValue]
            ).map { try Self.delivery(from: $0, db) }
        }
    }

    public func redeliver(_ id: String, at now: Date) async throws -> WebhookDelivery {
        try await write { db in
            try db.run(
                sql: "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = ? WHERE id = ?",
                arguments: [now.timeIntervalSince1970, id])
            guard db.changesCount == 1,
                let row = try Row.fetchOne(db, sql: "SELECT * FROM webhook_deliveries WHERE id = ?", arguments: [id])
            else { throw KilnError(.notFound, "no delivery '\(id)'") }
            return try Self.delivery(from: row, db)
        }
    }

    // MARK: In a transaction

    /// The delivery a transition owes the generation's callback URL, if any: every final state;
    /// `started` and `progress` when the generation asked for them. Progress is coalesced: while
    /// one progress delivery waits for its first attempt, no other is added (it will carry the
    /// generation as it is when it goes).
    static func enqueueWebhook(_ db: Database, for generation: Generation, event: GenerationEvent.Kind, at: Date) throws {
        guard let url = generation.callbackURL else { return }
        switch event {
        case .succeeded, .failed, .canceled:
            break
        case .started, .progress:
            guard generation.callbackEvents.contains(event.rawValue) else { return }
            if event == .progress,
                try Bool.fetchOne(
                    db,
                    cached: """
                        SELECT 1 FROM webhook_deliveries d
                        WHERE d.generation_id = ? AND d.type = 'generation.progress' AND d.state = 'pending'
                        AND NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.delivery_id = d.id)
                        """,
                    arguments: [generation.id.rawValue]) == true
            {
                return
            }
        default:
            return
        }
        try db.run(
            sql: """
                INSERT INTO webhook_deliveries (id, generation_id, account_id, type, url, state, created_at, next_attempt_at)
                VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)
                """,
            arguments: [
                WebhookDelivery.newID(), generation.id.rawValue, generation.accountID.rawValue, "generation.\(event.rawValue)", url,
                at.timeIntervalSince1970, at.timeIntervalSince1970,
            ])
    }

    static func delivery(from row: Row, _ db: Database) throws -> WebhookDelivery {
        let id: String = row["id"]
        let attempts = try Row.fetchAll(db, sql: "SELECT * FROM webhook_attempts WHERE delivery_id = ? ORDER BY seq", arguments: [id]).map {
            WebhookAttempt(
                at: Date(timeIntervalSince1970: $0["at"]), status: $0["status"], error: $0["error"], durationSeconds: $0["duration"])
        }
        return WebhookDelivery(
            id: id, generationID: GenerationID(unchecked: row["generation_id"]), accountID: AccountID(unchecked: row["account_id"]),
            type: row["type"], url: row["url"], state: WebhookDelivery.State(rawValue: row["state"]) ?? .failed,
            createdAt: Date(timeIntervalSince1970: row["created_at"]),
            nextAttemptAt: (row["next_attempt_at"] as Double?).map(Date.init(timeIntervalSince1970:)), attempts: attempts)
    }
}
