import Hummingbird
import KilnCore

/// The request context of every route: Hummingbird's core storage and the authenticated caller.
public struct KilnRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var principal: Principal?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.principal = nil
    }

    /// The account of a user key. - Throws: `.forbidden` for other scopes.
    func account() throws -> AccountID {
        guard case .user(let account, _) = principal else {
            throw KilnError(.forbidden, "this call needs a user key (one that belongs to an account)")
        }
        return account
    }
}
