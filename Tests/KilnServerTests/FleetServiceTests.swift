import Foundation
import HTTPTypes
import KilnAPI
import KilnCore
import KilnFleet
import KilnModels
import KilnServer
import KilnStore
import Testing

/// A test double of a capacity provider: it starts nothing, and records what it was asked. The
/// workers it "starts" are registered by the test itself, with the launch label, as a started
/// `kiln worker` would. A graceful stop leaves the launch running, as a draining worker finishing
/// its job would be.
actor RecordingProvider: CapacityProvider {
    private(set) var launched: [String] = []
    private(set) var stopped: [(launch: String, graceful: Bool)] = []
    /// Launch → pool.
    private var alive: [String: String] = [:]

    func provision(_ count: Int, pool: ServerConfiguration.Pool) async throws -> [String] {
        let new = (0..<count).map { "test-\(pool.spec.name)-\(launched.count + $0)" }
        launched += new
        for launch in new { alive[launch] = pool.spec.name }
        return new
    }

    func stop(launch: String, graceful: Bool) async {
        stopped.append((launch, graceful))
        if !graceful { alive[launch] = nil }
    }

    func running() async -> [String: String]? { alive }

    /// A launch started outside this server (one from before a restart, a pod its Deployment
    /// replaced): the provider reports it running.
    func startedElsewhere(_ launch: String, pool: String) { alive[launch] = pool }
    func shutdown(grace: Duration) async { alive.removeAll() }
}

@Suite("Fleet service: the controller against the live server")
struct FleetServiceTests {
    static func configuration(min: Int = 0, max: Int = 3, cooldown: Double = 30, grace: Double = 60) -> ServerConfiguration {
        var configuration = ServerConfiguration()
        configuration.pools = [
            .init(
                provider: .local,
                spec: CapacityPool(
                    name: "cpu", cluster: "default", accelerator: "cpu", gpusPerWorker: 0, minWorkers: min, maxWorkers: max,
                    cooldownSeconds: cooldown, drainGraceSeconds: grace))
        ]
        configuration.fleet.controller.dwellSeconds = 0
        return configuration
    }

    /// Registers a started launch as `kiln worker --pool POOL` would.
    private func registerIn(_ api: KilnClient, key: String, launch: String, pool: String) async throws -> String {
        let worker = api.api(key)
        return try await worker {
            try await $0.registerWorker(
                body: .json(
                    .init(
                        cluster: "default", accelerator: "cpu", gpus: 0, labels: .init(additionalProperties: ["kiln.launch": launch]),
                        pool: pool))
            ).created.body.json.id
        }
    }

    private func register(_ api: KilnClient, key: String, launch: String) async throws -> String {
        try await registerIn(api, key: key, launch: launch, pool: "cpu")
    }

    @Test("queued work grows the pool through its provider; the new workers are placed, and a placed worker is leased only its model's jobs")
    func growsPlacesAndRestricts() async throws {
        let provider = RecordingProvider()
        let kiln = try await KilnHarness.make(configuration: Self.configuration(), providers: [.local: provider])
        try await kiln.withClient { api in
            try await api.model("a")
            try await api.model("b")
            let (_, user) = try await api.account(tier: "api")
            let key = try await api.workerKey()
            var jobs: [String] = []
            for _ in 0..<4 { jobs.append(try await api.submit(user, model: "a").id) }
            kiln.clock.advance(by: 30)

            let first = try await kiln.server.services.fleet.tick()
            #expect(first.pools[0].desired > 0)
            #expect(first.pools[0].reason.hasPrefix("api promise at risk in 2 min (a): +"))
            let launched = await provider.launched
            #expect(launched.count == first.pools[0].desired)

            // The launches register; the next tick places them on `a`.
            var workers: [String] = []
            for launch in launched { workers.append(try await register(api, key: key, launch: launch)) }
            kiln.clock.advance(by: 5)
            try await kiln.server.services.fleet.tick()
            let fleet = try await api.api().callAsFunction { try await $0.getFleet().ok.body.json }
            #expect(fleet.workers.count == launched.count)
            #expect(fleet.workers.allSatisfy { $0.model == "a" && $0.state == .active })
            #expect(fleet.decisions.contains { $0.action.hasPrefix("assign ") && $0.action.hasSuffix(" to a") })

            // A `b` job waits behind nothing, yet a worker placed on `a` is leased `a`'s jobs only.
            let other = try await api.submit(user, model: "b")
            var leased: [String] = []
            while let lease = try await api.lease(key, worker: workers[0]) { leased.append(lease.job.id) }
            #expect(Set(leased) == Set(jobs))
            #expect(try await api.generation(user, other.id).state == .queued)
        }
    }

