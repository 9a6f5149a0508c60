import HTTPTypes
import Hummingbird
import KilnCore
import KilnStore

/// Resolves `Authorization: Bearer <key>` to a ``Principal``.
struct Authenticator: Sendable {
    let store: any JobStore
    /// `KILN_ADMIN_KEY`: accepted as an admin key (bootstrap).
    let bootstrapAdminKey: String?

    func principal(for request: Request) async throws -> Principal {
        guard let header = request.headers[.authorization] else {
            throw KilnError(.unauthorized, "missing Authorization header; send 'Authorization: Bearer <key>'")
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer", !parts[1].isEmpty else {
            throw KilnError(.unauthorized, "the Authorization header must be 'Bearer <key>'")
        }
        let secret = String(parts[1])
        if let bootstrapAdminKey, KeySecret.constantTimeEquals(secret, bootstrapAdminKey) {
            return .admin(nil)
        }
        guard let key = try await store.key(secretHash: KeySecret.hash(secret)), key.revokedAt == nil else {
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
}

/// Admits only callers whose key has `scope`, and records who they are in the context.
struct RequireScope: RouterMiddleware {
    typealias Context = KilnRequestContext
    let scope: KeyScope
    let authenticator: Authenticator

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let principal = try await authenticator.principal(for: request)
        let granted: Bool
        switch (scope, principal) {
        case (.user, .user), (.worker, .worker), (.admin, .admin): granted = true
        default: granted = false
        }
        guard granted else {
            throw KilnError(.forbidden, "this call needs a \(scope.rawValue) key")
        }
        var context = context
        context.principal = principal
        return try await next(request, context)
    }
}
