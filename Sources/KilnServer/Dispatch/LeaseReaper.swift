import Foundation
import KilnCore
import KilnStore
import Logging
import ServiceLifecycle

/// Returns the jobs of workers that stopped heartbeating to the queue (DESIGN §8): an expired lease
/// requeues its job with the same `queuedAt`, or fails it once it has used `max_attempts`.
public struct LeaseReaper: Service {
    let store: any JobStore
    let transitions: any TransitionSink
    let clock: any WallClock
    let metrics: ServerMetrics
    let interval: Duration
    let logger: Logger

    public init(
        store: any JobStore, transitions: any TransitionSink, clock: any WallClock, metrics: ServerMetrics,
        interval: Duration = .seconds(1), logger: Logger
    ) {
        self.store = store
        self.transitions = transitions
        self.clock = clock
        self.metrics = metrics
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                try await reap()
            } catch {
                logger.error("lease reaper: \(error)")
            }
            try? await Task.sleep(for: interval)
        }
    }

    /// One pass. - Returns: the generations it changed.
    @discardableResult
    public func reap() async throws -> [Generation] {
        let changed = try await store.expireLeases(at: clock.now())
        for generation in changed {
            metrics.leaseExpired(tier: generation.tier)
            if generation.state == .queued {
                logger.info("lease expired; requeued", metadata: ["generation": "\(generation.id)", "attempts": "\(generation.attempts)"])
            } else {
                logger.warning("lease expired; failed", metadata: ["generation": "\(generation.id)", "attempts": "\(generation.attempts)"])
            }
            try await transitions.apply(.settled(generation), generation)
        }
        return changed
    }
}