    @Test("a shrinking pool retires an idle worker after its cool-down and keeps the busy one its job needs")
    func shrinksAfterCooldown() async throws {
        let provider = RecordingProvider()
        let kiln = try await KilnHarness.make(configuration: Self.configuration(max: 2, cooldown: 30), providers: [.local: provider])
        try await kiln.withClient { api in
            try await api.model("a")
            let (_, user) = try await api.account(tier: "free")
            let key = try await api.workerKey()
            let client = api.api(user)
            for _ in 0..<20 { _ = try await api.submit(user, model: "a") }
            kiln.clock.advance(by: 3_000)
            try await kiln.server.services.fleet.tick()
            let launched = await provider.launched
            #expect(launched.count == 2)
            var workers: [String] = []
            for launch in launched { workers.append(try await register(api, key: key, launch: launch)) }
            try await kiln.server.services.fleet.tick()

            // One worker takes a job and keeps it; the rest of the work is canceled.
            let held = try #require(try await api.lease(key, worker: workers[0]))
            let queued = try await client { try await $0.listGenerations(query: .init(state: .queued, limit: 100)).ok.body.json.data }
            for generation in queued { _ = try await client { try await $0.cancelGeneration(path: .init(id: generation.id)).ok } }
            // The need falls to the one running job: the pool holds for its cool-down, then shrinks.
            kiln.clock.advance(by: 10)
            try await kiln.server.services.fleet.tick()
            #expect(try await workerState(api, workers[1]) == .active, "held through the cool-down")
            kiln.clock.advance(by: 31)
            let shrink = try await kiln.server.services.fleet.tick()
            #expect(shrink.pools[0].desired == 1)
            #expect(shrink.pools[0].reason.hasSuffix("for 30 s: −1"))
            #expect(try await workerState(api, workers[1]) == .retired, "the idle worker goes")
            #expect(await provider.stopped.contains { $0.launch == launched[1] })
            #expect(try await workerState(api, workers[0]) == .active, "the busy one stays: its job needs it")

            // Once its job is over (canceled here), nothing needs it: it retires after the cool-down.
            _ = try await client { try await $0.cancelGeneration(path: .init(id: held.job.id)).ok }
            kiln.clock.advance(by: 40)
            try await kiln.server.services.fleet.tick()
            #expect(try await workerState(api, workers[0]) == .retired)
            let fleet = try await api.api().callAsFunction { try await $0.getFleet().ok.body.json }
            #expect(fleet.workers.isEmpty)
            #expect(fleet.pools[0].desired == 0)
        }
    }

