import Foundation
import KilnCore
import KilnStore
import PostgresNIO

/// Accounts and keys.
extension PostgresJobStore {
    public func createAccount(_ account: Account) async throws {
        try await write { session in
            try await session.run(
                """
                INSERT INTO accounts (id, name, tier, created_at)
                VALUES (\(account.id.rawValue), \(account.name), \(account.tier), \(account.createdAt.timeIntervalSince1970))
                """)
        }
    }

    public func account(_ id: AccountID) async throws -> Account? {
        try await read { session in
            try await session.row("SELECT id, name, tier, created_at FROM accounts WHERE id = \(id.rawValue)").map(Self.account(from:))
        }
    }

    public func accounts() async throws -> [Account] {
        try await read { session in
            try await session.rows("SELECT id, name, tier, created_at FROM accounts ORDER BY created_at, id").map(Self.account(from:))
        }
    }

    public func updateAccountTier(_ id: AccountID, tier: String) async throws -> Account {
        try await write { session in
            guard
                let row = try await session.row(
                    "UPDATE accounts SET tier = \(tier) WHERE id = \(id.rawValue) RETURNING id, name, tier, created_at")
            else { throw KilnError(.notFound, "no account '\(id)'") }
            try await Self.recordChange(session, .account, id.rawValue)
            return try Self.account(from: row)
        }
    }

    public func createKey(_ key: APIKeyRecord) async throws {
        try await write { session in
            try await session.run(
                """
                INSERT INTO api_keys (id, scope, account_id, secret_hash, created_at)
                VALUES (\(key.id.rawValue), \(key.scope.rawValue), \(key.accountID?.rawValue), \(key.secretHash),
                    \(key.createdAt.timeIntervalSince1970))
                """)
        }
    }

    public func key(secretHash: String) async throws -> APIKeyRecord? {
        try await read { session in
            guard
                let row = try await session.row(
                    "SELECT id, scope, account_id, secret_hash, created_at, revoked_at FROM api_keys WHERE secret_hash = \(secretHash)")
            else { return nil }
            return APIKeyRecord(
                id: KeyID(unchecked: try row.value("id")), scope: KeyScope(rawValue: try row.value("scope")) ?? .user,
                accountID: try row.value("account_id", as: String?.self).map(AccountID.init(unchecked:)),
                secretHash: try row.value("secret_hash"), createdAt: try row.date("created_at"),
                revokedAt: try row.optionalDate("revoked_at"))
        }
    }

    public func revokeKey(_ id: KeyID, at: Date) async throws {
        try await write { session in
            let revoked = try await session.run(
                """
                UPDATE api_keys SET revoked_at = COALESCE(revoked_at, \(at.timeIntervalSince1970)) WHERE id = \(id.rawValue)
                RETURNING 1
                """)
            guard revoked == 1 else { throw KilnError(.notFound, "no key '\(id)'") }
            try await Self.recordChange(session, .key, id.rawValue)
        }
    }
}
