import Foundation

/// One event of a generation on its way to the generation's `callback_url`: recorded in the same
/// transaction as the transition it tells of, then delivered (and retried) until the receiver
/// answers `2xx`, answers `410 Gone`, or the retry schedule runs out.
public struct WebhookDelivery: Hashable, Sendable {
    public enum State: String, Hashable, Sendable {
        /// Not yet delivered; `nextAttemptAt` says when it is tried next.
        case pending
        /// A `2xx` came back.
        case delivered
        /// The receiver answered `410 Gone`: no more attempts.
        case gone
        /// The retry schedule ran out, or the URL may not be called.
        case failed
    }

    /// `msg_…`: the `webhook-id` of every attempt, by which receivers drop duplicates.
    public var id: String
    public var generationID: GenerationID
    public var accountID: AccountID
    /// `generation.succeeded`, `generation.failed`, `generation.canceled`, `generation.started`,
    /// `generation.progress`.
    public var type: String
    public var url: String
    public var state: State
    public var createdAt: Date
    public var nextAttemptAt: Date?
    public var attempts: [WebhookAttempt]

    public init(
        id: String, generationID: GenerationID, accountID: AccountID, type: String, url: String, state: State = .pending,
        createdAt: Date, nextAttemptAt: Date?, attempts: [WebhookAttempt] = []
    ) {
        self.id = id
        self.generationID = generationID
        self.accountID = accountID
        self.type = type
        self.url = url
        self.state = state
        self.createdAt = createdAt
        self.nextAttemptAt = nextAttemptAt
        self.attempts = attempts
    }

    /// A new delivery id: `msg_` and 26 random base-32 characters.
    public static func newID() -> String {
        let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz")
        var generator = SystemRandomNumberGenerator()
        return "msg_" + String((0..<26).map { _ in alphabet[Int(generator.next() % 32)] })
    }
}

/// One try at delivering a ``WebhookDelivery``.
public struct WebhookAttempt: Hashable, Sendable {
    public var at: Date
    /// The receiver's HTTP status; nil when none came (refused, timed out, unreachable).
    public var status: Int?
    /// Why it failed, when no status says it.
    public var error: String?
    public var durationSeconds: Double

    public init(at: Date, status: Int?, error: String?, durationSeconds: Double) {
        self.at = at
        self.status = status
        self.error = error
        self.durationSeconds = durationSeconds
    }
}

/// What an attempt leads to.
public enum WebhookOutcome: Hashable, Sendable {
    case delivered
    case gone
    case retry(at: Date)
    case failed

    /// What the delivery becomes: its state, and when it is tried next (pending only).
    public var next: (state: WebhookDelivery.State, attemptAt: Date?) {
        switch self {
        case .delivered: (.delivered, nil)
        case .gone: (.gone, nil)
        case .failed: (.failed, nil)
        case .retry(let at): (.pending, at)
        }
    }
}

/// A key that signs an account's webhooks (Standard Webhooks: `whsec_` and base64 of 32 random
/// bytes). Several are valid during a rotation; each delivery is signed with every valid one.
public struct WebhookSecret: Hashable, Sendable {
    public var id: String
    public var accountID: AccountID
    public var secret: String
    public var createdAt: Date
    /// When it stops signing; nil while it is the current one.
    public var expiresAt: Date?

    public init(id: String, accountID: AccountID, secret: String, createdAt: Date, expiresAt: Date? = nil) {
        self.id = id
        self.accountID = accountID
        self.secret = secret
        self.createdAt = createdAt
        self.expiresAt = expiresAt
    }

    public static func random(for account: AccountID, at now: Date) -> WebhookSecret {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        let id = "whk_" + WebhookDelivery.newID().dropFirst(4)
        return WebhookSecret(id: id, accountID: account, secret: "whsec_" + Data(bytes).base64EncodedString(), createdAt: now)
    }

    /// The HMAC key: the bytes the base64 after `whsec_` encodes.
    public var key: Data? {
        guard secret.hasPrefix("whsec_") else { return nil }
        return Data(base64Encoded: String(secret.dropFirst("whsec_".count)))
    }

    public func isValid(at now: Date) -> Bool { expiresAt.map { now < $0 } ?? true }
}

/// When a failed delivery is tried again: the Standard Webhooks schedule (at once, 5 s, 5 min,
/// 30 min, 2 h, 5 h, 10 h, 10 h: a little over a day in all), each delay spread by ±10 %, so that
/// receivers that failed together are not all retried at the same instant.
public enum WebhookSchedule {
    public static let delays: [Double] = [0, 5, 300, 1_800, 7_200, 18_000, 36_000, 36_000]

    /// The delay before attempt `attempt + 1` after `attempt` attempts failed; nil when none is left.
    /// - Parameter jitter: uniform in [0, 1).
    public static func delay(after attempt: Int, jitter: Double) -> Double? {
        guard attempt >= 1, attempt < delays.count else { return nil }
        return delays[attempt] * (0.9 + 0.2 * jitter)
    }
}
