import Foundation

/// This server's part among the servers sharing its store (DESIGN §2): the leader runs the
/// scheduler and the background services; a follower forwards the API to the leader. A server
/// that elects no leader (one server alone on its store, the embedded default) always leads.
///
/// Read on every request, so a lock rather than an actor; changes wake whoever waits for them.
public final class ReplicaState: @unchecked Sendable {
    public enum Role: Sendable, Hashable {
        /// Leads, in the given term of the store's lease (0: no election).
        case leader(epoch: Int64)
        /// Follows the leader at this URL; nil while none is known.
        case follower(leaderURL: String?)
    }

    private let lock = NSLock()
    private var current: Role
    private var waiters: [UUID: CheckedContinuation<Void, Never>] = [:]

    /// - Parameter role: `.leader(epoch: 0)` for a server alone on its store.
    public init(role: Role) {
        current = role
    }

    public var role: Role { lock.withLock { current } }

    public var isLeader: Bool {
        if case .leader = role { return true }
        return false
    }

    func set(_ role: Role) {
        let woken: [CheckedContinuation<Void, Never>] = lock.withLock {
            guard current != role else { return [] }
            current = role
            defer { waiters.removeAll() }
            return Array(waiters.values)
        }
        for waiter in woken { waiter.resume() }
    }

    /// Returns once the role differs from `role` (at once when it already does), or when the
    /// task is cancelled.
    func change(from role: Role) async {
        let id = UUID()
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = lock.withLock {
                    if current != role || Task.isCancelled { return true }
                    waiters[id] = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let waiter = lock.withLock { waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}
