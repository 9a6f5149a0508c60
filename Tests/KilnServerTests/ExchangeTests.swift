import Foundation
import HTTPTypes
import KilnAPI
import KilnCore
import KilnServer
import Testing

/// The combined worker call: reports settled one by one, then several jobs leased (and started) at
/// once, beside the classic calls that keep working.
@Suite("Exchange: report and lease in one call")
struct ExchangeTests {
    typealias Exchange = Components.Schemas.ExchangeRequest

    private func exchange(_ api: KilnClient, _ key: String, _ worker: String, _ request: Exchange) async throws
        -> Components.Schemas.ExchangeResponse
    {
        let client = api.api(key)
        return try await client { try await $0.exchangeJobs(path: .init(id: worker), body: .json(request)).ok.body.json }
    }

    @Test("one call leases and starts up to `max` jobs in urgency order; the next completes them and leases more")
    func leaseManyThenCompleteAndLease() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, free) = try await api.account(tier: "free")
            let (_, enterprise) = try await api.account(tier: "enterprise")
            let workerKey = try await api.workerKey()
            let worker = try await api.register(workerKey)
            let low = try await api.submit(free)
            kiln.clock.advance(by: 1)
            let high = try await api.submit(enterprise)
            let third = try await api.submit(enterprise)
            kiln.clock.advance(by: 10)

            let first = try await exchange(api, workerKey, worker, Exchange(lease: .init(max: 2, waitSeconds: 0, start: true)))
            #expect(first.reports.isEmpty)
            // The enterprise jobs come first: their promise is the shorter one.
            #expect(first.jobs.map(\.job.id) == [high.id, third.id])
            for leased in first.jobs {
                let seen = try await api.generation(enterprise, leased.job.id)
                #expect(seen.state == .running)
                #expect(seen.startedAt != nil, "leased with start: true, the job is started at once")
                #expect(seen.progress.stage == "started")
            }

            let second = try await exchange(
                api, workerKey, worker,
                Exchange(
                    completed: first.jobs.map { .init(job: $0.job.id, token: $0.lease.token, outputs: []) },
                    lease: .init(max: 4, waitSeconds: 0)))
            #expect(second.reports.map(\.job) == [high.id, third.id])
            #expect(second.reports.allSatisfy { $0.error == nil })
            #expect(try await api.generation(enterprise, high.id).state == .succeeded)
            #expect(try await api.generation(enterprise, third.id).state == .succeeded)
            // Without `start`, the job is only leased: the worker prefetches, then calls start.
            #expect(second.jobs.map(\.job.id) == [low.id])
            let prefetched = try await api.generation(free, low.id)
            #expect(prefetched.state == .running)
            #expect(prefetched.startedAt == nil)
            #expect(try await api.job(workerKey, worker, second.jobs[0], "start", json: #"{"token":"\#(second.jobs[0].lease.token)"}"#).status == .ok)
        }
    }

    @Test("completions and the jobs ready for the worker go to disk in one commit; with none ready, the completions commit before the wait")
    func oneCommitARound() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let first = try await api.submit(user)
            let leased = try await exchange(api, workerKey, worker, Exchange(lease: .init(max: 1, start: true))).jobs
            #expect(leased.map(\.job.id) == [first.id])
            let second = try await api.submit(user)
            func commits() async throws -> Double {
                try #require(try Exposition(try await api.call(.get, "/metrics", key: nil).text).value("kiln_store_commit_seconds_count"))
            }
            let before = try await commits()
            let round = try await exchange(
                api, workerKey, worker,
                Exchange(completed: [.init(job: first.id, token: leased[0].lease.token, outputs: [])], lease: .init(max: 1, start: true)))
            #expect(try await commits() == before + 1, "the completion and the lease, one commit")
            #expect(round.reports.map(\.job) == [first.id] && round.reports[0].error == nil)
            #expect(round.jobs.map(\.job.id) == [second.id])
            #expect(try await api.generation(user, first.id).state == .succeeded)
            #expect(try await api.generation(user, second.id).state == .running)

            // Nothing queued: the completion is stored (and seen) while the call still waits.
            let waiting = Task {
                try await exchange(
                    api, workerKey, worker,
                    Exchange(completed: [.init(job: second.id, token: round.jobs[0].lease.token, outputs: [])],
                             lease: .init(max: 1, waitSeconds: 30, start: true)))
            }
            let deadline = ContinuousClock.now + .seconds(20)
            var seen = try await api.generation(user, second.id)
            while seen.state != .succeeded {
                guard ContinuousClock.now < deadline else {
                    Issue.record("the completion was not stored while the call waited")
                    break
                }
                try await Task.sleep(for: .milliseconds(5))
                seen = try await api.generation(user, second.id)
            }
            let third = try await api.submit(user)
            let answer = try await waiting.value
            #expect(answer.reports.map(\.job) == [second.id] && answer.reports[0].error == nil)
            #expect(answer.jobs.map(\.job.id) == [third.id], "the wait ends with the job submitted meanwhile")
        }
    }

    @Test("failures settle before the leases: a retryable one frees its account's running slot and may be leased again in the same call")
    func failuresSettleBeforeLeases() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, free) = try await api.account(tier: "free")  // at most 2 running
            let (_, enterprise) = try await api.account(tier: "enterprise")
            let workerKey = try await api.workerKey()
            let worker = try await api.register(workerKey)
            let done = try await api.submit(free)
            let failing = try await api.submit(free)
            let held = try await exchange(api, workerKey, worker, Exchange(lease: .init(max: 2, start: true))).jobs
            #expect(held.map(\.job.id) == [done.id, failing.id])
            let waiting = try await api.submit(free)  // its account is at its cap
            let urgent = try await api.submit(enterprise)

            let token = { (id: String) in held.first { $0.job.id == id }!.lease.token }
            let round = try await exchange(
                api, workerKey, worker,
                Exchange(
                    completed: [.init(job: done.id, token: token(done.id), outputs: [])],
                    failed: [.init(job: failing.id, token: token(failing.id), error: .init(code: "oom", message: "out of memory"), retryable: true)],
                    lease: .init(max: 3, start: true)))
            #expect(round.reports.allSatisfy { $0.error == nil })
            // The completion and the failure freed both of the account's slots before the leases.
            #expect(Set(round.jobs.map(\.job.id)) == [urgent.id, failing.id, waiting.id])
            #expect(try await api.generation(free, failing.id).attempts == 2)
        }
    }

    @Test("a stale report is refused in its own answer and changes nothing; the others still apply")
    func staleReportAloneIsRefused() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let good = try await api.submit(user)
            let failing = try await api.submit(user)
            let leased = try await exchange(api, workerKey, worker, Exchange(lease: .init(max: 2, start: true))).jobs
            #expect(leased.count == 2)
            let byID = Dictionary(uniqueKeysWithValues: leased.map { ($0.job.id, $0) })
            let goodLease = try #require(byID[good.id])
            let failingLease = try #require(byID[failing.id])

            let answer = try await exchange(
                api, workerKey, worker,
                Exchange(
                    completed: [
                        .init(job: good.id, token: "\(Int(goodLease.lease.token)! + 7)", outputs: []),
                        .init(job: good.id, token: goodLease.lease.token, outputs: ["missing.mp4"]),
                    ],
                    failed: [
                        .init(job: failing.id, token: failingLease.lease.token, error: .init(code: "oom", message: "out of memory"), retryable: false)
                    ]))
            #expect(answer.reports.map(\.job) == [good.id, good.id, failing.id])
            #expect(answer.reports[0].error?.code == "stale_lease")
            #expect(answer.reports[1].error?.code == "invalid_input")
            #expect(answer.reports[1].error?.message.contains("missing.mp4") == true)
            #expect(answer.reports[2].error == nil)
            #expect(answer.jobs.isEmpty, "no lease was asked for")
            // The refused reports changed nothing: the good job still runs under its lease.
            let unchanged = try await api.generation(user, good.id)
            #expect(unchanged.state == .running)
            #expect(unchanged.attempts == 1)
            let failed = try await api.generation(user, failing.id)
            #expect(failed.state == .failed)
            #expect(failed.error?.code == "oom")
            // Its right token still completes it, through the classic call.
            #expect(try await api.complete(workerKey, worker, goodLease).status == .noContent)
        }
    }

    @Test("bad exchanges are refused whole with a message naming the field, and change nothing")
    func badExchanges() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let queued = try await api.submit(user)
            let path = "/v1/workers/\(worker)/exchange"

            let tooMany = try await api.call(.post, path, key: workerKey, json: #"{"lease":{"max":65}}"#)
            #expect(tooMany.status == .badRequest)
            #expect(tooMany.error?.message.contains("max") == true)
            let longWait = try await api.call(.post, path, key: workerKey, json: #"{"lease":{"max":1,"wait_seconds":61}}"#)
            #expect(longWait.status == .badRequest)
            #expect(longWait.error?.message.contains("wait_seconds") == true)
            let unknown = try await api.call(.post, path, key: workerKey, json: #"{"lease":{"max":1},"priority":3}"#)
            #expect(unknown.status == .badRequest)
            #expect(unknown.error?.message.contains("priority") == true)
            let reports = (0..<65).map { _ in #"{"job":"\#(queued.id)","token":"1","outputs":[]}"# }.joined(separator: ",")
            let tooManyReports = try await api.call(.post, path, key: workerKey, json: #"{"completed":[\#(reports)]}"#)
            #expect(tooManyReports.status == .badRequest)
            // A malformed generation id refuses the whole call: the well-formed report beside it is
            // not applied either.
            let leased = try #require(try await api.lease(workerKey, worker: worker))
            let malformed = try await api.call(
                .post, path, key: workerKey,
                json: #"{"completed":[{"job":"\#(leased.job.id)","token":"\#(leased.lease.token)","outputs":[]}],"failed":[{"job":"","token":"1","error":{"code":"x","message":"y"},"retryable":false}]}"#)
            #expect(malformed.status == .badRequest)
            #expect(malformed.error?.message == "failed[0].job: '' is not a generation id")
            #expect(try await api.generation(user, leased.job.id).state == .running)
            // Another worker key cannot exchange for this worker.
            let other = try await api.workerKey()
            #expect(try await api.call(.post, path, key: other, json: #"{"lease":{"max":1}}"#).status == .notFound)
        }
    }
}
