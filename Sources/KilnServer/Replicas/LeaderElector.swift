import Foundation
import KilnCore
import KilnStore
import Logging
import ServiceLifecycle

/// Keeps this server's claim on the store's leader lease (``LeaderElection``): it claims every
/// third of the lease's time to live, takes over when the lease lapses, and steps down as soon as
/// another server holds it, or when it could not renew it before it ran out.
///
/// Taking over, it makes itself ready before it says it leads: the queue rebuilt from the store,
/// and the leases held through the change of leader given one more time to live, so that workers
/// that kept working re-attach with their fencing tokens instead of seeing their jobs expire.
struct LeaderElector: Service {
    let election: any LeaderElection
    let state: ReplicaState
    /// This server's id in the lease: new at each start.
    let holder: String
    /// Where the other servers reach this one: known once the HTTP server listens.
    let url: BoundURL
    let ttl: Double
    let clock: any WallClock
    let logger: Logger
    /// Makes this server ready to lead (see above).
    let prepare: @Sendable () async throws -> Void
    /// Called after leading ends.
    let stepDown: @Sendable () async -> Void

    func run() async throws {
        guard let url = try? await cancelWhenGracefulShutdown({ await self.url.value() }) else { return }
        var renewed: Date?
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            let now = clock.now()
            do {
                let lease = try await election.claimLeadership(holder: holder, url: url, at: now, ttl: ttl)
                if lease.holder == holder {
                    renewed = now
                    if !state.isLeader {
                        try await prepare()
                        state.set(.leader(epoch: lease.epoch))
                        logger.notice("leading", metadata: ["epoch": "\(lease.epoch)", "url": "\(url)"])
                    }
                } else {
                    await follow(lease.url, because: "the leader is \(lease.holder) at \(lease.url), epoch \(lease.epoch)")
                }
            } catch {
                logger.error("leader election: \(error)")
                // Without a renewal the lease runs out: stop leading before another server may take it.
                if state.isLeader, let last = renewed, clock.now().timeIntervalSince(last) >= ttl * 2 / 3 {
                    await follow(nil, because: "the lease could not be renewed")
                }
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(Int(ttl * 1000 / 3))) }
        }
        if state.isLeader {
            state.set(.follower(leaderURL: nil))
            await stepDown()
            try? await election.resignLeadership(holder: holder)
            logger.notice("resigned the leadership")
        }
    }

    private func follow(_ leader: String?, because reason: String) async {
        let wasLeader = state.isLeader
        state.set(.follower(leaderURL: leader))
        if wasLeader {
            logger.warning("no longer leading: \(reason)")
            await stepDown()
        }
    }
}

/// Runs `service` while this server leads, and cancels it when it stops leading: the scheduler's
/// companions (the lease reaper, the fleet controller, webhook delivery, the file janitor) run on
/// the leader alone.
struct LeaderOnly: Service {
    let service: any Service
    let state: ReplicaState

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            let role = state.role
            guard case .leader = role else {
                try? await cancelWhenGracefulShutdown { await state.change(from: role) }
                continue
            }
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await service.run() }
                group.addTask { await state.change(from: role) }
                // Whichever ends first: leading ended (cancel the service), or the service ended.
                _ = await group.next()
                group.cancelAll()
            }
            if !Task.isShuttingDownGracefully, !Task.isCancelled, state.role == role {
                return  // the service ended by itself while leading: as it would have without replicas
            }
        }
    }
}

/// The URL of this server, set once its HTTP server listens (its port may be picked then).
final class BoundURL: @unchecked Sendable {
    private let lock = NSLock()
    private var url: String?
    private var waiters: [UUID: CheckedContinuation<String?, Never>] = [:]

    func set(_ url: String) {
        let woken: [CheckedContinuation<String?, Never>] = lock.withLock {
            self.url = url
            defer { waiters.removeAll() }
            return Array(waiters.values)
        }
        for waiter in woken { waiter.resume(returning: url) }
    }

    /// The URL once known; nil when the task is cancelled first.
    func value() async -> String? {
        let id = UUID()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let known: String?? = lock.withLock {
                    if let url { return .some(url) }
                    if Task.isCancelled { return .some(nil) }
                    waiters[id] = continuation
                    return .none
                }
                if let known { continuation.resume(returning: known) }
            }
        } onCancel: {
            let waiter = lock.withLock { waiters.removeValue(forKey: id) }
            waiter?.resume(returning: nil)
        }
    }
}
