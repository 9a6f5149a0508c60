import Foundation
import Synchronization
import KilnCore
import KilnStore
import Testing

/// Conformance of ``JobStore`` backends: leases, fencing, the worker calls, expiry and the event log.
@Suite("JobStore conformance: leases")
struct LeaseConformanceTests {
    @Test("lease: a queued generation leases once; a canceled one cannot be leased", arguments: StoreBackend.allCases)
    func leaseOnce(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker(cluster: "eu-1")
        let rival = try await store.seedWorker(cluster: "us-2")
        let queued = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))

        let leased = try await store.leaseQueued(queued, to: worker, at: Fixture.time(10), ttl: 30)
        #expect(leased.id == queued.id)
        #expect(leased.state == .running)
        #expect(leased.attempts == 1)
        #expect(leased.queuedAt == Fixture.time(0))
        let lease = try #require(leased.lease)
        #expect(lease.token.value >= 1)
        #expect(lease.workerID == worker.id)
        #expect(lease.cluster == "eu-1")
        #expect(lease.leasedAt == Fixture.time(10))
        #expect(lease.expiresAt == Fixture.time(40))
        #expect(lease.startedAt == nil, "leased is not yet started")
        #expect(leased.startedAt == nil)
        let stored = try await store.fetch(queued.id)
        #expect(stored == leased, "what lease returns is what it stored")

        let again = try await store.lease(sequence: queued.sequence, to: rival, at: Fixture.time(11), ttl: 30)
        #expect(again == nil, "a running generation cannot be leased a second time")
        let afterSecond = try await store.fetch(queued.id)
        #expect(afterSecond == leased, "the refused lease changed nothing")

        let running = try await store.runningGenerations()
        #expect(running.map(\.id) == [queued.id])
        let stillQueued = try await store.queuedGenerations()
        #expect(stillQueued.isEmpty)

        let doomed = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(20)))
        _ = try await store.cancel(doomed.id, at: Fixture.time(21))
        let canceledLease = try await store.lease(sequence: doomed.sequence, to: worker, at: Fixture.time(22), ttl: 30)
        #expect(canceledLease == nil)
        let canceled = try await store.fetch(doomed.id)
        #expect(canceled.state == .canceled)
        #expect(canceled.attempts == 0)
        #expect(canceled.lease == nil)

        let nothing = try await store.lease(sequence: doomed.sequence + 1_000, to: worker, at: Fixture.time(23), ttl: 30)
        #expect(nothing == nil)
    }

    @Test("lease of several: one call, each leased (and started) on its own, nil for one no longer queued",
          arguments: StoreBackend.allCases)
    func leaseSeveral(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker(cluster: "eu-1")
        var jobs: [Generation] = []
        for index in 0..<4 { jobs.append(try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(Double(index))))) }
        _ = try await store.cancel(jobs[1].id, at: Fixture.time(5))

        let sequences = [jobs[2].sequence, jobs[1].sequence, jobs[0].sequence, jobs[3].sequence + 1_000]
        let leased = try await store.lease(sequences: sequences, to: worker, at: Fixture.time(10), ttl: 30, start: true)
        #expect(leased.map { $0?.id } == [jobs[2].id, nil, jobs[0].id, nil], "in the order asked; nil where none is queued")
        for generation in leased.compactMap({ $0 }) {
            #expect(generation.state == .running)
            #expect(generation.attempts == 1)
            #expect(generation.lease?.workerID == worker.id)
            #expect(generation.lease?.startedAt == Fixture.time(10), "started with the lease")
            let stored = try await store.fetch(generation.id)
            #expect(stored == generation, "what lease returns is what it stored")
        }
        let canceled = try await store.fetch(jobs[1].id)
        #expect(canceled.state == .canceled)
        #expect(canceled.lease == nil)
        let untouched = try await store.fetch(jobs[3].id)
        #expect(untouched.state == .queued, "a job not asked for stays queued")
        let again = try await store.lease(sequences: [jobs[0].sequence, jobs[3].sequence], to: worker, at: Fixture.time(11), ttl: 30, start: false)
        #expect(again.map { $0?.id } == [nil, jobs[3].id], "a running job is not leased twice; the other still is")
        #expect(again[1]?.lease?.startedAt == nil)
    }

    @Test("completions of several: one call, each applied or refused on its own, a refused one changing nothing",
          arguments: StoreBackend.allCases)
    func completeSeveral(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        var leased: [Generation] = []
        for index in 0..<3 {
            let queued = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(Double(index))))
            leased.append(try await store.leaseQueued(queued, to: worker, at: Fixture.time(10)))
        }
        let token = { (generation: Generation) in generation.lease!.token }
        let results = try await store.complete(
            [
                CompletionReport(leased[0].id, token: token(leased[0]), outputs: []),
                CompletionReport(leased[1].id, token: FencingToken(token(leased[1]).value + 1), outputs: []),
                CompletionReport(leased[2].id, token: token(leased[2]), outputs: ["video"]),
                CompletionReport(GenerationID.random(), token: token(leased[0]), outputs: []),
            ], worker: worker.id, at: Fixture.time(20))
        #expect(try results[0].get().state == .succeeded)
        let codes = results.dropFirst().map { result -> KilnError.Code? in
            if case .failure(let error) = result { return error.code }
            return nil
        }
        #expect(codes == [.staleLease, .invalidInput, .notFound])
        #expect(try await store.fetch(leased[0].id).state == .succeeded)
        #expect(try await store.fetch(leased[1].id) == leased[1], "a stale completion changes nothing")
        #expect(try await store.fetch(leased[2].id) == leased[2], "a completion naming a missing output changes nothing")
        #expect(try await store.allEvents(of: leased[1].id).map(\.kind) == [.queued, .leased])
    }

    @Test("a worker's round: its completions and its next leases in one transaction, one commit; a refused report changes nothing",
          arguments: StoreBackend.allCases)
    func exchangeInOneCommit(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        var running: [Generation] = []
        for index in 0..<2 {
            let queued = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(Double(index))))
            running.append(try await store.leaseQueued(queued, to: worker, at: Fixture.time(10)))
        }
        var queued: [Generation] = []
        for index in 2..<5 { queued.append(try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(Double(index))))) }
        _ = try await store.cancel(queued[1].id, at: Fixture.time(11))
        let commits = Mutex(0)
        store.observeCommits { _ in commits.withLock { $0 += 1 } }

        let round = try await store.exchange(
            completing: [
                CompletionReport(running[0].id, token: running[0].lease!.token, outputs: []),
                CompletionReport(running[1].id, token: FencingToken(running[1].lease!.token.value + 1), outputs: []),
            ],
            leasing: [queued[0].sequence, queued[1].sequence, queued[2].sequence], to: worker, at: Fixture.time(20), ttl: 30, start: true)
        #expect(commits.withLock { $0 } == 1, "one commit for the completions and the leases")
        #expect(try round.completed[0].get().state == .succeeded)
        if case .failure(let error) = round.completed[1] {
            #expect(error.code == .staleLease)
        } else {
            Issue.record("a stale report was applied")
        }
        #expect(round.leased.map { $0?.id } == [queued[0].id, nil, queued[2].id], "in the order asked; nil where none is queued")
        for generation in round.leased.compactMap({ $0 }) {
            #expect(generation.state == .running)
            #expect(generation.lease?.startedAt == Fixture.time(20), "started with the lease")
            #expect(try await store.fetch(generation.id) == generation, "what the round returns is what it stored")
        }
        #expect(try await store.fetch(running[0].id).state == .succeeded)
        #expect(try await store.fetch(running[1].id) == running[1], "a stale completion changes nothing")
        #expect(try await store.eventKinds(of: queued[0].id) == [.queued, .started], "a lease started at once is one event")
        #expect(try await store.eventKinds(of: running[0].id) == [.queued, .leased, .succeeded])
    }

    @Test("fencing: after expiry and a new lease, the old token is refused everywhere and changes nothing",
          arguments: StoreBackend.allCases)
    func fencing(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let other = try await store.seedWorker(cluster: "us-2")
        let queued = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 3, at: Fixture.time(0)))

        let first = try await store.leaseQueued(queued, to: worker, at: Fixture.time(10), ttl: 30)
        let staleToken = try #require(first.lease?.token)
        #expect(staleToken.value >= 1)
        // The worker acknowledges the lease, then falls silent.
        _ = try await store.heartbeat(queued.id, worker: worker.id, token: staleToken, progress: nil, at: Fixture.time(10), ttl: 30)
        let expired = try await store.expireLeases(at: Fixture.time(41))
        #expect(expired.map(\.id) == [queued.id])

        // The same worker leases it again: only the token tells the two leases apart.
        let second = try await store.leaseQueued(queued, to: worker, at: Fixture.time(50), ttl: 30)
        let currentToken = try #require(second.lease?.token)
        #expect(staleToken < currentToken, "a later lease has a larger token")
        #expect(second.attempts == 2)

        let before = try await store.fetch(queued.id)
        let eventsBefore = try await store.allEvents(of: queued.id)

        await expectError(.staleLease) {
            try await store.heartbeat(
                queued.id, worker: worker.id, token: staleToken, progress: JobProgress(fraction: 0.9, stage: "stale"),
                at: Fixture.time(55), ttl: 600)
        }
        await expectError(.staleLease) {
            try await store.start(queued.id, worker: worker.id, token: staleToken, at: Fixture.time(56), ttl: 600)
        }
        await expectError(.staleLease) {
            try await store.attachOutput(
                queued.id, worker: worker.id, token: staleToken, name: "image", file: makeFile(account: account.id, at: Fixture.time(57)))
        }
        await expectError(.staleLease) {
            try await store.complete(queued.id, worker: worker.id, token: staleToken, outputs: [], at: Fixture.time(58))
        }
        await expectError(.staleLease) {
            try await store.fail(
                queued.id, worker: worker.id, token: staleToken, error: JobFailure(code: "oom", message: "out of memory"),
                retryable: false, at: Fixture.time(59))
        }
        // The current token is bound to the worker that holds it.
        await expectError(.staleLease) {
            try await store.heartbeat(queued.id, worker: other.id, token: currentToken, progress: nil, at: Fixture.time(60), ttl: 600)
        }

        let after = try await store.fetch(queued.id)
        #expect(after == before, "refused calls change nothing")
        #expect(after.state == .running)
        #expect(after.attempts == 2)
        #expect(after.output.isEmpty)
        #expect(after.lease?.token == currentToken)
        #expect(after.lease?.expiresAt == Fixture.time(80), "a stale heartbeat does not extend the lease")
        let eventsAfter = try await store.allEvents(of: queued.id)
        #expect(eventsAfter == eventsBefore, "refused calls append no events")

        // The stale upload was not recorded for the current lease.
        await expectError(.invalidInput) {
            try await store.complete(queued.id, worker: worker.id, token: currentToken, outputs: ["image"], at: Fixture.time(61))
        }
        let afterAll = try await store.fetch(queued.id)
        #expect(afterAll == before)
    }

    @Test("expiry: requeues keeping queuedAt and attempts, then fails with lease_expired at maxAttempts",
          arguments: StoreBackend.allCases)
    func expiryRequeuesThenFails(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let queued = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 2, at: Fixture.time(0)))

        let firstLease = try await store.leaseQueued(queued, to: worker, at: Fixture.time(10), ttl: 30)
        _ = try await store.heartbeat(
            queued.id, worker: worker.id, token: try #require(firstLease.lease?.token), progress: nil, at: Fixture.time(10), ttl: 30)
        let early = try await store.expireLeases(at: Fixture.time(20))
        #expect(early.isEmpty, "a lease is not expired before its time")
        let stillRunning = try await store.fetch(queued.id)
        #expect(stillRunning.state == .running)

        let requeued = try await store.expireLeases(at: Fixture.time(41))
        #expect(requeued.map(\.id) == [queued.id])
        #expect(requeued.first?.state == .queued)
        let afterFirst = try await store.fetch(queued.id)
        #expect(afterFirst.state == .queued)
        #expect(afterFirst.queuedAt == Fixture.time(0), "a retried generation keeps its place in the queue")
        #expect(afterFirst.attempts == 1)
        #expect(afterFirst.lease == nil)
        #expect(afterFirst.completedAt == nil)
        let kindsAfterFirst = try await store.eventKinds(of: queued.id)
        let expectedAfterFirst: [GenerationEvent.Kind] = [.queued, .leased, .requeued]
        #expect(kindsAfterFirst == expectedAfterFirst)
        let queuedNow = try await store.queuedGenerations()
        #expect(queuedNow.map(\.id) == [queued.id])

        let relet = try await store.leaseQueued(queued, to: worker, at: Fixture.time(50), ttl: 30)
        #expect(relet.attempts == 2)
        _ = try await store.heartbeat(
            queued.id, worker: worker.id, token: try #require(relet.lease?.token), progress: nil, at: Fixture.time(50), ttl: 30)
        let failed = try await store.expireLeases(at: Fixture.time(81))
        #expect(failed.map(\.id) == [queued.id])
        #expect(failed.first?.state == .failed)
        let afterSecond = try await store.fetch(queued.id)
        #expect(afterSecond.state == .failed)
        #expect(afterSecond.error?.code == "lease_expired")
        #expect(afterSecond.attempts == 2)
        #expect(afterSecond.completedAt == Fixture.time(81))
        let kindsAfterSecond = try await store.eventKinds(of: queued.id)
        #expect(kindsAfterSecond.last == .failed)
        let noneQueued = try await store.queuedGenerations()
        #expect(noneQueued.isEmpty)
        let noneRunning = try await store.runningGenerations()
        #expect(noneRunning.isEmpty)

        let later = try await store.expireLeases(at: Fixture.time(1_000))
        #expect(later.isEmpty, "an ended generation is not expired again")
        let unchanged = try await store.fetch(queued.id)
        #expect(unchanged == afterSecond)
    }

    @Test("release: a drained worker's jobs return to the queue with their queued time, charged no attempt; its old token is refused",
          arguments: StoreBackend.allCases)
    func releaseChargesNoAttempt(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let other = try await store.seedWorker(cluster: "us-2")
        let first = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 1, at: Fixture.time(0)))
        let second = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 1, at: Fixture.time(1)))
        let elsewhere = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(2)))
        let held = try await store.leaseQueued(first, to: worker, at: Fixture.time(10), ttl: 30)
        _ = try await store.leaseQueued(second, to: worker, at: Fixture.time(10), ttl: 30)
        _ = try await store.leaseQueued(elsewhere, to: other, at: Fixture.time(10), ttl: 30)
        let token = try #require(held.lease?.token)
        _ = try await store.start(first.id, worker: worker.id, token: token, at: Fixture.time(11), ttl: 30)

        let released = try await store.releaseLeases(of: worker.id, reason: "pool h100 shrank", at: Fixture.time(20))
        #expect(Set(released.map(\.id)) == [first.id, second.id])
        for generation in released {
            #expect(generation.state == .queued)
            #expect(generation.attempts == 0)
            #expect(generation.lease == nil)
        }
        let again = try await store.fetch(first.id)
        #expect(again.queuedAt == first.queuedAt)
        #expect(try await store.fetch(elsewhere.id).state == .running, "another worker's job is untouched")
        let events = try await store.allEvents(of: first.id)
        #expect(events.last?.kind == .requeued)
        #expect(events.last?.message?.contains("not counted as an attempt") == true)
        // The released lease's token changes nothing any more.
        await expectError(.staleLease) {
            _ = try await store.start(first.id, worker: worker.id, token: token, at: Fixture.time(21), ttl: 30)
        }
        // With one attempt allowed, the released job can still be leased and run.
        let rerun = try await store.leaseQueued(again, to: other, at: Fixture.time(30), ttl: 30)
        #expect(rerun.attempts == 1)
        #expect(try await store.releaseLeases(of: worker.id, reason: "again", at: Fixture.time(31)).isEmpty)
    }

    @Test("expiry: a lease extended by a heartbeat is not expired", arguments: StoreBackend.allCases)
    func heartbeatKeepsLeaseAlive(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let alive = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        let silent = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(1)))

        let leased = try await store.leaseQueued(alive, to: worker, at: Fixture.time(10), ttl: 30)
        _ = try await store.leaseQueued(silent, to: worker, at: Fixture.time(10), ttl: 30)
        let token = try #require(leased.lease?.token)
        let beat = try await store.heartbeat(alive.id, worker: worker.id, token: token, progress: nil, at: Fixture.time(35), ttl: 30)
        #expect(beat.lease?.expiresAt == Fixture.time(65))

        let expired = try await store.expireLeases(at: Fixture.time(50))
        #expect(expired.map(\.id) == [silent.id], "only the lease that was not extended expires")
        let stillRunning = try await store.fetch(alive.id)
        #expect(stillRunning.state == .running)
        #expect(stillRunning.lease?.token == token)
        #expect(stillRunning.lease?.expiresAt == Fixture.time(65))

        let expiredLater = try await store.expireLeases(at: Fixture.time(66))
        #expect(expiredLater.map(\.id) == [alive.id])
    }

    @Test("renewal after an outage: leases that lapsed meanwhile run until the new expiry, and hold their tokens", arguments: StoreBackend.allCases)
    func renewAfterOutage(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let held = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        let longer = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(1)))
        let leased = try await store.leaseQueued(held, to: worker, at: Fixture.time(10), ttl: 30)
        _ = try await store.leaseQueued(longer, to: worker, at: Fixture.time(10), ttl: 500)
        let token = try #require(leased.lease?.token)

        // The server was away from 20 to 100; it comes back and renews until 100 + 30.
        #expect(try await store.renewLeases(until: Fixture.time(130)) == 1, "only the lease that lapsed")
        #expect(try await store.expireLeases(at: Fixture.time(100)).isEmpty, "nothing expires on the way back")
        let renewed = try await store.fetch(held.id)
        #expect(renewed.lease?.expiresAt == Fixture.time(130))
        #expect(renewed.attempts == 1, "no attempt charged")
        #expect(try await store.fetch(longer.id).lease?.expiresAt == Fixture.time(510), "a later expiry is kept")
        let beat = try await store.heartbeat(held.id, worker: worker.id, token: token, progress: nil, at: Fixture.time(105), ttl: 30)
        #expect(beat.lease?.expiresAt == Fixture.time(135), "its worker re-attaches with its token")
        // A worker that never comes back loses its lease one renewal later.
        #expect(try await store.expireLeases(at: Fixture.time(136)).map(\.id) == [held.id])
    }

    @Test("each lease's token is larger than the last by a step no one can guess", arguments: StoreBackend.allCases)
    func tokensAreUnguessable(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let job = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 100, at: Fixture.time(0)))
        var tokens: [Int64] = []
        var time = 10.0
        for _ in 0..<12 {
            let leased = try #require(try await store.lease(sequence: job.sequence, to: worker, at: Fixture.time(time), ttl: 30))
            tokens.append(try #require(leased.lease?.token.value))
            _ = try await store.start(job.id, worker: worker.id, token: try #require(leased.lease?.token), at: Fixture.time(time), ttl: 30)
            time += 31
            _ = try await store.expireLeases(at: Fixture.time(time))
        }
        let steps = zip(tokens.dropFirst(), tokens).map { $0 - $1 }
        #expect(steps.allSatisfy { $0 >= 1 }, "fencing: every lease's token is larger than the one before")
        #expect(Set(steps).count > 1, "the steps vary: \(steps)")
        #expect(tokens.contains { $0 > 1_000 }, "not a small counter: \(tokens)")
    }

    @Test("a lease that never reaches its worker is free only a few times: a job that kills its worker at once fails in the end", arguments: StoreBackend.allCases)
    func unacknowledgedLeasesAreBounded(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let job = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        var time = 10.0
        var ended: Generation?
        for round in 1...20 {
            guard let leased = try await store.lease(sequence: job.sequence, to: worker, at: Fixture.time(time), ttl: 30) else {
                Issue.record("round \(round): not leased")
                break
            }
            #expect(leased.lease?.acknowledged == false)
            time += 31
            let expired = try #require(try await store.expireLeases(at: Fixture.time(time)).first)
            if round <= Lifecycle.freeUnacknowledgedLeases {
                #expect(expired.state == .queued && expired.attempts == 0, "round \(round): given back uncharged")
                #expect(expired.unacknowledgedLeases == round)
            }
            if expired.state == .failed {
                ended = expired
                break
            }
        }
        let failed = try #require(ended, "the job fails instead of bouncing for ever")
        #expect(failed.attempts == failed.maxAttempts)
        #expect(failed.error?.code == "lease_expired")
        #expect(failed.error?.message.contains("before worker") == true, "\(failed.error?.message ?? "")")
    }

    @Test("start: sets lease.startedAt and startedAt and extends the lease; a second start only extends it",
          arguments: StoreBackend.allCases)
    func start(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let queued = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        let leased = try await store.leaseQueued(queued, to: worker, at: Fixture.time(10), ttl: 30)
        let token = try #require(leased.lease?.token)

        let started = try await store.start(queued.id, worker: worker.id, token: token, at: Fixture.time(12), ttl: 60)
        #expect(started.state == .running)
        #expect(started.startedAt == Fixture.time(12))
        #expect(started.lease?.startedAt == Fixture.time(12))
        #expect(started.lease?.expiresAt == Fixture.time(72))
        #expect(started.lease?.token == token)
        #expect(started.attempts == 1)
        let stored = try await store.fetch(queued.id)
        #expect(stored == started)

        let again = try await store.start(queued.id, worker: worker.id, token: token, at: Fixture.time(20), ttl: 60)
        var extended = started
        extended.lease?.expiresAt = Fixture.time(80)
        #expect(again == extended, "a second start only extends the lease")
        let storedAgain = try await store.fetch(queued.id)
        #expect(storedAgain == extended)
        let kinds = try await store.eventKinds(of: queued.id)
        let startedCount = kinds.filter { $0 == .started }.count
        #expect(startedCount == 1)

        // A retry starts a new lease, but startedAt stays the first time a worker began.
        _ = try await store.expireLeases(at: Fixture.time(81))
        let relet = try await store.leaseQueued(queued, to: worker, at: Fixture.time(80), ttl: 30)
        #expect(relet.lease?.startedAt == nil)
        #expect(relet.startedAt == Fixture.time(12))
        let restarted = try await store.start(
            queued.id, worker: worker.id, token: try #require(relet.lease?.token), at: Fixture.time(85), ttl: 30)
        #expect(restarted.lease?.startedAt == Fixture.time(85))
        #expect(restarted.startedAt == Fixture.time(12))
    }

    @Test("heartbeat: extends the lease, records progress once per change; a canceled job answers canceled",
          arguments: StoreBackend.allCases)
    func heartbeat(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let queued = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        let leased = try await store.leaseQueued(queued, to: worker, at: Fixture.time(10), ttl: 30)
        let token = try #require(leased.lease?.token)
        _ = try await store.start(queued.id, worker: worker.id, token: token, at: Fixture.time(11), ttl: 30)

        func progressEvents() async throws -> [GenerationEvent] {
            try await store.allEvents(of: queued.id).filter { $0.kind == .progress }
        }

        let quarter = JobProgress(fraction: 0.25, stage: "denoising")
        let first = try await store.heartbeat(queued.id, worker: worker.id, token: token, progress: quarter, at: Fixture.time(15), ttl: 30)
        #expect(first.state == .running)
        #expect(first.progress == quarter)
        #expect(first.lease?.expiresAt == Fixture.time(45))
        let storedFirst = try await store.fetch(queued.id)
        #expect(storedFirst.progress == quarter)
        #expect(storedFirst.lease?.expiresAt == Fixture.time(45))
        let afterFirst = try await progressEvents()
        #expect(afterFirst.count == 1)

        let same = try await store.heartbeat(queued.id, worker: worker.id, token: token, progress: quarter, at: Fixture.time(20), ttl: 30)
        #expect(same.lease?.expiresAt == Fixture.time(50))
        let afterSame = try await progressEvents()
        #expect(afterSame.count == 1, "unchanged progress appends no event")

        let bare = try await store.heartbeat(queued.id, worker: worker.id, token: token, progress: nil, at: Fixture.time(25), ttl: 30)
        #expect(bare.progress == quarter, "a heartbeat without progress keeps the last one")
        #expect(bare.lease?.expiresAt == Fixture.time(55))
        let storedBare = try await store.fetch(queued.id)
        #expect(storedBare.progress == quarter)
        #expect(storedBare.lease?.expiresAt == Fixture.time(55))
        let afterBare = try await progressEvents()
        #expect(afterBare.count == 1, "a heartbeat without progress appends no event")

        let half = JobProgress(fraction: 0.5, stage: "denoising")
        _ = try await store.heartbeat(queued.id, worker: worker.id, token: token, progress: half, at: Fixture.time(28), ttl: 30)
        let afterHalf = try await progressEvents()
        #expect(afterHalf.map(\.progress) == [quarter, half])
        #expect(afterHalf.last?.at == Fixture.time(28))

        _ = try await store.cancel(queued.id, at: Fixture.time(30))
        let told = try await store.heartbeat(
            queued.id, worker: worker.id, token: token, progress: JobProgress(fraction: 0.75, stage: "denoising"),
            at: Fixture.time(31), ttl: 30)
        #expect(told.state == .canceled, "the worker learns of the cancellation from its heartbeat")
        let storedCanceled = try await store.fetch(queued.id)
        #expect(storedCanceled.state == .canceled)
        let afterCancel = try await progressEvents()
        #expect(afterCancel.count == 2, "a canceled generation records no more progress")
    }

    @Test("complete: needs the outputs attached under this lease; succeeds once", arguments: StoreBackend.allCases)
    func complete(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let queued = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        let leased = try await store.leaseQueued(queued, to: worker, at: Fixture.time(10), ttl: 60)
        let token = try #require(leased.lease?.token)
        _ = try await store.start(queued.id, worker: worker.id, token: token, at: Fixture.time(11), ttl: 60)

        await expectError(.invalidInput) {
            try await store.complete(queued.id, worker: worker.id, token: token, outputs: ["image"], at: Fixture.time(20))
        }
        let notDone = try await store.fetch(queued.id)
        #expect(notDone.state == .running)
        #expect(notDone.output.isEmpty)
        #expect(notDone.completedAt == nil)

        let file = makeFile(account: account.id, contentType: "image/webp", size: 48_213, at: Fixture.time(21))
        try await store.attachOutput(queued.id, worker: worker.id, token: token, name: "image", file: file)
        let storedFile = try await store.file(file.id)
        #expect(storedFile == file, "an attached output's file is stored")

        let done = try await store.complete(queued.id, worker: worker.id, token: token, outputs: ["image"], at: Fixture.time(25))
        #expect(done.state == .succeeded)
        #expect(done.completedAt == Fixture.time(25))
        let expectedOutput = ["image": OutputFile(fileID: file.id, contentType: "image/webp", size: 48_213)]
        #expect(done.output == expectedOutput)
        #expect(done.error == nil)
        let stored = try await store.fetch(queued.id)
        #expect(stored == done, "what complete returns is what it stored")

        await expectError(.staleLease) {
            try await store.complete(queued.id, worker: worker.id, token: token, outputs: [], at: Fixture.time(30))
        }
        let storedAgain = try await store.fetch(queued.id)
        #expect(storedAgain == done, "a second completion changes nothing")
        let kinds = try await store.eventKinds(of: queued.id)
        let succeededCount = kinds.filter { $0 == .succeeded }.count
        #expect(succeededCount == 1)
    }

    @Test("complete: outputs attached under an earlier lease do not count", arguments: StoreBackend.allCases)
    func completeIgnoresEarlierLeaseOutputs(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let queued = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 3, at: Fixture.time(0)))

        let first = try await store.leaseQueued(queued, to: worker, at: Fixture.time(10))
        let firstToken = try #require(first.lease?.token)
        let early = makeFile(account: account.id, at: Fixture.time(11))
        try await store.attachOutput(queued.id, worker: worker.id, token: firstToken, name: "image", file: early)
        _ = try await store.fail(
            queued.id, worker: worker.id, token: firstToken, error: JobFailure(code: "worker_crash", message: "segfault"),
            retryable: true, at: Fixture.time(12))

        let second = try await store.leaseQueued(queued, to: worker, at: Fixture.time(20))
        let secondToken = try #require(second.lease?.token)
        await expectError(.invalidInput) {
            try await store.complete(queued.id, worker: worker.id, token: secondToken, outputs: ["image"], at: Fixture.time(21))
        }
        let notDone = try await store.fetch(queued.id)
        #expect(notDone.state == .running)

        let late = makeFile(account: account.id, at: Fixture.time(22))
        try await store.attachOutput(queued.id, worker: worker.id, token: secondToken, name: "image", file: late)
        let done = try await store.complete(queued.id, worker: worker.id, token: secondToken, outputs: ["image"], at: Fixture.time(23))
        #expect(done.output["image"]?.fileID == late.id)
    }

    @Test("fail: retryable requeues; final or exhausted fails with the error", arguments: StoreBackend.allCases)
    func fail(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let crash = JobFailure(code: "worker_crash", message: "CUDA error: an illegal memory access")

        // Retryable with attempts left: back to the queue, same queuedAt.
        let retried = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 3, at: Fixture.time(0)))
        let retriedLease = try await store.leaseQueued(retried, to: worker, at: Fixture.time(10))
        let requeued = try await store.fail(
            retried.id, worker: worker.id, token: try #require(retriedLease.lease?.token), error: crash, retryable: true,
            at: Fixture.time(20))
        #expect(requeued.state == .queued)
        #expect(requeued.queuedAt == Fixture.time(0))
        #expect(requeued.attempts == 1)
        #expect(requeued.lease == nil)
        #expect(requeued.completedAt == nil)
        let storedRequeued = try await store.fetch(retried.id)
        #expect(storedRequeued == requeued, "what fail returns is what it stored")
        let retriedKinds = try await store.eventKinds(of: retried.id)
        #expect(retriedKinds.last == .requeued)
        let released = try await store.leaseQueued(retried, to: worker, at: Fixture.time(30))
        #expect(released.attempts == 2)
        #expect(released.lease.map { $0.token > (retriedLease.lease?.token ?? FencingToken(Int64.max)) } ?? false)

        // Not retryable: failed with exactly the worker's error.
        let refused = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 3, at: Fixture.time(1)))
        let refusedLease = try await store.leaseQueued(refused, to: worker, at: Fixture.time(10))
        let badInput = JobFailure(code: "invalid_prompt", message: "the prompt is empty")
        let failed = try await store.fail(
            refused.id, worker: worker.id, token: try #require(refusedLease.lease?.token), error: badInput, retryable: false,
            at: Fixture.time(21))
        #expect(failed.state == .failed)
        #expect(failed.error == badInput)
        #expect(failed.completedAt == Fixture.time(21))
        #expect(failed.attempts == 1)
        let storedFailed = try await store.fetch(refused.id)
        #expect(storedFailed == failed)
        let refusedKinds = try await store.eventKinds(of: refused.id)
        #expect(refusedKinds.last == .failed)
        let leaseAfterFailure = try await store.lease(sequence: refused.sequence, to: worker, at: Fixture.time(22), ttl: 30)
        #expect(leaseAfterFailure == nil)

        // Retryable, but out of attempts: failed.
        let exhausted = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 1, at: Fixture.time(2)))
        let exhaustedLease = try await store.leaseQueued(exhausted, to: worker, at: Fixture.time(10))
        let gaveUp = try await store.fail(
            exhausted.id, worker: worker.id, token: try #require(exhaustedLease.lease?.token), error: crash, retryable: true,
            at: Fixture.time(22))
        #expect(gaveUp.state == .failed)
        #expect(gaveUp.error?.code == "worker_crash")
        #expect(gaveUp.completedAt == Fixture.time(22))
        #expect(gaveUp.attempts == 1)
        let storedGaveUp = try await store.fetch(exhausted.id)
        #expect(storedGaveUp == gaveUp)

        let queuedNow = try await store.queuedGenerations()
        #expect(queuedNow.isEmpty)
    }

    @Test("events: the log in order, and after skips earlier entries", arguments: StoreBackend.allCases)
    func events(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let watched = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        let bystander = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(1)))

        let leased = try await store.leaseQueued(watched, to: worker, at: Fixture.time(10))
        _ = try await store.leaseQueued(bystander, to: worker, at: Fixture.time(11))
        let token = try #require(leased.lease?.token)
        _ = try await store.start(watched.id, worker: worker.id, token: token, at: Fixture.time(12), ttl: 30)
        let progress = JobProgress(fraction: 0.5, stage: "denoising")
        _ = try await store.heartbeat(watched.id, worker: worker.id, token: token, progress: progress, at: Fixture.time(13), ttl: 30)
        _ = try await store.complete(watched.id, worker: worker.id, token: token, outputs: [], at: Fixture.time(14))

        let log = try await store.events(of: watched.id, after: 0, limit: 100)
        try #require(log.count == 5, "queued, leased, started, progress, succeeded: \(log.map(\.kind))")
        let expectedKinds: [GenerationEvent.Kind] = [.queued, .leased, .started, .progress, .succeeded]
        #expect(log.map(\.kind) == expectedKinds)
        let expectedStates: [GenerationState] = [.queued, .running, .running, .running, .succeeded]
        #expect(log.map(\.state) == expectedStates)
        let expectedTimes = [0.0, 10, 12, 13, 14].map(Fixture.time)
        #expect(log.map(\.at) == expectedTimes)
        let onlyWatched = log.allSatisfy { $0.generationID == watched.id }
        #expect(onlyWatched, "a generation's log holds only its own events")
        let sequences = log.map(\.sequence)
        #expect(sequences == sequences.sorted(), "sequences grow")
        #expect(Set(sequences).count == sequences.count, "sequences are unique")
        #expect(log[3].progress == progress)

        let tail = try await store.events(of: watched.id, after: log[1].sequence, limit: 100)
        let expectedTail: [GenerationEvent.Kind] = [.started, .progress, .succeeded]
        #expect(tail.map(\.kind) == expectedTail)
        #expect(tail == Array(log.dropFirst(2)))

        let head = try await store.events(of: watched.id, after: 0, limit: 2)
        let expectedHead: [GenerationEvent.Kind] = [.queued, .leased]
        #expect(head.map(\.kind) == expectedHead)

        let past = try await store.events(of: watched.id, after: try #require(log.last).sequence, limit: 100)
        #expect(past.isEmpty)

        let bystanderKinds = try await store.eventKinds(of: bystander.id)
        let expectedBystander: [GenerationEvent.Kind] = [.queued, .leased]
        #expect(bystanderKinds == expectedBystander)
    }

    @Test(
        "a lease its worker never acknowledged expires without costing an attempt, even at max_attempts",
        arguments: StoreBackend.allCases)
    func unacknowledgedLease(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let queued = try await store.submitQueued(makeGeneration(account: account.id, maxAttempts: 1, at: Fixture.time(0)))
        // Handed to a long poll whose worker had died: no heartbeat, no start ever comes.
        for round in 0..<3 {
            let start = Fixture.time(Double(10 + 100 * round))
            let lease = try await store.leaseQueued(queued, to: worker, at: start, ttl: 30)
            #expect(lease.attempts == 1)
            let returned = try await store.expireLeases(at: start.addingTimeInterval(31))
            #expect(returned.first?.state == .queued)
            let back = try await store.fetch(queued.id)
            #expect(back.state == .queued)
            #expect(back.attempts == 0)
            #expect(back.queuedAt == Fixture.time(0))
        }
    }
}