    @Test("a burst pool given back: its busy worker drains, and its job is released after the grace, charged no attempt, and runs again")
    func burstReleasedAfterGrace() async throws {
        let provider = RecordingProvider()
        var configuration = Self.configuration(max: 1, cooldown: 10, grace: 60)
        configuration.pools.append(
            .init(
                provider: .local,
                spec: CapacityPool(
                    name: "borrowed", cluster: "default", kind: .burst, accelerator: "cpu", gpusPerWorker: 0, minWorkers: 0,
                    maxWorkers: 1, cooldownSeconds: 10, drainGraceSeconds: 60)))
        let kiln = try await KilnHarness.make(configuration: configuration, providers: [.local: provider])
        try await kiln.withClient { api in
            try await api.model("a")
            let (_, user) = try await api.account(tier: "api")
            let key = try await api.workerKey()
            let first = try await api.submit(user, model: "a")
            let second = try await api.submit(user, model: "a")
            kiln.clock.advance(by: 30)
            // Two api jobs 90 s from their promise need more than the primary pool's one worker.
            let grow = try await kiln.server.services.fleet.tick()
            #expect(grow.pools.map(\.desired) == [1, 1])
            let launched = await provider.launched
            #expect(launched == ["test-cpu-0", "test-borrowed-1"])
            let primary = try await registerIn(api, key: key, launch: launched[0], pool: "cpu")
            let borrowed = try await registerIn(api, key: key, launch: launched[1], pool: "borrowed")
            try await kiln.server.services.fleet.tick()
            let onPrimary = try #require(try await api.lease(key, worker: primary))
            let onBorrowed = try #require(try await api.lease(key, worker: borrowed))
            #expect(Set([onPrimary.job.id, onBorrowed.job.id]) == [first.id, second.id])
            let started = try await api.job(key, primary, onPrimary, "start", json: #"{"token":"\#(onPrimary.lease.token)"}"#)
            #expect(started.status == .ok)
            #expect(try await api.complete(key, primary, onPrimary).status == .noContent)

            // The primary pool now has room for the job still running: the burst pool is given
            // back after its cool-down, its busy worker draining.
            kiln.clock.advance(by: 5)
            try await kiln.server.services.fleet.tick()
            kiln.clock.advance(by: 11)
            let giveBack = try await kiln.server.services.fleet.tick()
            #expect(giveBack.pools[1].desired == 0)
            #expect(try await workerState(api, borrowed) == .draining)
            #expect(try await api.generation(user, onBorrowed.job.id).state == .running)
            // Within the grace the job keeps running; after it, the job is released.
            kiln.clock.advance(by: 30)
            try await kiln.server.services.fleet.tick()
            #expect(try await api.generation(user, onBorrowed.job.id).state == .running)
            kiln.clock.advance(by: 31)
            try await kiln.server.services.fleet.tick()
            let released = try await api.generation(user, onBorrowed.job.id)
            #expect(released.state == .queued)
            #expect(released.attempts == 0, "a release is not charged as an attempt")
            #expect(try await workerState(api, borrowed) == .retired)
            // Its old lease changes nothing any more; the primary worker runs the job again.
            let stale = try await api.job(key, borrowed, onBorrowed, "start", json: #"{"token":"\#(onBorrowed.lease.token)"}"#)
            #expect(stale.status == .conflict)
            let again = try #require(try await api.lease(key, worker: primary))
            #expect(again.job.id == onBorrowed.job.id)
            #expect(try await api.generation(user, again.job.id).attempts == 1)
        }
    }

    @Test("an admin's bounds apply at the next tick, past the cool-down; bad bounds are refused with the field named and change nothing")
    func adminBounds() async throws {
        let provider = RecordingProvider()
        var configuration = Self.configuration(max: 3, cooldown: 600, grace: 60)
        configuration.pools.append(.init(provider: .static, spec: CapacityPool(name: "by-hand", accelerator: "cpu", gpusPerWorker: 0, maxWorkers: 0)))
        let kiln = try await KilnHarness.make(configuration: configuration, providers: [.local: provider])
        try await kiln.withClient { api in
            try await api.model("a")
            let (_, user) = try await api.account(tier: "api")
            let key = try await api.workerKey()
            for _ in 0..<6 { _ = try await api.submit(user, model: "a") }
            kiln.clock.advance(by: 30)
            try await kiln.server.services.fleet.tick()
            let launched = await provider.launched
            #expect(launched.count == 3)
            // They register 12 s after they were asked for: the pool's provisioning time, measured.
            kiln.clock.advance(by: 12)
            var workers: [String] = []
            for launch in launched { workers.append(try await register(api, key: key, launch: launch)) }
            try await kiln.server.services.fleet.tick()
            let admin = api.api()
            #expect(try await admin { try await $0.getFleet().ok.body.json }.pools[0].provisionSeconds == 12)
            let held = try #require(try await api.lease(key, worker: workers[0]))

            // Refused, naming the problem, changing nothing.
            let inverted = try await api.call(.patch, "/v1/admin/fleet/pools/cpu", json: #"{"min_workers": 2, "max_workers": 1}"#)
            #expect(inverted.status == .unprocessableContent)
            #expect(inverted.error?.message.contains("max_workers (1) must not be below min_workers (2)") == true)
            let negative = try await api.call(.patch, "/v1/admin/fleet/pools/cpu", json: #"{"max_workers": -1}"#)
            #expect(negative.status == .unprocessableContent)
            #expect(negative.error?.message.contains("max_workers") == true)
            let unknown = try await api.call(.patch, "/v1/admin/fleet/pools/gpu", json: #"{"max_workers": 1}"#)
            #expect(unknown.status == .notFound)
            #expect(unknown.error?.message == "no capacity pool is named 'gpu'")
            let fixed = try await api.call(.patch, "/v1/admin/fleet/pools/by-hand", json: #"{"max_workers": 1}"#)
            #expect(fixed.status == .unprocessableContent)
            #expect(fixed.error?.message.contains("static") == true)
            #expect(try await admin { try await $0.getFleet().ok.body.json }.pools[0].maxWorkers == 3)

            // Give it all back now: no cool-down; the busy worker drains, the idle ones go.
            let zero = try await admin { try await $0.setPoolBounds(path: .init(name: "cpu"), body: .json(.init(maxWorkers: 0))) }
            #expect(try zero.ok.body.json.maxWorkers == 0)
            kiln.clock.advance(by: 5)
            let back = try await kiln.server.services.fleet.tick()
            #expect(back.pools[0].desired == 0)
            #expect(try await workerState(api, workers[0]) == .draining)
            #expect(try await workerState(api, workers[1]) == .retired)
            #expect(try await workerState(api, workers[2]) == .retired)
            #expect(try await api.generation(user, held.job.id).state == .running)
            let decisions = try await admin { try await $0.getFleet().ok.body.json.decisions }
            #expect(decisions.contains { $0.action == "bounds of cpu: 0–0" && $0.reason == "set by an admin" })
        }
    }

    @Test("a running launch nobody here asked for counts as provisioning in its pool until it registers")
    func adoptsRunningLaunches() async throws {
        let provider = RecordingProvider()
        let kiln = try await KilnHarness.make(configuration: Self.configuration(min: 1, max: 1), providers: [.local: provider])
        try await kiln.withClient { api in
            await provider.startedElsewhere("from-before", pool: "cpu")
            let first = try await kiln.server.services.fleet.tick()
            #expect(first.pools[0].actual == 1, "the running launch is on its way")
            #expect(await provider.launched.isEmpty, "so the pool's min is met without asking for another")
            let key = try await api.workerKey()
            let worker = try await register(api, key: key, launch: "from-before")
            let second = try await kiln.server.services.fleet.tick()
            #expect(second.pools[0].actual == 1)
            #expect(await provider.launched.isEmpty)
            let fleet = try await api.api().callAsFunction { try await $0.getFleet().ok.body.json }
            #expect(fleet.workers.map(\.id) == [worker])
            #expect(fleet.decisions.contains { $0.action == "found from-before in cpu" })
            #expect(fleet.pools[0].provisionSeconds == 0, "a launch found running is not measured")
        }
    }

    @Test("a static pool: its workers are placed but never counted up or down; a silent one is retired, unless it holds a job")
    func staticPoolAndSilentWorkers() async throws {
        var configuration = Self.configuration()
        configuration.pools[0].provider = .static
        let kiln = try await KilnHarness.make(configuration: configuration)
        try await kiln.withClient { api in
            try await api.model("a")
            let (_, user) = try await api.account(tier: "api")
            let key = try await api.workerKey()
            let busy = try await register(api, key: key, launch: "by-hand-1")
            let idle = try await register(api, key: key, launch: "by-hand-2")
            for _ in 0..<30 { _ = try await api.submit(user, model: "a") }
            let decision = try await kiln.server.services.fleet.tick()
            #expect(decision.pools[0].desired == 2, "a static pool is whatever registered, however large the backlog")
            #expect(!decision.actions.contains { if case .provision = $0.kind { true } else { false } })
            let fleet = try await api.api().callAsFunction { try await $0.getFleet().ok.body.json }
            #expect(fleet.workers.allSatisfy { $0.model == "a" })
            _ = try #require(try await api.lease(key, worker: busy))
            // An hour without a poll: the idle worker is gone; the busy one keeps its job's lease
            // alive by heartbeats, so it stays.
            kiln.clock.advance(by: 3_600)
            try await kiln.server.services.fleet.tick()
            #expect(try await workerState(api, idle) == .retired)
            #expect(try await workerState(api, busy) == .active)
            let decisions = try await api.api().callAsFunction { try await $0.getFleet().ok.body.json.decisions }
            #expect(decisions.contains { $0.action == "retire \(idle)" && $0.reason == "not seen for 180 s" })
        }
    }

    @Test("a worker placed while in a long poll is recalled from it: it takes no job of another model under its old offer")
    func placementRecallsLongPoll() async throws {
        var configuration = Self.configuration()
        configuration.pools[0].provider = .static
        let kiln = try await KilnHarness.make(configuration: configuration)
        try await kiln.withClient { api in
            try await api.model("a")
            try await api.model("b")
            let (_, user) = try await api.account(tier: "api")
            let key = try await api.workerKey()
            let id = try await register(api, key: key, launch: "by-hand")
            let workerID = try #require(WorkerID(rawValue: id))
            let worker = try #require(try await kiln.server.services.store.worker(workerID))
            // Placed on `a` (it has a job queued) while it waits for work of any model.
            let first = try await api.submit(user, model: "a")
            let taken = try #require(try await api.lease(key, worker: id))
            #expect(taken.job.id == first.id)
            let dispatcher = kiln.server.services.dispatcher
            let poll = Task { try await dispatcher.lease(for: worker, wait: 30) }
            while await dispatcher.waiting == 0 { await Task.yield() }
            try await kiln.server.services.fleet.tick()
            #expect(await kiln.server.services.fleet.assignment(for: worker.id)?.model == "a")
            _ = try await api.submit(user, model: "b")
            let leased = try await poll.value
            #expect(leased == nil, "no job of another model under the old offer")
        }
    }

    @Test("a worker naming a pool the server does not have, or another cluster's pool, is refused with the pools named")
    func unknownPoolRefused() async throws {
        let kiln = try await KilnHarness.make(configuration: Self.configuration(), providers: [.local: RecordingProvider()])
        try await kiln.withClient { api in
            let key = try await api.workerKey()
            let unknown = try await api.call(
                .post, "/v1/workers", key: key, json: #"{"cluster":"default","accelerator":"cpu","gpus":0,"pool":"gpu"}"#)
            #expect(unknown.status == .badRequest)
            #expect(unknown.error?.message == "pool: 'gpu' is not a pool of this server (cpu)")
            let elsewhere = try await api.call(
                .post, "/v1/workers", key: key, json: #"{"cluster":"east","accelerator":"cpu","gpus":0,"pool":"cpu"}"#)
            #expect(elsewhere.status == .badRequest)
            #expect(elsewhere.error?.message == "pool: 'cpu' belongs to cluster 'default', not 'east'")
            let workers = try await api.api().callAsFunction { try await $0.listWorkers().ok.body.json.data }
            #expect(workers.isEmpty, "a refused registration changes nothing")
        }
    }

    private func workerState(_ api: KilnClient, _ id: String) async throws -> Components.Schemas.WorkerState? {
        try await api.api().callAsFunction { try await $0.listWorkers().ok.body.json.data }.first { $0.id == id }?.state
    }
}

@Suite("Fleet service: placement through the worker protocol")
struct PlacementProtocolTests {
    func pack(_ code: String) throws -> PackedVersion {
        let (folder, spec) = try videoModelFolder(code: code)
        let workspace = FileManager.default.temporaryDirectory.appending(path: "kiln-pack-\(UUID().uuidString)")
        return try ModelPackager.pack(folder: folder, spec: spec, environments: [:], workspace: workspace)
    }

    private func lease(_ api: KilnClient, _ key: String, _ worker: String, ready: String?) async throws
        -> Operations.LeaseJob.Output
    {
        let client = api.api(key)
        return try await client { try await $0.leaseJob(path: .init(id: worker), body: .json(.init(waitSeconds: 0, readyVersion: ready))) }
    }

    @Test("a placed worker is told to prepare the production version, is leased jobs once it says it is ready, follows a promote, and its switch is measured")
    func prepareThenServe() async throws {
        let provider = RecordingProvider()
        let kiln = try await KilnHarness.make(configuration: FleetServiceTests.configuration(), providers: [.local: provider])
        try await kiln.withClient { api in
            let (v1, _) = try await api.push(try pack("class Predictor: pass\n"))
            let (v2, _) = try await api.push(try pack("class Predictor: # v2\n    pass\n"))
            _ = try await api.moveAlias("video", "production", [(v1.id, 100)])
            let (_, user) = try await api.account(tier: "api")
            let key = try await api.workerKey()
            let job = try await api.submit(user, model: "video", input: ["prompt": .string("a kiln")])
            try await kiln.server.services.fleet.tick()
            let launch = try #require(await provider.launched.first)
            let worker = try await api.api(key).callAsFunction {
                try await $0.registerWorker(
                    body: .json(
                        .init(cluster: "default", accelerator: "cpu", gpus: 0, labels: .init(additionalProperties: ["kiln.launch": launch]), pool: "cpu"))
                ).created.body.json.id
            }
            try await kiln.server.services.fleet.tick()

            // Placed, not ready: 202 with the version to prepare, and no job.
            let told = try await lease(api, key, worker, ready: nil)
            let assignment = try told.accepted.body.json
            #expect(assignment.model == "video")
            #expect(assignment.version == v1.id)
            #expect(try await api.generation(user, job.id).state == .queued)
            // Pulling and setting up took 42 s; then it says it is ready and gets the job.
            kiln.clock.advance(by: 42)
            let leased = try await lease(api, key, worker, ready: v1.id).ok.body.json
            #expect(leased.job.id == job.id)
            #expect(await kiln.server.services.fleet.measuredSwitchSeconds(of: "video") == 42)

            // A promote re-places the worker on the new version at the next tick.
            _ = try await api.moveAlias("video", "production", [(v2.id, 100)])
            try await kiln.server.services.fleet.tick()
            let again = try await lease(api, key, worker, ready: v1.id)
            #expect(try again.accepted.body.json.version == v2.id)
        }
    }
}

@Suite("Fleet service: the providers' worker key")
struct ProviderKeyTests {
    @Test("the workers the providers start share one worker key, kept (mode 0600) across restarts until it is revoked")
    func keptAcrossRuns() async throws {
        let folder = FileManager.default.temporaryDirectory.appending(path: "kiln-key-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let store = try SQLiteJobStore(path: folder.appending(path: "kiln.sqlite").path)
        let file = folder.appending(path: "provider-worker.key")
        let clock = ManualWallClock()
        let first = await KilnServer.providerKey(file: file, store: store, clock: clock, logger: KilnHarness.quietLogger)
        let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let record = try #require(try await store.key(secretHash: KeySecret.hash(first)))
        #expect(record.scope == .worker)
        // A restart reads it back.
        #expect(await KilnServer.providerKey(file: file, store: store, clock: clock, logger: KilnHarness.quietLogger) == first)
        // Revoked, it is replaced.
        try await store.revokeKey(record.id, at: clock.now())
        let second = await KilnServer.providerKey(file: file, store: store, clock: clock, logger: KilnHarness.quietLogger)
        #expect(second != first)
        #expect(try String(contentsOf: file, encoding: .utf8) == second)
    }
}
