import Foundation
import KilnCore

/// The head of one tier's queue, as a policy sees it when choosing between tiers.
public struct QueueHead: Sendable {
    public var queuedAt: Double
    public var sequence: Int64
    public var tier: Tier
    /// The tier's place in the ``TierTable`` (0 = most valuable).
    public var tierRank: Int

    public init(queuedAt: Double, sequence: Int64, tier: Tier, tierRank: Int) {
        self.queuedAt = queuedAt
        self.sequence = sequence
        self.tier = tier
        self.tierRank = tierRank
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
    /// The name used in configuration and by the simulator (`slo`, `fifo`, `strict`, `edf`).
    var name: String { get }
    func priority(of head: QueueHead, now: Double) -> Double
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
        Urgency.of(queuedAt: head.queuedAt, maxWait: head.tier.maxWait, now: now)
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
    public func priority(of head: QueueHead, now: Double) -> Double { -(head.queuedAt + head.tier.maxWait) }
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
    public static let all: [any SchedulingPolicy] = [SLOPolicy(), FIFOPolicy(), StrictPriorityPolicy(), EarliestDeadlinePolicy()]

    /// - Throws: ``KilnError`` naming the known policies when `name` is not one of them.
    public static func named(_ name: String) throws -> any SchedulingPolicy {
        guard let policy = all.first(where: { $0.name == name }) else {
            throw KilnError(
                .invalidInput, "unknown scheduling policy '\(name)'; known: \(all.map(\.name).joined(separator: ", "))")
        }
        return policy
    }
}
