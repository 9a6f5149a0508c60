import Foundation
import Testing

@testable import KilnCore

/// The lifecycle's transitions as pure functions: what each allows, what it changes, what it logs.
@Suite("Lifecycle")
struct LifecycleTests {
    let worker = WorkerID(unchecked: "wrk_a")
    let other = WorkerID(unchecked: "wrk_b")
    let t0 = Date(timeIntervalSince1970: 1_000)

    func queued(maxAttempts: Int = 3) -> Generation {
        Generation(
            id: GenerationID(unchecked: "gen_1"), sequence: 1, accountID: AccountID(unchecked: "acct_1"), model: "demo", alias: "prod",
            tier: "api", maxAttempts: maxAttempts, createdAt: t0)
    }

    @Test("a lease takes a queued job: one more attempt, the given token, the alias's version, an event")
    func lease() throws {
        let leased = try Lifecycle.lease(
            queued(), to: worker, cluster: "default", token: FencingToken(5), version: "sha256:v1", at: t0 + 10, ttl: 30, start: false)
        #expect(leased.effect == .leased)
        #expect(leased.event == .leased)
        #expect(leased.message == "attempt 1 on wrk_a")
        let g = leased.generation
        #expect(g.state == .running && g.attempts == 1 && g.version == "sha256:v1")
        #expect(g.lease?.token == FencingToken(5) && g.lease?.expiresAt == t0 + 40 && g.lease?.startedAt == nil)
        #expect(g.lease?.acknowledged == false && g.startedAt == nil && g.progress.stage == "dispatched")
        // Only a queued job can be leased.
        #expect(throws: KilnError.self) {
            try Lifecycle.lease(g, to: other, cluster: "default", token: FencingToken(6), version: nil, at: t0, ttl: 30, start: false)
        }
        // Leased and started at once: acknowledged, started, one `started` event.
        let started = try Lifecycle.lease(
            queued(), to: worker, cluster: "default", token: FencingToken(1), version: nil, at: t0, ttl: 30, start: true)
        #expect(started.event == .started)
        #expect(started.generation.lease?.startedAt == t0 && started.generation.lease?.acknowledged == true)
        #expect(started.generation.startedAt == t0)
    }

    @Test("start: once it logs and frees the dispatch slot; again it only extends; a stale token changes nothing")
    func start() throws {
        let g = try Lifecycle.lease(queued(), to: worker, cluster: "c", token: FencingToken(2), version: nil, at: t0, ttl: 30, start: false)
            .generation
        let first = try Lifecycle.start(g, worker: worker, token: FencingToken(2), at: t0 + 5, ttl: 30)
        #expect(first.effect == .started && first.event == .started)
        #expect(first.generation.lease?.startedAt == t0 + 5 && first.generation.startedAt == t0 + 5)
        let again = try Lifecycle.start(first.generation, worker: worker, token: FencingToken(2), at: t0 + 9, ttl: 30)
        #expect(again.event == nil && again.effect == .progressed)
        #expect(again.generation.lease?.startedAt == t0 + 5 && again.generation.lease?.expiresAt == t0 + 39)
        let stale = #expect(throws: KilnError.self) { try Lifecycle.start(g, worker: worker, token: FencingToken(1), at: t0, ttl: 30) }
        #expect(stale?.code == .staleLease)
        let stranger = #expect(throws: KilnError.self) { try Lifecycle.start(g, worker: other, token: FencingToken(2), at: t0, ttl: 30) }
        #expect(stranger?.code == .staleLease)
    }

    @Test("heartbeat: extends the lease, logs progress only when it changed, leaves a canceled job as it is")
    func heartbeat() throws {
        let g = try Lifecycle.lease(queued(), to: worker, cluster: "c", token: FencingToken(1), version: nil, at: t0, ttl: 30, start: true)
            .generation
        let bare = try Lifecycle.heartbeat(g, worker: worker, token: FencingToken(1), progress: nil, at: t0 + 20, ttl: 30)
        #expect(bare.event == nil && bare.generation.lease?.expiresAt == t0 + 50)
        let progress = JobProgress(fraction: 0.5, stage: "denoising")
        let moved = try Lifecycle.heartbeat(g, worker: worker, token: FencingToken(1), progress: progress, at: t0 + 20, ttl: 30)
        #expect(moved.event == .progress && moved.generation.progress == progress)
        let canceled = try Lifecycle.cancel(moved.generation, at: t0 + 21).generation
        let told = try Lifecycle.heartbeat(canceled, worker: worker, token: FencingToken(1), progress: nil, at: t0 + 22, ttl: 30)
        #expect(told.generation == canceled && told.event == nil)
    }

    @Test("fail: a retryable failure requeues while attempts remain; then, or when final, the job fails")
    func failures() throws {
        var g = queued(maxAttempts: 2)
        var token: Int64 = 0
        func attempt(_ generation: Generation) throws -> Generation {
            token += 1
            return try Lifecycle.lease(
                generation, to: worker, cluster: "c", token: FencingToken(token), version: nil, at: t0, ttl: 30, start: true
            ).generation
        }
        let oom = JobFailure(code: "oom", message: "out of memory")
        g = try attempt(g)
        let first = try Lifecycle.fail(g, worker: worker, token: FencingToken(token), error: oom, retryable: true, at: t0 + 1)
        #expect(first.effect == .requeued && first.generation.state == .queued && first.generation.lease == nil)
        #expect(first.generation.queuedAt == t0, "a retried job keeps its queued time")
        g = try attempt(first.generation)
        let last = try Lifecycle.fail(g, worker: worker, token: FencingToken(token), error: oom, retryable: true, at: t0 + 2)
        #expect(last.effect == .ended && last.generation.state == .failed)
        #expect(last.generation.error?.message == "out of memory — gave up after 2 attempts")
        let final = try Lifecycle.fail(
            try attempt(queued()), worker: worker, token: FencingToken(token), error: oom, retryable: false, at: t0)
        #expect(final.generation.state == .failed && final.generation.error == oom)
    }

    @Test("expiry: an acknowledged lease costs its attempt; one never acknowledged goes back for free")
    func expiry() throws {
        let unacknowledged = try Lifecycle.lease(
            queued(), to: worker, cluster: "c", token: FencingToken(1), version: nil, at: t0, ttl: 30, start: false
        ).generation
        let free = Lifecycle.expire(unacknowledged, at: t0 + 31)
        #expect(free.effect == .requeued && free.generation.attempts == 0 && free.generation.state == .queued)
        let acknowledged = try Lifecycle.start(unacknowledged, worker: worker, token: FencingToken(1), at: t0 + 1, ttl: 30).generation
        let charged = Lifecycle.expire(acknowledged, at: t0 + 40)
        #expect(charged.effect == .requeued && charged.generation.attempts == 1)
        #expect(charged.message?.hasPrefix("lease_expired: the worker on wrk_a stopped sending heartbeats") == true)
    }

    @Test("complete and cancel end the job once; nothing ends twice")
    func ending() throws {
        let g = try Lifecycle.lease(queued(), to: worker, cluster: "c", token: FencingToken(1), version: nil, at: t0, ttl: 30, start: true)
            .generation
        let output = OutputFile(fileID: FileID(unchecked: "file_1"), contentType: "video/mp4", size: 10)
        let done = try Lifecycle.complete(g, worker: worker, token: FencingToken(1), outputs: ["video": output], at: t0 + 3)
        #expect(done.effect == .ended && done.event == .succeeded && done.generation.output == ["video": output])
        #expect(throws: KilnError.self) { try Lifecycle.complete(done.generation, worker: worker, token: FencingToken(1), outputs: [:], at: t0) }
        let cancel = #expect(throws: KilnError.self) { try Lifecycle.cancel(done.generation, at: t0 + 4) }
        #expect(cancel?.code == .conflict)
        let canceled = try Lifecycle.cancel(g, at: t0 + 2)
        #expect(canceled.effect == .ended && canceled.generation.state == .canceled)
        let late = #expect(throws: KilnError.self) {
            try Lifecycle.complete(canceled.generation, worker: worker, token: FencingToken(1), outputs: [:], at: t0)
        }
        #expect(late?.code == .conflict)
    }

    @Test("a release returns a running job to the queue with its queued time, the attempt given back; only a running one")
    func release() throws {
        let leased = try Lifecycle.lease(
            queued(maxAttempts: 1), to: worker, cluster: "default", token: FencingToken(3), version: nil, at: t0 + 5, ttl: 30, start: true)
        let released = try Lifecycle.release(leased.generation, reason: "pool cpu shrank")
        #expect(released.effect == .requeued)
        #expect(released.event == .requeued)
        #expect(released.message == "pool cpu shrank: released from worker wrk_a; not counted as an attempt")
        let g = released.generation
        #expect(g.state == .queued && g.attempts == 0 && g.lease == nil && g.queuedAt == queued().queuedAt)
        #expect(g.progress.stage == "requeued")
        #expect(throws: KilnError.self) { try Lifecycle.release(g, reason: "again") }
    }
}
