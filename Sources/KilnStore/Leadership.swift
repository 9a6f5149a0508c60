import Foundation

/// Who leads the control plane (DESIGN §2): several servers share one store, and one of them, the
/// leader, runs the scheduler and the background services; the others forward to it. The lease
/// lives in the store, so that the servers agree on it without talking to each other.
public struct LeaderLease: Sendable, Hashable {
    /// The server holding it (an id of its own, new at each start).
    public var holder: String
    /// Grows by one at each change of leader: the leader's term.
    public var epoch: Int64
    /// Where the other servers reach the leader.
    public var url: String
    /// When it lapses unless renewed.
    public var expiresAt: Date

    public init(holder: String, epoch: Int64, url: String, expiresAt: Date) {
        self.holder = holder
        self.epoch = epoch
        self.url = url
        self.expiresAt = expiresAt
    }
}

/// A store the servers sharing it elect their leader through.
///
/// Correctness never rests on there being one leader: every transition is a conditional update
/// (state and fencing token in the `WHERE`), so two servers that both believed they led for a moment
/// could not both lease, complete or expire the same job. The lease only keeps the work in one place.
public protocol LeaderElection: Sendable {
    /// Takes the lease when it is free or has lapsed (the epoch grows), renews it when `holder`
    /// has it, and otherwise leaves it as it is; in one transaction.
    /// - Parameter ttl: seconds from `at` the lease runs once taken or renewed.
    /// - Returns: the lease as it stands afterwards: `holder` leads when it is the lease's holder.
    func claimLeadership(holder: String, url: String, at: Date, ttl: Double) async throws -> LeaderLease

    /// Gives the lease up at once when `holder` has it (a graceful shutdown): another server may
    /// take it at its next claim instead of waiting for it to lapse.
    func resignLeadership(holder: String) async throws
}
