import Foundation
import KilnCore

/// The head of one tier's queue, as a policy sees it when choosing between tiers.
public struct QueueHead: Sendable {
    public var queuedAt: Double
    public var sequence: Int64
    /// The tier's promised worst-case wait, in seconds (plain numbers, so that building a head
    /// copies no reference-counted tier name).
    public var maxWait: Double
    /// The tier's place in the ``TierTable`` (0 = most valuable).
    public var tierRank: Int
    /// Whether the policy's ``SchedulingPolicy/protection`` names the tier.
    public var isProtected: Bool

    public init(queuedAt: Double, sequence: Int64, maxWait: Double, tierRank: Int, isProtected: Bool = false) {
        self.queuedAt = queuedAt
        self.sequence = sequence
        self.maxWait = maxWait
        self.tierRank = tierRank
        self.isProtected = isProtected
    }
}

/// Tiers served first, and the bound on how much of the fleet they may take while other tiers
/// wait: the layer DESIGN §4 composes over the urgency order.
public struct Protection: Hashable, Sendable {
    /// The protected tiers, by name.
    public var tiers: Set<String>
    /// Of the dispatches made while an unprotected job is eligible, the most that may go to
    /// protected jobs, in thousandths (900: at least one in ten goes to an unprotected job).
    public var sharePermille: Int

    /// - Throws: ``KilnError`` when `share` is not in [0, 1).
    public init(tiers: Set<String>, share: Double) throws {
        guard share >= 0, share < 1 else {
            throw KilnError(.invalidInput, "protected_share: \(share) must be at least 0 and below 1, so that no tier starves")
        }
        self.tiers = tiers
        self.sharePermille = Int((share * 1000).rounded())
    }

    /// Dispatches in a row, while unprotected work waits, that can all go to protected jobs:
    /// ⌈1000 / (1000 − share)⌉ − 1. The next one goes to an unprotected job.
    public var longestProtectedRun: Int {
        let unprotected = 1000 - sharePermille
        return (1000 + unprotected - 1) / unprotected - 1
    }
}

/// Orders the heads of the per-tier FIFO queues.
///
/// Within one tier every policy here is FIFO, so only queue heads are ever compared and a decision
/// costs O(queues), not O(jobs). A policy returns a priority (higher goes first); ties are broken by
/// the earlier `queuedAt`, then the lower sequence number, so the order is total and deterministic.
///
/// A policy must rank older jobs of one tier no lower than newer ones: the scheduler relies on it
/// to keep each queue sorted by arrival and to count queue positions by binary search.
public protocol SchedulingPolicy: Sendable {
    /// The name used in configuration and by the simulator (`slo`, `fifo`, `strict`, `edf`, `protected`).
    var name: String { get }
    func priority(of head: QueueHead, now: Double) -> Double
    /// Tiers the scheduler serves first within a bounded share of dispatches; nil for none.
    var protection: Protection? { get }
}

extension SchedulingPolicy {
    public var protection: Protection? { nil }
}

extension SchedulingPolicy {
    /// Whether `a` is dispatched before `b` at `now`: the policy's priority, then age, then sequence.
    @inlinable
    public func precedes(_ a: QueueHead, _ b: QueueHead, now: Double) -> Bool {
        let pa = priority(of: a, now: now)
        let pb = priority(of: b, now: now)
        if pa != pb { return pa > pb }
        if a.queuedAt != b.queuedAt { return a.queuedAt < b.queuedAt }
        return a.sequence < b.sequence
    }
}

/// The SLO policy of DESIGN §4: the job that has used the largest share of its tier's promised
/// wait goes first. `urgency = (now − queuedAt) / maxWait`; ≥ 1 means the promise is breached.
///
/// A free job that has waited long enough outranks a fresh enterprise job, so no tier starves, and
/// under overload lateness is shared in proportion to each tier's promise.
public struct SLOPolicy: SchedulingPolicy {
    public init() {}
    public var name: String { "slo" }

    @inlinable
    public func priority(of head: QueueHead, now: Double) -> Double {
        Urgency.of(queuedAt: head.queuedAt, maxWait: head.maxWait, now: now)
    }
}

/// First come, first served, whatever the tier.
public struct FIFOPolicy: SchedulingPolicy {
    public init() {}
    public var name: String { "fifo" }
    @inlinable
    public func priority(of head: QueueHead, now: Double) -> Double { -head.queuedAt }
}

/// Tiers in their table order; a lower tier runs only when every higher one is empty. Can starve.
public struct StrictPriorityPolicy: SchedulingPolicy {
    public init() {}
    public var name: String { "strict" }
    @inlinable
    public func priority(of head: QueueHead, now: Double) -> Double { -Double(head.tierRank) }
}

/// Earliest deadline first: the deadline is `queuedAt + maxWait`.
public struct EarliestDeadlinePolicy: SchedulingPolicy {
    public init() {}
    public var name: String { "edf" }
    @inlinable
    public func priority(of head: QueueHead, now: Double) -> Double { -(head.queuedAt + head.maxWait) }
}

/// The protected layer over the SLO order (DESIGN §4): jobs of protected tiers go first, by
/// urgency among themselves; every other job follows by urgency, as under ``SLOPolicy``.
///
/// Alone that would be strict priority between two classes, which starves the unprotected one when
/// protected demand exceeds the fleet. The bound is the scheduler's, from ``protection``: while an
/// unprotected job is eligible, protected jobs take at most `share` of the dispatches, so at least
/// one in every ``Protection/longestProtectedRun`` + 1 dispatches goes to the most urgent
/// unprotected job. An unprotected job with `k` unprotected jobs ahead of it (by urgency, none
/// arriving ahead of it meanwhile) is therefore dispatched within `(k + 1) × (run + 1)` dispatches,
/// whatever the protected load.
///
/// A protected job keeps its place in the protected band after its promise is broken: within a tier
/// an older job never ranks below a newer one, which the scheduler's queues rely on.
public struct ProtectedPolicy: SchedulingPolicy {
    /// Above every urgency a queue can reach (urgencies are waits over promises of a second or more).
    @usableFromInline static let band = 1e12

    public let protection: Protection?

    public init(_ protection: Protection) {
        self.protection = protection
    }

    /// Enterprise and api protected, taking at most 90 % of dispatches while others wait.
    public static let standard = ProtectedPolicy(try! Protection(tiers: ["enterprise", "api"], share: 0.9))

    public var name: String { "protected" }

    @inlinable
    public func priority(of head: QueueHead, now: Double) -> Double {
        let urgency = Urgency.of(queuedAt: head.queuedAt, maxWait: head.maxWait, now: now)
        return head.isProtected ? Self.band + urgency : urgency
    }
}

public enum Urgency {
    /// The share of its promised wait a job has used at `now`.
    @inlinable
    public static func of(queuedAt: Double, maxWait: Double, now: Double) -> Double {
        (now - queuedAt) / maxWait
    }
}

public enum SchedulingPolicies {
    /// Every policy, by name.
    public static let all: [any SchedulingPolicy] = [
        SLOPolicy(), FIFOPolicy(), StrictPriorityPolicy(), EarliestDeadlinePolicy(), ProtectedPolicy.standard,
    ]

    /// - Throws: ``KilnError`` naming the known policies when `name` is not one of them.
    public static func named(_ name: String) throws -> any SchedulingPolicy {
        guard let policy = all.first(where: { $0.name == name }) else {
            throw KilnError(
                .invalidInput, "unknown scheduling policy '\(name)'; known: \(all.map(\.name).joined(separator: ", "))")
        }
        return policy
    }
}
