import Foundation
import KilnCore
import KilnStore
import PostgresNIO

/// Webhook secrets and deliveries. A delivery is inserted by ``persist`` in the statement of the
/// transition it tells of: a committed final state always has its delivery.
extension PostgresJobStore {
    static let deliveryColumns = "id, generation_id, account_id, type, url, state, created_at, next_attempt_at"

    public func createWebhookSecret(_ secret: WebhookSecret, othersValidUntil: Date?) async throws {
        try await write { session in
            if let othersValidUntil {
                let until = othersValidUntil.timeIntervalSince1970
                try await session.run(
                    """
                    UPDATE webhook_secrets SET expires_at = \(until)
                    WHERE account_id = \(secret.accountID.rawValue) AND (expires_at IS NULL OR expires_at > \(until))
                    """)
            }
            try await session.run(
                """
                INSERT INTO webhook_secrets (id, account_id, secret, created_at, expires_at)
                VALUES (\(secret.id), \(secret.accountID.rawValue), \(secret.secret), \(secret.createdAt.timeIntervalSince1970),
                    \(secret.expiresAt?.timeIntervalSince1970))
                """)
        }
    }

    public func webhookSecrets(of account: AccountID, at now: Date) async throws -> [WebhookSecret] {
        try await read { session in
            try await session.rows(
                """
                SELECT id, account_id, secret, created_at, expires_at FROM webhook_secrets
                WHERE account_id = \(account.rawValue) AND (expires_at IS NULL OR expires_at > \(now.timeIntervalSince1970))
                ORDER BY created_at, id
                """
            ).map { row in
                WebhookSecret(
                    id: try row.value("id"), accountID: AccountID(unchecked: try row.value("account_id")), secret: try row.value("secret"),
                    createdAt: try row.date("created_at"), expiresAt: try row.optionalDate("expires_at"))
            }
        }
    }

    public func deleteWebhookSecret(_ id: String, of account: AccountID) async throws {
        try await write { session in
            let deleted = try await session.run(
                "DELETE FROM webhook_secrets WHERE id = \(id) AND account_id = \(account.rawValue) RETURNING 1")
            guard deleted == 1 else { throw KilnError(.notFound, "no webhook secret '\(id)'") }
        }
    }

    public func claimDueDeliveries(at now: Date, claimUntil: Date, limit: Int) async throws -> [WebhookDelivery] {
        try await change { session in
            // One statement claims them: deliveries another server is claiming are skipped, not
            // waited for. Each is returned as it was before the claim moved its next attempt.
            let rows = try await session.rows(
                """
                WITH due AS (
                    SELECT \(unescaped: Self.deliveryColumns) FROM webhook_deliveries
                    WHERE state = 'pending' AND next_attempt_at <= \(now.timeIntervalSince1970)
                    ORDER BY next_attempt_at, id LIMIT \(limit) FOR UPDATE SKIP LOCKED),
                claimed AS (
                    UPDATE webhook_deliveries d SET next_attempt_at = \(claimUntil.timeIntervalSince1970) FROM due WHERE d.id = due.id)
                SELECT \(unescaped: Self.deliveryColumns) FROM due ORDER BY next_attempt_at, id
                """)
            return try await Self.deliveries(from: rows, session)
        }
    }

    public func recordDeliveryAttempt(_ id: String, _ attempt: WebhookAttempt, outcome: WebhookOutcome) async throws {
        let (state, next) = outcome.next
        try await change { session in
            try await session.run(
                """
                WITH attempt AS (
                    INSERT INTO webhook_attempts (delivery_id, seq, at, status, error, duration)
                    SELECT \(id), COALESCE(MAX(seq), 0) + 1, \(attempt.at.timeIntervalSince1970), \(attempt.status), \(attempt.error),
                        \(attempt.durationSeconds)
                    FROM webhook_attempts WHERE delivery_id = \(id))
                UPDATE webhook_deliveries SET state = \(state.rawValue), next_attempt_at = \(next?.timeIntervalSince1970)
                WHERE id = \(id)
                """)
        }
    }

    public func delivery(_ id: String) async throws -> WebhookDelivery? {
        try await read { session in
            let rows = try await session.rows("SELECT \(unescaped: Self.deliveryColumns) FROM webhook_deliveries WHERE id = \(id)")
            return try await Self.deliveries(from: rows, session).first
        }
    }

    public func deliveries(of generation: GenerationID) async throws -> [WebhookDelivery] {
        try await read { session in
            let rows = try await session.rows(
                """
                SELECT \(unescaped: Self.deliveryColumns) FROM webhook_deliveries WHERE generation_id = \(generation.rawValue)
                ORDER BY created_at, id
                """)
            return try await Self.deliveries(from: rows, session)
        }
    }

    public func redeliver(_ id: String, at now: Date) async throws -> WebhookDelivery {
        try await write { session in
            let rows = try await session.rows(
                """
                UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = \(now.timeIntervalSince1970) WHERE id = \(id)
                RETURNING \(unescaped: Self.deliveryColumns)
                """)
            guard let delivery = try await Self.deliveries(from: rows, session).first else {
                throw KilnError(.notFound, "no delivery '\(id)'")
            }
            return delivery
        }
    }

    // MARK: Rows

    /// Deliveries from their rows, each with its attempts (read in one query for all).
    static func deliveries(from rows: [PostgresRandomAccessRow], _ session: PostgresSession) async throws -> [WebhookDelivery] {
        guard !rows.isEmpty else { return [] }
        let ids: [String] = try rows.map { try $0.value("id") }
        var attempts: [String: [WebhookAttempt]] = [:]
        for row in try await session.rows(
            "SELECT delivery_id, at, status, error, duration FROM webhook_attempts WHERE delivery_id = ANY(\(ids)) ORDER BY delivery_id, seq")
        {
            attempts[try row.value("delivery_id"), default: []].append(
                WebhookAttempt(
                    at: try row.date("at"), status: try row.value("status", as: Int?.self), error: try row.value("error"),
                    durationSeconds: try row.value("duration")))
        }
        return try rows.map { row in
            let id: String = try row.value("id")
            return WebhookDelivery(
                id: id, generationID: GenerationID(unchecked: try row.value("generation_id")),
                accountID: AccountID(unchecked: try row.value("account_id")), type: try row.value("type"), url: try row.value("url"),
                state: WebhookDelivery.State(rawValue: try row.value("state")) ?? .failed, createdAt: try row.date("created_at"),
                nextAttemptAt: try row.optionalDate("next_attempt_at"), attempts: attempts[id] ?? [])
        }
    }
}
