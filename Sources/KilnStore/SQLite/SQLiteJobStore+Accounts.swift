import Foundation
import GRDB
import KilnCore

/// Accounts and keys.
extension SQLiteJobStore {
    public func createAccount(_ account: Account) async throws {
        try await write { db in
            try db.run(
                sql: "INSERT INTO accounts (id, name, tier, created_at) VALUES (?, ?, ?, ?)",
                arguments: [account.id.rawValue, account.name, account.tier, account.createdAt.timeIntervalSince1970])
        }
    }

    public func account(_ id: AccountID) async throws -> Account? {
        try await pool.read { db in
            try Row.fetchOne(db, cached: "SELECT * FROM accounts WHERE id = ?", arguments: [id.rawValue]).map(Self.account(from:))
        }
    }

    public func accounts() async throws -> [Account] {
        try await pool.read { db in
            try Row.fetchAll(db, cached: "SELECT * FROM accounts ORDER BY created_at, id").map(Self.account(from:))
        }
    }

    public func updateAccountTier(_ id: AccountID, tier: String) async throws -> Account {
        try await write { db in
            try db.run(sql: "UPDATE accounts SET tier = ? WHERE id = ?", arguments: [tier, id.rawValue])
            guard db.changesCount == 1,
                let row = try Row.fetchOne(db, cached: "SELECT * FROM accounts WHERE id = ?", arguments: [id.rawValue])
            else { throw KilnError(.notFound, "no account '\(id)'") }
            try Self.recordChange(db, .account, id.rawValue)
            return Self.account(from: row)
        }
    }

    public func createKey(_ key: APIKeyRecord) async throws {
        try await write { db in
            try db.run(
                sql: "INSERT INTO api_keys (id, scope, account_id, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [
                    key.id.rawValue, key.scope.rawValue, key.accountID?.rawValue, key.secretHash,
                    key.createdAt.timeIntervalSince1970,
                ])
        }
    }

    public func key(secretHash: String) async throws -> APIKeyRecord? {
        try await pool.read { db in
            guard let row = try Row.fetchOne(db, cached: "SELECT * FROM api_keys WHERE secret_hash = ?", arguments: [secretHash])
            else { return nil }
            return APIKeyRecord(
                id: KeyID(unchecked: row["id"]), scope: KeyScope(rawValue: row["scope"]) ?? .user,
                accountID: (row["account_id"] as String?).map(AccountID.init(unchecked:)), secretHash: row["secret_hash"],
                createdAt: Date(timeIntervalSince1970: row["created_at"]),
                revokedAt: (row["revoked_at"] as Double?).map(Date.init(timeIntervalSince1970:)))
        }
    }

    public func revokeKey(_ id: KeyID, at: Date) async throws {
        try await write { db in
            try db.run(
                sql: "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
                arguments: [at.timeIntervalSince1970, id.rawValue])
            guard db.changesCount == 1 else { throw KilnError(.notFound, "no key '\(id)'") }
            try Self.recordChange(db, .key, id.rawValue)
        }
    }
}
