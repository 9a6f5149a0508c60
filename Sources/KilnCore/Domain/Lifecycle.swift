import Foundation

/// One change of a generation's lifecycle: the generation after it, the event it logs, and what it
/// means for the scheduler.
public struct Transition: Hashable, Sendable {
    /// What the change means for the scheduler and the event streams.
    public enum Effect: Hashable, Sendable {
        /// Accepted into the queue.
        case submitted
        /// Taken from the queue by a worker (the dispatcher that leased it already knows).
        case leased
        /// Its model began: it no longer counts against its cluster's dispatch limit.
        case started
        /// Progress or a lease extension: nothing for the scheduler.
        case progressed
        /// Back in the queue with its original queued time.
        case requeued
        /// Over: succeeded, failed or canceled.
        case ended
    }

    public var generation: Generation
    public var effect: Effect
    /// The event it logs; nil for a change that logs none (a bare heartbeat, a repeated start).
    public var event: GenerationEvent.Kind?
    public var message: String?

    public init(generation: Generation, effect: Effect, event: GenerationEvent.Kind?, message: String? = nil) {
        self.generation = generation
        self.effect = effect
        self.event = event
        self.message = message
    }
}

/// The lifecycle of a generation as pure functions (DESIGN §8):
///
///     queued ──lease──▶ running ──complete──▶ succeeded
///       ▲                 │  └────fail───────▶ failed
///       ├─lease expired / retryable failure (attempts < max)
///       └─released by a drain (no attempt charged)
///     queued | running ──cancel──▶ canceled
///
/// Each takes the generation as the store holds it, checks that the change is allowed, and returns
/// the generation after it with its event. No I/O and no clock of their own: a store reads the
/// row, calls one of these, and writes the result with a conditional update (the state and the
/// fencing token it read in the `WHERE`), so that two writers can never both apply a change to
/// the same generation; the server then applies the committed change to its dispatcher and event
/// streams.
public enum Lifecycle {
    /// Leases a queued generation to a worker: one more attempt, under `token` (larger than any
    /// before). With `start`, the lease is started at once, as ``start(_:worker:token:at:ttl:)``
    /// would.
    /// - Parameter version: the version an alias resolved to for this generation, when it names
    ///   none yet.
    /// - Throws: `.conflict` when the generation is not queued.
    public static func lease(
        _ generation: Generation, to worker: WorkerID, cluster: String, token: FencingToken, version: String?, at: Date,
        ttl: Double, start: Bool
    ) throws -> Transition {
        guard generation.state == .queued else {
            throw KilnError(.conflict, "generation '\(generation.id)' is \(generation.state.rawValue), not queued")
        }
        var after = generation
        if after.version == nil { after.version = version }
        after.state = .running
        after.attempts += 1
        after.lease = LeaseInfo(
            workerID: worker, cluster: cluster, token: token, leasedAt: at, expiresAt: at + ttl, startedAt: start ? at : nil,
            acknowledged: start)
        after.progress = JobProgress(fraction: 0, stage: start ? "started" : "dispatched")
        if start { after.startedAt = after.startedAt ?? at }
        return Transition(
            generation: after, effect: .leased, event: start ? .started : .leased, message: "attempt \(after.attempts) on \(worker)")
    }

    /// The worker began running the model: the lease is extended and acknowledged. A repeated
    /// start only extends it.
    /// - Throws: see ``holding(_:worker:token:allowCanceled:)``.
    public static func start(_ generation: Generation, worker: WorkerID, token: FencingToken, at: Date, ttl: Double) throws
        -> Transition
    {
        try holding(generation, worker: worker, token: token, allowCanceled: false)
        var after = generation
        after.lease?.expiresAt = at + ttl
        after.lease?.acknowledged = true
        guard generation.lease?.startedAt == nil else { return Transition(generation: after, effect: .progressed, event: nil) }
        after.lease?.startedAt = at
        after.startedAt = after.startedAt ?? at
        after.progress.stage = "started"
        return Transition(generation: after, effect: .started, event: .started)
    }

    /// Extends and acknowledges the lease, and records progress when it changed. A canceled
    /// generation is returned as it is: its state tells the worker to stop.
    public static func heartbeat(
        _ generation: Generation, worker: WorkerID, token: FencingToken, progress: JobProgress?, at: Date, ttl: Double
    ) throws -> Transition {
        try holding(generation, worker: worker, token: token, allowCanceled: true)
        guard generation.state == .running else { return Transition(generation: generation, effect: .progressed, event: nil) }
        var after = generation
        after.lease?.expiresAt = at + ttl
        after.lease?.acknowledged = true
        guard let progress, progress != generation.progress else { return Transition(generation: after, effect: .progressed, event: nil) }
        after.progress = progress
        return Transition(generation: after, effect: .progressed, event: .progress)
    }

    /// Ends the generation as succeeded with its outputs.
    public static func complete(
        _ generation: Generation, worker: WorkerID, token: FencingToken, outputs: [String: OutputFile], at: Date
    ) throws -> Transition {
        try holding(generation, worker: worker, token: token, allowCanceled: false)
        var after = generation
        after.state = .succeeded
        after.output = outputs
        after.completedAt = at
        after.progress = JobProgress(fraction: 1, stage: "succeeded")
        return Transition(generation: after, effect: .ended, event: .succeeded)
    }

