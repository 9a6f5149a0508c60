/// An error of the Kiln domain: a stable machine-readable code and a message for people.
///
/// Codes grow without breaking callers (a struct over a private enum, as NIO's `FileSystemError`).
/// The message names the field, limit or resource at fault. HTTP statuses are assigned at the API
/// boundary only.
public struct KilnError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidRequest = "invalid_request"
            case invalidInput = "invalid_input"
            case unauthorized
            case forbidden
            case notFound = "not_found"
            case conflict
            case staleLease = "stale_lease"
            case payloadTooLarge = "payload_too_large"
            case rateLimited = "rate_limited"
            case unavailable
            case `internal`
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The request is malformed: bad JSON, a missing or mistyped field.
        public static let invalidRequest = Code(.invalidRequest)
        /// The request is well formed but its content is refused (unknown model, bad input values).
        public static let invalidInput = Code(.invalidInput)
        public static let unauthorized = Code(.unauthorized)
        public static let forbidden = Code(.forbidden)
        public static let notFound = Code(.notFound)
        /// The resource is not in a state that allows the change.
        public static let conflict = Code(.conflict)
        /// A worker call carried a fencing token that no longer holds the lease.
        public static let staleLease = Code(.staleLease)
        public static let payloadTooLarge = Code(.payloadTooLarge)
        /// An admission limit was reached; ``KilnError/retryAfter`` says when to try again.
        public static let rateLimited = Code(.rateLimited)
        public static let unavailable = Code(.unavailable)
        public static let `internal` = Code(.internal)

        public var rawValue: String { base.rawValue }

        /// The code with this wire name, as an API client reads it back.
        public init?(rawValue: String) {
            guard let base = Base(rawValue: rawValue) else { return nil }
            self.base = base
        }
        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String
    /// Seconds after which a refused request may succeed (with ``Code/rateLimited``).
    public var retryAfter: Int?

    public init(_ code: Code, _ message: String, retryAfter: Int? = nil) {
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
    }

    public var description: String { "\(code): \(message)" }
}
