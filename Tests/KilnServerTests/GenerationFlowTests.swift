import Foundation
import HTTPTypes
import Hummingbird
import KilnAPI
import KilnCore
import KilnServer
import OpenAPIRuntime
import Testing

@Suite("Generation flow through the worker protocol")
struct GenerationFlowTests {
    @Test("jobs of all five tiers queued with no worker are leased in urgency order when one connects")
    func urgencyOrderAcrossTiers() async throws {
        let kiln = try await KilnHarness.make()
        let start = kiln.clock.now()
        try await kiln.withClient { api in
            try await api.model()
            var keys: [String: String] = [:]
            for tier in TierTable.standard.names { keys[tier] = try await api.account(tier: tier).1 }
            // Submitted at these offsets; at t=1000 the urgencies are light 720/900 = 0.8,
            // api 90/120 = 0.75, enterprise 30/60 = 0.5, unlimited 100/300 = 0.33, free 1000/3600 = 0.28.
            let schedule: [(String, Double)] = [("free", 0), ("light", 280), ("unlimited", 900), ("api", 910), ("enterprise", 970)]
            var ids: [String: String] = [:]
            for (tier, offset) in schedule {
                kiln.clock.set(start + offset)
                ids[tier] = try await api.submit(keys[tier]!, input: ["prompt": .string(tier)]).id
            }
            kiln.clock.set(start + 1000)
            let expected = ["light", "api", "enterprise", "unlimited", "free"]
            for (position, tier) in expected.enumerated() {
                let queued = try await api.generation(keys[tier]!, ids[tier]!)
                #expect(queued.state == .queued)
                #expect(queued.queue?.position == position, "\(tier)")
            }
            let workerKey = try await api.workerKey()
            let worker = try await api.register(workerKey)
            var leased: [String] = []
            while let lease = try await api.lease(workerKey, worker: worker) {
                leased.append(lease.job.id)
                #expect(try await api.complete(workerKey, worker, lease).status == .noContent)
            }
            #expect(leased == expected.map { ids[$0]! })
        }
    }

    @Test("a worker that stops heartbeating loses its lease; another gets the job with the same queued time")
    func expiredLeaseMovesToAnotherWorker() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let workerKey = try await api.workerKey()
            let first = try await api.register(workerKey)
            let second = try await api.register(workerKey)
            let submitted = try await api.submit(user)
            let lease = try #require(try await api.lease(workerKey, worker: first))
            #expect(try await api.job(workerKey, first, lease, "start", json: #"{"token":"\#(lease.lease.token)"}"#).status == .ok)
            #expect(try await api.heartbeat(workerKey, first, lease, fraction: 0.2).status == .ok)

            kiln.clock.advance(by: 31)  // past the 30 s TTL with no heartbeat
            let changed = try await kiln.server.reaper().reap()
            #expect(changed.map(\.id.rawValue) == [submitted.id])
            let requeued = try await api.generation(user, submitted.id)
            #expect(requeued.state == .queued)
            #expect(requeued.attempts == 1)

            let retry = try #require(try await api.lease(workerKey, worker: second))
            #expect(retry.job.id == submitted.id)
            #expect(retry.job.attempt == 2)
            #expect(retry.job.deadline == lease.job.deadline, "the retried job must keep its queued time")
            #expect(retry.lease.token != lease.lease.token)

