import Foundation

public struct Account: Hashable, Sendable {
    public var id: AccountID
    public var name: String
    public var tier: String
    public var createdAt: Date

    public init(id: AccountID, name: String, tier: String, createdAt: Date) {
        self.id = id
        self.name = name
        self.tier = tier
        self.createdAt = createdAt
    }
}

/// What a key may do (DESIGN §3).
public enum KeyScope: String, Hashable, Sendable, Codable, CaseIterable {
    /// Belongs to an account and sees only its data.
    case user
    case worker
    case admin
}

/// An API key as stored: only the hash of the secret is kept.
public struct APIKeyRecord: Hashable, Sendable {
    public var id: KeyID
    public var scope: KeyScope
    public var accountID: AccountID?
    /// Hex SHA-256 of the secret.
    public var secretHash: String
    public var createdAt: Date
    public var revokedAt: Date?

    public init(id: KeyID, scope: KeyScope, accountID: AccountID?, secretHash: String, createdAt: Date, revokedAt: Date? = nil) {
        self.id = id
        self.scope = scope
        self.accountID = accountID
        self.secretHash = secretHash
        self.createdAt = createdAt
        self.revokedAt = revokedAt
    }
}

/// A model: a name to which versions are pushed (the model repository adds versions and aliases).
public struct ModelRecord: Hashable, Sendable {
    public var name: String
    public var description: String
    /// JSON Schema of the generation input.
    public var inputSchema: JSONValue?
    public var createdAt: Date

    public init(name: String, description: String = "", inputSchema: JSONValue? = nil, createdAt: Date) {
        self.name = name
        self.description = description
        self.inputSchema = inputSchema
        self.createdAt = createdAt
    }

    /// Lowercase letters, digits, `-`, `_` and `.`; 1…64 characters, starting with a letter or digit.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, name.count <= 64 else { return false }
        let lower = "abcdefghijklmnopqrstuvwxyz0123456789"
        guard lower.unicodeScalars.contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { lower.unicodeScalars.contains($0) || "-_.".unicodeScalars.contains($0) }
    }
}

/// Media owned by an account: an uploaded input, or an output a worker produced.
public struct FileRecord: Hashable, Sendable {
    public enum Kind: String, Hashable, Sendable {
        /// Uploaded by a user: counts against the account's quota.
        case upload
        /// Written by a worker as a generation's output.
        case output
    }

    public var id: FileID
    public var accountID: AccountID
    public var size: Int64
    /// Hex SHA-256 of the bytes.
    public var sha256: String
    public var contentType: String
    /// The key of the bytes in the object store.
    public var objectKey: String
    public var createdAt: Date
    public var kind: Kind

    public init(
        id: FileID, accountID: AccountID, size: Int64, sha256: String, contentType: String, objectKey: String, createdAt: Date,
        kind: Kind = .upload
    ) {
        self.kind = kind
        self.id = id
        self.accountID = accountID
        self.size = size
        self.sha256 = sha256
        self.contentType = contentType
        self.objectKey = objectKey
        self.createdAt = createdAt
    }
}

/// A worker of the fleet, as registered.
public struct WorkerRecord: Hashable, Sendable {
    public enum State: String, Hashable, Sendable, Codable {
        /// Takes new work.
        case active
        /// Finishes what it holds and takes nothing new.
        case draining
        /// Gone: drained and stopped, or given back. Kept for the record; never leased to again.
        case retired
    }

    public var id: WorkerID
    public var cluster: String
    public var accelerator: String
    public var gpus: Int
    public var labels: [String: String]
    /// The capacity pool it belongs to (DESIGN §5); nil for a worker outside every pool.
    public var pool: String?
    public var state: State
    /// The key that registered it: the only one that may act as this worker.
    public var keyID: KeyID?
    public var registeredAt: Date
    public var lastSeenAt: Date

    public init(
        id: WorkerID, cluster: String, accelerator: String, gpus: Int, labels: [String: String] = [:], pool: String? = nil,
        state: State = .active, keyID: KeyID? = nil, registeredAt: Date, lastSeenAt: Date
    ) {
        self.pool = pool
        self.keyID = keyID
        self.id = id
        self.cluster = cluster
        self.accelerator = accelerator
        self.gpus = gpus
        self.labels = labels
        self.state = state
        self.registeredAt = registeredAt
        self.lastSeenAt = lastSeenAt
    }
}
