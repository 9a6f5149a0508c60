import Foundation
import KilnCore
import KilnPostgres
import KilnStore
import Synchronization
import Testing

/// What only the PostgreSQL backend has to show: its URL, and several servers sharing one database.
@Suite("PostgresJobStore")
struct PostgresJobStoreTests {
    @Test("a connection URL is parsed with libpq's defaults, and its description hides the password")
    func url() throws {
        let full = try PostgresURL("postgres://kiln:s%40cret@db.example.com:6432/jobs?sslmode=disable")
        #expect(full.host == "db.example.com")
        #expect(full.port == 6432)
        #expect(full.user == "kiln")
        #expect(full.password == "s@cret")
        #expect(full.database == "jobs")
        #expect(full.tls == .disable)
        #expect(!full.description.contains("cret"))

        let bare = try PostgresURL("postgresql://kiln@localhost")
        #expect(bare.port == 5432)
        #expect(bare.password == nil)
        #expect(bare.database == "kiln", "the database defaults to the user's name")
        #expect(bare.tls == .prefer)
        #expect(try PostgresURL("postgres://kiln@localhost/jobs?sslmode=verify-full").tls == .verifyFull)
    }

    @Test(
        "a malformed connection URL is refused with what is wrong",
        arguments: [
            ("mysql://kiln@localhost/jobs", "scheme"),
            ("postgres://localhost/jobs", "no user"),
            ("postgres://kiln@/jobs", "no host"),
            ("postgres://kiln@localhost/jobs?sslmode=sometimes", "sslmode 'sometimes'"),
            ("postgres://kiln@localhost/jobs?pool=5", "unknown parameter 'pool'"),
            ("postgres://kiln@localhost/jobs/extra", "not a database name"),
        ])
    func malformedURL(_ text: String, _ problem: String) async throws {
        let error = await expectError(.invalidInput) { try PostgresURL(text) }
        #expect(error?.message.contains(problem) == true, "\(error?.message ?? "")")
    }

    @Test("a database that does not exist is named in the error", .enabled(if: PostgresTestCluster.enabled))
    func missingDatabase() async throws {
        let url = try await PostgresTestCluster.freshDatabase()
        let missing = url.replacingOccurrences(of: "/kiln_test_", with: "/kiln_missing_")
        let error = await expectError(.unavailable) { try await PostgresJobStore.connect(url: missing) }
        #expect(error?.message.contains("does not exist") == true, "\(error?.message ?? "")")
    }

