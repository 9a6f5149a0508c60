import Foundation
import KilnAPI
import KilnCore
import Logging

/// Keeps a leased job's lease alive from the lease until the job is reported: heartbeats every
/// `heartbeat_seconds` (sooner when progress moved) with the latest progress, and stops the job's
/// runtime when its owner cancels it, when the lease is lost to another worker, or when it runs past
/// its time limit.
final class LeaseKeeper: @unchecked Sendable {
    private let lock = NSLock()
    private var value: JobProgress
    private var changed = true
    private var lastBeat = ContinuousClock.now
    private var canceled = false
    private var lost = false
    private var running: RuntimeProcess?
    /// When the job was handed to its runtime: its time limit counts from here, not from the
    /// lease (a prefetched job may wait behind another first).
    private var startedAt: ContinuousClock.Instant?

    private var heartbeats: Task<Void, Never>?

    init(_ initial: JobProgress) { value = initial }

    /// Stops heartbeating: the job was reported, or never will be.
    func stop() { lock.withLock { heartbeats }?.cancel() }

    var current: JobProgress { lock.withLock { value } }
    /// Canceled by its owner, or lost to another worker: stop and report nothing.
    var isCanceled: Bool { lock.withLock { canceled } }
    var isLost: Bool { lock.withLock { lost } }
    var runtime: RuntimeProcess? { lock.withLock { running } }

    /// The runtime running the job (nil once it ended); the first one attached starts its clock.
    func attach(_ runtime: RuntimeProcess?) {
        lock.withLock {
            running = runtime
            if runtime != nil, startedAt == nil { startedAt = .now }
        }
    }

    var started: ContinuousClock.Instant? { lock.withLock { startedAt } }

    func lose() {
        lock.withLock {
            lost = true
            canceled = true
        }
    }

    func update(_ progress: JobProgress) {
        lock.withLock {
            changed = changed || progress != value
            value = progress
        }
    }

    func cancel() { lock.withLock { canceled = true } }

    /// A heartbeat is due when the interval has passed, or a second has and progress moved.
    func dueForHeartbeat(every interval: Double) -> Bool {
        lock.withLock {
            let elapsed = ContinuousClock.now - lastBeat
            guard elapsed >= .seconds(interval) || (changed && elapsed >= .seconds(1)) else { return false }
            lastBeat = .now
            changed = false
            return true
        }
    }

    /// Heartbeats `lease` every `interval` until ``stop()``; stops the runtime when the job is
    /// canceled (a second's grace) or the lease is lost, and when the job runs past `timeout`
    /// seconds from its start.
    func keep(_ lease: WorkerAgent.JobLease, client: KilnAPIClient, every interval: Double, timeout: Double, logger: Logger) {
        let progress = self
        let task = Task {
            var stoppedAt: ContinuousClock.Instant?
            while !Task.isCancelled {
                // Checked four times an interval, so a heartbeat is never more than a quarter late.
                try? await Task.sleep(for: .milliseconds(Int(min(interval / 4, 1) * 1000)))
                if Task.isCancelled { break }
                if let stoppedAt, ContinuousClock.now - stoppedAt > .seconds(1) {
                    progress.runtime?.kill()  // did not stop within a second
                }
                if let started = progress.started, ContinuousClock.now - started > .seconds(timeout) {
                    logger.warning("job ran past its time limit of \(Int(timeout)) s; stopping its runtime")
                    progress.runtime?.kill()
                }
                // A lost lease is not asked about again: the server said so once.
                guard !progress.isLost, progress.dueForHeartbeat(every: interval) else { continue }
                let stop: Bool
                do {
                    let current = Components.Schemas.ProgressObject(progress.current)
                    stop = try await client(timeout: .seconds(max(interval, 5))) {
                        try await $0.heartbeatJob(path: .init(id: lease.worker, job: lease.job.rawValue), body: .json(.init(token: lease.token, progress: current))).ok
                            .body.json.cancel
                    }
                } catch let error as KilnError where error.code == .staleLease || error.code == .conflict || error.code == .notFound {
                    // Another worker holds the job now: whatever this one produces would be refused.
                    logger.warning("lost the lease: \(error.message)")
                    progress.lose()
                    stop = true
                } catch {
                    continue  // a missed heartbeat; the next one may get through before the TTL
                }
                if stop, stoppedAt == nil {
                    progress.cancel()
                    stoppedAt = .now
                    progress.runtime?.send(.cancel(id: lease.job.rawValue))
                }
            }
        }
        lock.withLock { heartbeats = task }
    }
}
