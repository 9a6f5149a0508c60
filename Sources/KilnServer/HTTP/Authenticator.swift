import HTTPTypes
import Hummingbird
import KilnCore
import KilnStore

/// Resolves `Authorization: Bearer <key>` to a ``Principal``.
struct Authenticator: Sendable {
    let cache: RecordCache
    /// The hash of `KILN_ADMIN_KEY`, accepted as an admin key (bootstrap).
    let bootstrapAdminKeyHash: String?

    init(cache: RecordCache, bootstrapAdminKey: String?) {
        self.cache = cache
        self.bootstrapAdminKeyHash = bootstrapAdminKey.map(KeySecret.hash)
    }

    func principal(for request: Request) async throws -> Principal {
        guard let header = request.headers[.authorization] else {
            throw KilnError(.unauthorized, "missing Authorization header; send 'Authorization: Bearer <key>'")
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer", !parts[1].isEmpty else {
            throw KilnError(.unauthorized, "the Authorization header must be 'Bearer <key>'")
        }
        let hash = KeySecret.hash(String(parts[1]))
        if let bootstrapAdminKeyHash, KeySecret.equalHashes(hash, bootstrapAdminKeyHash) {
            return .admin(nil)
        }
        guard let key = try await cache.key(secretHash: hash), key.revokedAt == nil else {
            throw KilnError(.unauthorized, "the key is unknown or revoked")
        }
        switch key.scope {
        case .user:
            guard let account = key.accountID else { throw KilnError(.unauthorized, "the key has no account") }
            return .user(account, key.id)
        case .worker: return .worker(key.id)
        case .admin: return .admin(key.id)
        }
    }

    /// The scope a path needs, as the document's tags say: `public` operations (`/v1/files`,
    /// `/v1/generations`, `/v1/models`) need a user key, `admin` ones (`/v1/admin/…`) an admin key,
    /// `worker` ones (`/v1/workers…`) a worker key; `meta` ones (`/healthz`, `/openapi.yaml`) none.
    static func scope(of path: String) -> KeyScope? {
        let segments = path.split(separator: "/", omittingEmptySubsequences: true)
        guard segments.first == "v1", segments.count >= 2 else { return nil }
        switch segments[1] {
        case "admin": return .admin
        case "workers": return .worker
        default: return .user
        }
    }
}

/// Admits only callers whose key has the scope the path needs, and runs the rest of the request
/// with ``Principal/current`` set to them.
struct RequireScope: RouterMiddleware {
    typealias Context = KilnRequestContext
    let authenticator: Authenticator

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let scope = Authenticator.scope(of: request.uri.path) else { return try await next(request, context) }
        let principal = try await authenticator.principal(for: request)
        let granted: Bool
        switch (scope, principal) {
        case (.user, .user), (.worker, .worker), (.admin, .admin): granted = true
        default: granted = false
        }
        guard granted else {
            throw KilnError(.forbidden, "this call needs a \(scope.rawValue) key")
        }
        return try await Principal.$current.withValue(principal) { try await next(request, context) }
    }
}