    @Test("servers that start at once on a new database migrate it once, and all work", .enabled(if: PostgresTestCluster.enabled))
    func concurrentMigration() async throws {
        let url = try await PostgresTestCluster.freshDatabase()
        let stores = try await withThrowingTaskGroup(of: PostgresJobStore.self) { group in
            for _ in 0..<4 { group.addTask { try await PostgresJobStore.connect(url: url, maximumConnections: 2) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let applied = try await stores[0].appliedMigrations()
        #expect(!applied.isEmpty)
        for store in stores { #expect(try await store.appliedMigrations() == applied) }
        // A server that starts later finds nothing to do, and every one sees what another wrote.
        let late = try await PostgresJobStore.connect(url: url, maximumConnections: 2)
        #expect(try await late.appliedMigrations() == applied)
        let account = try await stores[1].seedAccount()
        #expect(try await late.account(account.id) == account)
        for store in stores + [late] { await store.shutdown() }
    }

    @Test("each committed change is reported to the commit observer, and a read is not", .enabled(if: PostgresTestCluster.enabled))
    func commitsObserved() async throws {
        let store = try await PostgresJobStore.connect(url: PostgresTestCluster.freshDatabase(), maximumConnections: 2)
        let commits = Mutex<[CommitTiming]>([])
        store.observeCommits { timing in commits.withLock { $0.append(timing) } }
        let account = try await store.seedAccount()
        let queued = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        #expect(commits.withLock { $0.count } == 2)
        _ = try await store.generation(queued.id)
        _ = try await store.queuedGenerations()
        await expectError(.notFound) { try await store.updateAccountTier(AccountID.random(), tier: "api") }
        #expect(commits.withLock { $0.count } == 2, "reads and refused changes commit nothing")
        _ = try await store.cancel(queued.id, at: Fixture.time(1))
        let observed = commits.withLock { $0 }
        #expect(observed.count == 3)
        #expect(observed.allSatisfy { $0.changes == 1 && $0.seconds > 0 })
        await store.shutdown()
    }

    @Test("two servers racing to lease the same queued generation: exactly one wins", .enabled(if: PostgresTestCluster.enabled))
    func leaseRace() async throws {
        let url = try await PostgresTestCluster.freshDatabase()
        let first = try await PostgresJobStore.connect(url: url, maximumConnections: 4)
        let second = try await PostgresJobStore.connect(url: url, maximumConnections: 4)
        let account = try await first.seedAccount()
        let worker = try await first.seedWorker(cluster: "eu-1")
        let rival = try await second.seedWorker(cluster: "us-2")
        for round in 0..<25 {
            let queued = try await first.submitQueued(makeGeneration(account: account.id, at: Fixture.time(Double(round))))
            let at = Fixture.time(Double(round) + 0.5)
            async let one = first.lease(sequence: queued.sequence, to: worker, at: at, ttl: 30)
            async let other = second.lease(sequence: queued.sequence, to: rival, at: at, ttl: 30)
            let winners = [try await one, try await other].compactMap { $0 }
            #expect(winners.count == 1, "round \(round): \(winners.count) leases of one generation")
            let stored = try await second.fetch(queued.id)
            #expect(stored.attempts == 1)
            #expect(stored == winners.first, "the stored lease is the winner's")
            let events = try await first.eventKinds(of: queued.id)
            #expect(events == [.queued, .leased])
        }
        await first.shutdown()
        await second.shutdown()
    }

    @Test(
        "a start and a heartbeat at once, through two servers: neither undoes the other", .enabled(if: PostgresTestCluster.enabled))
    func startHeartbeatRace() async throws {
        let url = try await PostgresTestCluster.freshDatabase()
        let first = try await PostgresJobStore.connect(url: url, maximumConnections: 4)
        let second = try await PostgresJobStore.connect(url: url, maximumConnections: 4)
        let account = try await first.seedAccount()
        let worker = try await first.seedWorker()
        for round in 0..<20 {
            let queued = try await first.submitQueued(makeGeneration(account: account.id, at: Fixture.time(Double(round))))
            let leased = try await first.leaseQueued(queued, to: worker, at: Fixture.time(Double(round)))
            let token = try #require(leased.lease?.token)
            let progress = JobProgress(fraction: 0.5, stage: "denoising")
            let at = Fixture.time(Double(round) + 1)
            async let started = first.start(queued.id, worker: worker.id, token: token, at: at, ttl: 30)
            async let beat = second.heartbeat(queued.id, worker: worker.id, token: token, progress: progress, at: at, ttl: 30)
            _ = try await (started, beat)
            // Whichever came second saw what the first wrote: the start's time and the progress.
            let stored = try await first.fetch(queued.id)
            #expect(stored.lease?.startedAt == at, "round \(round): the start was undone")
            #expect(stored.startedAt == at)
            #expect(stored.progress.fraction == 0.5, "round \(round): the progress was undone")
            #expect(try await first.eventKinds(of: queued.id).filter { $0 == .started }.count == 1)
        }
        await first.shutdown()
        await second.shutdown()
    }

    @Test("a stale worker racing the new lease holder: only the holder's completion counts", .enabled(if: PostgresTestCluster.enabled))
    func completionRace() async throws {
        let url = try await PostgresTestCluster.freshDatabase()
        let first = try await PostgresJobStore.connect(url: url, maximumConnections: 4)
        let second = try await PostgresJobStore.connect(url: url, maximumConnections: 4)
        let account = try await first.seedAccount()
        let worker = try await first.seedWorker()
        let queued = try await first.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        let leased = try await first.leaseQueued(queued, to: worker, at: Fixture.time(1))
        let token = try #require(leased.lease?.token)
        async let one = Result(catching: { try await first.complete(queued.id, worker: worker.id, token: token, outputs: [], at: Fixture.time(2)) })
        async let other = Result(catching: { try await second.complete(queued.id, worker: worker.id, token: token, outputs: [], at: Fixture.time(2)) })
        let outcomes = [await one, await other]
        #expect(outcomes.filter { (try? $0.get()) != nil }.count == 1, "one completion counts")
        #expect(try await first.eventKinds(of: queued.id) == [.queued, .leased, .succeeded])
        await first.shutdown()
        await second.shutdown()
    }
}

extension Result where Failure == any Error {
    /// The outcome of an async call.
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
