import Foundation
import KilnCore

// What every backend decides alike, whatever its SQL: how a submission is stored, which webhook a
// transition owes, and the errors that name a refusal.

extension Generation {
    /// The generation as a submission stores it: queued, with nothing of a run, whatever else the
    /// caller's value carried.
    public var asSubmitted: Generation {
        var stored = self
        stored.state = .queued
        stored.attempts = 0
        stored.progress = JobProgress()
        stored.output = [:]
        stored.error = nil
        stored.lease = nil
        stored.startedAt = nil
        stored.completedAt = nil
        return stored
    }
}

extension GenerationEvent.Kind {
    /// The type of the webhook delivery this event owes `generation`, if any: every final state,
    /// and `started` and `progress` when the generation asked for them. A backend coalesces
    /// `generation.progress`: while one such delivery waits for its first attempt, it adds none.
    public func webhookType(for generation: Generation) -> String? {
        guard generation.callbackURL != nil else { return nil }
        switch self {
        case .succeeded, .failed, .canceled:
            return "generation.\(rawValue)"
        case .started, .progress:
            return generation.callbackEvents.contains(rawValue) ? "generation.\(rawValue)" : nil
        default:
            return nil
        }
    }
}

extension KilnError {
    /// A submission refused by ``Admission/maxQueuedPerAccount``.
    public static func accountQueueFull(queued: Int, cap: Int, tier: String) -> KilnError {
        KilnError(
            .rateLimited,
            "account has \(queued) queued generations, the most its '\(tier)' tier allows (max_queued_per_account \(cap))")
    }

    /// A submission refused by ``Admission/maxQueuedInTier``.
    public static func tierQueueFull(queued: Int, cap: Int, tier: String) -> KilnError {
        KilnError(.rateLimited, "the '\(tier)' tier has \(queued) queued generations, its limit (max_queued \(cap))")
    }

    /// An idempotency key sent again with a different request.
    public static func idempotencyKeyReused(_ key: String) -> KilnError {
        KilnError(.conflict, "Idempotency-Key '\(key)' was already used with a different request")
    }

    /// A transition refused because the generation changed after it was read.
    public static func generationChanged(_ id: GenerationID) -> KilnError {
        KilnError(.conflict, "generation '\(id)' changed while this change was made; nothing was applied")
    }
}

extension KilnError {
    /// Whether the error refuses one item of a batch (a stale lease, an unknown generation, input
    /// that does not hold, a conflict) rather than the store's failing: only such errors are
    /// answered per item; the others fail the whole call.
    public var refusesItem: Bool {
        switch code {
        case .staleLease, .notFound, .invalidInput, .conflict: true
        default: false
        }
    }
}

extension SubmissionRequest {
    /// A batch of submissions is of one account and tier, whose caps it counts once.
    ///
    /// - Throws: `.invalidRequest` naming the problem when it is not.
    public static func checkOneAccountAndTier(_ batch: [SubmissionRequest]) throws {
        guard let first = batch.first?.generation else { return }
        guard batch.allSatisfy({ $0.generation.accountID == first.accountID && $0.generation.tier == first.tier }) else {
            throw KilnError(.invalidRequest, "a batch of submissions must all be of one account and tier")
        }
    }
}