            // The first worker comes back: every call with its old token is refused.
            let stale = try await api.heartbeat(workerKey, first, lease, fraction: 0.9)
            #expect(stale.status == .conflict)
            #expect(stale.error?.code == "stale_lease")
        }
    }

    @Test("a completion with a stale token is rejected and changes nothing")
    func staleCompletion() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let submitted = try await api.submit(user)
            let old = try #require(try await api.lease(workerKey, worker: worker))
            #expect(try await api.heartbeat(workerKey, worker, old, fraction: 0.1).status == .ok)
            kiln.clock.advance(by: 31)
            try await kiln.server.reaper().reap()
            let current = try #require(try await api.lease(workerKey, worker: worker))
            #expect(try await api.heartbeat(workerKey, worker, current, fraction: 0.5).status == .ok)

            let rejected = try await api.complete(workerKey, worker, old)
            #expect(rejected.status == .conflict)
            #expect(rejected.error?.message.contains("no longer holds") == true)
            let unchanged = try await api.generation(user, submitted.id)
            #expect(unchanged.state == .running)
            #expect(unchanged.attempts == 2)
            #expect(unchanged.progress.fraction == 0.5)

            #expect(try await api.complete(workerKey, worker, current).status == .noContent)
            #expect(try await api.generation(user, submitted.id).state == .succeeded)
            // A token the server never issued holds no lease either.
            let forged = try await api.job(workerKey, worker, current, "complete", json: #"{"token":"soon","outputs":[]}"#)
            #expect(forged.status == .conflict)
            #expect(forged.error?.code == "stale_lease")
            // Completing twice is refused too.
            #expect(try await api.complete(workerKey, worker, current).status == .conflict)
        }
    }

    @Test("an output upload with a stale token is refused before its bytes are read: nothing is stored")
    func staleOutputUploadStoresNothing() async throws {
        var configuration = ServerConfiguration()
        // An upload over the limit would be refused as too large if its bytes were read first.
        configuration.limits.maxFileBytes = 16
        let kiln = try await KilnHarness.make(configuration: configuration)
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            _ = try await api.submit(user)
            let old = try #require(try await api.lease(workerKey, worker: worker))
            kiln.clock.advance(by: 31)
            try await kiln.server.reaper().reap()
            let current = try #require(try await api.lease(workerKey, worker: worker))
            let filesBefore = Self.storedFiles(kiln)
            let path = "/v1/workers/\(worker)/jobs/\(old.job.id)/outputs/video?token=\(old.lease.token)"
            let stale = try await api.call(.put, path, key: workerKey, raw: ByteBuffer(repeating: 7, count: 1_000), headers: [.contentType: "video/mp4"])
            #expect(stale.status == .conflict, "the lease is checked first: \(stale.status)")
            #expect(stale.error?.code == "stale_lease")
            #expect(Self.storedFiles(kiln) == filesBefore)
            // The current holder's upload within the limit is stored.
            let fresh = "/v1/workers/\(worker)/jobs/\(current.job.id)/outputs/video?token=\(current.lease.token)"
            #expect(try await api.call(.put, fresh, key: workerKey, raw: ByteBuffer(string: "mp4"), headers: [.contentType: "video/mp4"]).status == .created)
        }
    }

    static func storedFiles(_ kiln: KilnHarness) -> [String] {
        let folder = kiln.data.appending(path: "objects/files")
        return ((try? FileManager.default.subpathsOfDirectory(atPath: folder.path)) ?? []).sorted()
    }

    @Test("cancel: a queued job never reaches a worker; a running one is told to stop at its next heartbeat")
    func cancelQueuedAndRunning() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()

            let queued = try await api.submit(user)
            let canceled = try await api.call(.post, "/v1/generations/\(queued.id)/cancel", key: user)
            #expect(canceled.status == .ok)
            #expect(try canceled.decode(Components.Schemas.GenerationObject.self).state == .canceled)
            #expect(try await api.lease(workerKey, worker: worker) == nil)

            let running = try await api.submit(user)
            let lease = try #require(try await api.lease(workerKey, worker: worker))
            #expect(lease.job.id == running.id)
            let before = try await api.heartbeat(workerKey, worker, lease, fraction: 0.1)
            #expect(try before.decode(Components.Schemas.HeartbeatResponse.self).cancel == false)
            #expect(try await api.call(.post, "/v1/generations/\(running.id)/cancel", key: user).status == .ok)
            let after = try await api.heartbeat(workerKey, worker, lease, fraction: 0.2)
            #expect(after.status == .ok)
            #expect(try after.decode(Components.Schemas.HeartbeatResponse.self).cancel == true)
            // The canceled job cannot be completed, and stays canceled.
            #expect(try await api.complete(workerKey, worker, lease).status == .conflict)
            #expect(try await api.generation(user, running.id).state == .canceled)
            // Canceling an ended generation is a conflict.
            #expect(try await api.call(.post, "/v1/generations/\(running.id)/cancel", key: user).status == .conflict)
        }
    }

    @Test("a retryable failure requeues the job; a final one fails it with the worker's reason")
    func failures() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let submitted = try await api.submit(user)
            let first = try #require(try await api.lease(workerKey, worker: worker))
            let retry = try await api.job(
                workerKey, worker, first, "fail",
                json: #"{"token":"\#(first.lease.token)","error":{"code":"oom","message":"out of memory"},"retryable":true}"#)
            #expect(retry.status == .noContent)
            #expect(try await api.generation(user, submitted.id).state == .queued)
            let second = try #require(try await api.lease(workerKey, worker: worker))
            #expect(second.job.attempt == 2)
            let final = try await api.job(
                workerKey, worker, second, "fail",
                json: #"{"token":"\#(second.lease.token)","error":{"code":"bad_prompt","message":"prompt refused"},"retryable":false}"#)
            #expect(final.status == .noContent)
            let failed = try await api.generation(user, submitted.id)
            #expect(failed.state == .failed)
            #expect(failed.error?.code == "bad_prompt")
            #expect(failed.error?.message == "prompt refused")
        }
    }

    @Test("a worker key acts only as the workers it registered: another key cannot lease for it or touch its job")
    func workerKeysAreBound() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let owner = try await api.workerKey()
            let intruder = try await api.workerKey()
            let worker = try await api.register(owner)
            let submitted = try await api.submit(user)
            let stolen = try await api.call(.post, "/v1/workers/\(worker)/lease", key: intruder, json: #"{"wait_seconds":0}"#)
            #expect(stolen.status == .notFound)
            let lease = try #require(try await api.lease(owner, worker: worker))
            #expect(lease.job.id == submitted.id)
            let forged = try await api.complete(intruder, worker, lease)
            #expect(forged.status == .notFound)
            #expect(try await api.generation(user, submitted.id).state == .running)
            #expect(try await api.complete(owner, worker, lease).status == .noContent)
        }
    }

    @Test("a draining worker is given no new work")
    func drain() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            _ = try await api.submit(user)
            let drained = try await api.call(.post, "/v1/admin/workers/\(worker)/drain")
            #expect(try drained.decode(Components.Schemas.WorkerObject.self).state == .draining)
            #expect(try await api.lease(workerKey, worker: worker) == nil)
            let other = try await api.register(workerKey)
            #expect(try await api.lease(workerKey, worker: other) != nil)
        }
    }

    @Test("a submission hands its job to one of the waiting workers and wakes no other")
    func submissionWakesOne() async throws {
        let kiln = try await KilnHarness.make(clock: ManualWallClock(Date()))
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let workerKey = try await api.workerKey()
            var workers: [String] = []
            for _ in 0..<3 { workers.append(try await api.register(workerKey)) }
            let dispatcher = kiln.server.services.dispatcher
            try await withThrowingTaskGroup(of: String?.self) { group in
                for worker in workers {
                    // Long enough that a loaded machine's submission still finds them waiting.
                    group.addTask { try await api.lease(workerKey, worker: worker, wait: 10)?.job.id }
                }
                // Not a timing: wait until all three are in their long poll, then submit.
                while await dispatcher.waiting < 3 { try await Task.sleep(for: .milliseconds(10)) }
                let submitted = try await api.submit(user)
                #expect(submitted.state == .running, "leased in the submission's own transaction")
                #expect(await dispatcher.wakeups == 1)
                let leased = try await group.reduce(into: [String]()) { if let id = $1 { $0.append(id) } }
                #expect(leased == [submitted.id])
                #expect(await dispatcher.wakeups == 1, "the other two ended their wait without being woken")
            }
        }
    }

    @Test("a waiting worker is not handed a job whose account is at its running cap; it takes the next one")
    func handoffKeepsRunningCap() async throws {
        var configuration = ServerConfiguration()
        configuration.tiers = try TierTable([Tier(name: "light", maxWait: 600, maxRunningPerAccount: 1)])
        let kiln = try await KilnHarness.make(configuration: configuration, clock: ManualWallClock(Date()))
        try await kiln.withClient { api in
            try await api.model()
            let (_, capped) = try await api.account(tier: "light", name: "capped")
            let (_, other) = try await api.account(tier: "light", name: "other")
            let workerKey = try await api.workerKey()
            let busy = try await api.register(workerKey)
            let idle = try await api.register(workerKey)
            let running = try await api.submit(capped)
            #expect(try await api.lease(workerKey, worker: busy)?.job.id == running.id)
            let dispatcher = kiln.server.services.dispatcher
            try await withThrowingTaskGroup(of: String?.self) { group in
                group.addTask { try await api.lease(workerKey, worker: idle, wait: 10)?.job.id }
                while await dispatcher.waiting < 1 { try await Task.sleep(for: .milliseconds(10)) }
                let held = try await api.submit(capped)
                #expect(held.state == .queued, "its account runs one job already: the cap holds")
                #expect(await dispatcher.waiting == 1, "the worker still waits")
                let next = try await api.submit(other)
                #expect(next.state == .running)
                #expect(try await group.next() == next.id)
            }
        }
    }

    @Test("a worker reserved for a replayed submission waits on, and takes the next job")
    func releasedHandoffWaitsOn() async throws {
        let kiln = try await KilnHarness.make(clock: ManualWallClock(Date()))
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let dispatcher = kiln.server.services.dispatcher
            let headers: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "order-7"]
            let body = #"{"model":"demo","input":{}}"#
            let first = try await api.call(.post, "/v1/generations", key: user, json: body, headers: headers)
            #expect(first.status == .created)
            #expect(try await api.lease(workerKey, worker: worker)?.job.id == first.decode(Components.Schemas.GenerationObject.self).id)
            try await withThrowingTaskGroup(of: String?.self) { group in
                group.addTask { try await api.lease(workerKey, worker: worker, wait: 10)?.job.id }
                while await dispatcher.waiting < 1 { try await Task.sleep(for: .milliseconds(10)) }
                let replay = try await api.call(.post, "/v1/generations", key: user, json: body, headers: headers)
                #expect(replay.status == .ok)
                // Released, the waiter looks again, finds nothing, and waits again.
                while await dispatcher.waiting < 1 { try await Task.sleep(for: .milliseconds(10)) }
                let next = try await api.submit(user)
                #expect(next.state == .running)
                #expect(try await group.next() == next.id)
            }
        }
    }

    @Test("a long-polling worker is woken by a submission")
    func longPoll() async throws {
        let kiln = try await KilnHarness.make(clock: ManualWallClock(Date()))
        // The long poll waits on real time; the harness clock only stamps records.
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            async let polled = api.lease(workerKey, worker: worker, wait: 30)
            try await Task.sleep(for: .milliseconds(200))
            let submitted = try await api.submit(user)
            let lease = try await polled
            #expect(lease?.job.id == submitted.id)
        }
    }
}