    /// The worker reports a failure: requeued while attempts remain and it may be retried, failed
    /// otherwise.
    public static func fail(
        _ generation: Generation, worker: WorkerID, token: FencingToken, error: JobFailure, retryable: Bool, at: Date
    ) throws -> Transition {
        try holding(generation, worker: worker, token: token, allowCanceled: false)
        return endAttempt(generation, failure: error, retryable: retryable, at: at)
    }

    /// The lease of a running generation expired. One its worker never acknowledged never reached
    /// the worker: the generation goes back without the attempt counting. Otherwise the attempt
    /// ends as a retryable failure.
    /// Unacknowledged lease expiries a generation is given back uncharged before they count.
    public static let freeUnacknowledgedLeases = 3

    public static func expire(_ generation: Generation, at: Date) -> Transition {
        guard let lease = generation.lease else {
            return endAttempt(
                generation, failure: JobFailure(code: "lease_expired", message: "the lease expired"), retryable: true, at: at)
        }
        guard lease.acknowledged else {
            // A lease that never reached its worker is not the job's fault: given back, up to a
            // bound, or a job that kills its worker before the first heartbeat would bounce for ever.
            guard generation.unacknowledgedLeases >= freeUnacknowledgedLeases else {
                var transition = requeueUncharged(
                    generation, message: "the lease never reached worker \(lease.workerID); not counted as an attempt")
                transition.generation.unacknowledgedLeases += 1
                return transition
            }
            return endAttempt(
                generation,
                failure: JobFailure(
                    code: "lease_expired",
                    message: "the lease expired before worker \(lease.workerID) acknowledged it "
                        + "(\(generation.unacknowledgedLeases + 1) times now): counted as attempt \(generation.attempts)"),
                retryable: true, at: at)
        }
        return endAttempt(
            generation,
            failure: JobFailure(
                code: "lease_expired",
                message: "the worker on \(lease.workerID) stopped sending heartbeats (attempt \(generation.attempts))"),
            retryable: true, at: at)
    }

    /// Returns a running generation to the queue with its original queued time, charged no
    /// attempt: its worker was drained (a pool shrinking, capacity given back) and the grace for
    /// its jobs ran out.
    /// - Throws: `.conflict` when it is not running.
    public static func release(_ generation: Generation, reason: String) throws -> Transition {
        guard generation.state == .running, let lease = generation.lease else {
            throw KilnError(.conflict, "generation '\(generation.id)' is \(generation.state.rawValue), not running")
        }
        return requeueUncharged(generation, message: "\(reason): released from worker \(lease.workerID); not counted as an attempt")
    }

    /// Back to the queue (same `queuedAt`) with the lease's attempt given back.
    static func requeueUncharged(_ generation: Generation, message: String) -> Transition {
        var after = generation
        after.state = .queued
        after.lease = nil
        after.attempts -= 1
        after.progress = JobProgress(fraction: 0, stage: "requeued")
        return Transition(generation: after, effect: .requeued, event: .requeued, message: message)
    }

    /// Cancels a queued or running generation.
    /// - Throws: `.conflict` when it already ended.
    public static func cancel(_ generation: Generation, at: Date) throws -> Transition {
        guard !generation.state.isFinal else {
            throw KilnError(.conflict, "generation '\(generation.id)' already ended as \(generation.state.rawValue)")
        }
        var after = generation
        after.state = .canceled
        after.completedAt = at
        return Transition(generation: after, effect: .ended, event: .canceled)
    }

    /// Checks that `worker` holds the generation's lease with `token`.
    /// - Throws: `.staleLease` when the token no longer holds it; `.conflict` when it was canceled
    ///   (unless `allowCanceled`).
    public static func holding(_ generation: Generation, worker: WorkerID, token: FencingToken, allowCanceled: Bool) throws {
        let id = generation.id
        guard let lease = generation.lease, lease.workerID == worker, lease.token == token else {
            throw KilnError(.staleLease, "the lease token \(token) of worker \(worker) no longer holds generation '\(id)'")
        }
        switch generation.state {
        case .running: return
        case .canceled where allowCanceled: return
        case .canceled: throw KilnError(.conflict, "generation '\(id)' was canceled")
        case .queued, .succeeded, .failed:
            throw KilnError(.staleLease, "generation '\(id)' is \(generation.state.rawValue); the lease no longer holds it")
        }
    }

    /// Requeues (same `queuedAt`) or fails a running generation whose attempt ended.
    static func endAttempt(_ generation: Generation, failure: JobFailure, retryable: Bool, at: Date) -> Transition {
        var after = generation
        if RetryRule.requeues(attempts: generation.attempts, maxAttempts: generation.maxAttempts, retryable: retryable) {
            after.state = .queued
            after.lease = nil
            after.progress = JobProgress(fraction: 0, stage: "requeued")
            return Transition(generation: after, effect: .requeued, event: .requeued, message: "\(failure.code): \(failure.message)")
        }
        var failure = failure
        if retryable { failure.message += " — gave up after \(generation.attempts) attempts" }
        after.state = .failed
        after.error = failure
        after.completedAt = at
        return Transition(generation: after, effect: .ended, event: .failed, message: "\(failure.code): \(failure.message)")
    }
}
