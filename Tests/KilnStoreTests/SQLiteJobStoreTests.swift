import Foundation
import GRDB
import KilnCore
import KilnStore
import Testing

/// What only the SQLite backend promises: its state survives closing and reopening the database file.
@Suite("SQLiteJobStore")
struct SQLiteJobStoreTests {
    /// What was written before the store was dropped.
    private struct Written {
        var accounts: [Account] = []
        var key: APIKeyRecord?
        var model: ModelRecord?
        var worker: WorkerRecord?
        var output: FileRecord?
        var generations: [Generation] = []
        var events: [GenerationID: [GenerationEvent]] = [:]
    }

    @Test("synchronous = FULL and temp_store = MEMORY are in effect on the connection that writes")
    func writerPragmas() throws {
        let store = try SQLiteJobStore(path: try temporaryDatabasePath())
        #expect(try store.writerPragma("synchronous") == 2, "2 is FULL")
        #expect(try store.writerPragma("temp_store") == 2, "2 is MEMORY: savepoints' undo logs never touch a file")
    }

    @Test("a start or a heartbeat writes no page of the generations' indexes; a completion does")
    func sameStateTransitionsLeaveIndexes() async throws {
        let path = try temporaryDatabasePath()
        let store = try SQLiteJobStore(path: path)
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let queued = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        let leased = try await store.leaseQueued(queued, to: worker, at: Fixture.time(1), ttl: 30)
        let token = try #require(leased.lease).token
        let pageSize = try store.writerPragma("page_size")
        // The pages a change writes: the frames it appends to a write-ahead log emptied just before.
        func framesWritten(_ change: () async throws -> Void) async throws -> Int {
            #expect(try store.writerPragma("wal_checkpoint(TRUNCATE)") == 0, "the log was emptied")
            try await change()
            let size = try #require(try FileManager.default.attributesOfItem(atPath: path + "-wal")[.size] as? Int)
            return (size - 32) / (24 + pageSize)
        }
        let start = try await framesWritten {
            _ = try await store.start(leased.id, worker: worker.id, token: token, at: Fixture.time(2), ttl: 30)
        }
        let heartbeat = try await framesWritten {
            _ = try await store.heartbeat(
                leased.id, worker: worker.id, token: token, progress: JobProgress(fraction: 0.5, stage: "denoising"),
                at: Fixture.time(3), ttl: 30)
        }
        // The row, the event, the events' index and the events' sequence counter.
        #expect(start == 4)
        #expect(heartbeat == 4)
        let complete = try await framesWritten {
            _ = try await store.complete(leased.id, worker: worker.id, token: token, outputs: [], at: Fixture.time(4))
        }
        #expect(complete > 4, "a change of state rewrites the indexes that hold the state")
        #expect(try await store.fetch(leased.id).state == .succeeded)
        #expect(try await store.eventKinds(of: leased.id) == [.queued, .leased, .started, .progress, .succeeded])
    }

    @Test("an older database gets its queued counts from its rows, and the triggers keep them equal to a count")
    func queuedCountsMigration() async throws {
        let path = try temporaryDatabasePath()
        var store: SQLiteJobStore? = try SQLiteJobStore(path: path)
        let alice = try await store!.seedAccount(name: "Alice", tier: "free")
        let carol = try await store!.seedAccount(name: "Carol", tier: "enterprise")
        let worker = try await store!.seedWorker()
        var generations: [Generation] = []
        for index in 0..<5 {
            let owner = index < 3 ? alice : carol
            generations.append(
                try await store!.submitQueued(makeGeneration(account: owner.id, tier: owner.tier, at: Fixture.time(Double(index)))))
        }
        _ = try await store!.leaseQueued(generations[0], to: worker, at: Fixture.time(10))
        store = nil
        // The database as the schema before the counts left it.
        let database = try DatabaseQueue(path: path)
        try await database.write { db in
            try db.execute(
                sql: """
                    DROP TRIGGER generations_enter_queue_on_insert; DROP TRIGGER generations_enter_queue;
                    DROP TRIGGER generations_leave_queue; DROP TRIGGER generations_leave_queue_on_delete;
                    DROP TABLE queued_counts;
                    CREATE INDEX generations_queued_by_tier ON generations(tier) WHERE state = 'queued';
                    DELETE FROM grdb_migrations WHERE identifier = 'v14-queued-counts';
                    """)
        }
        try database.close()

        let reopened = try SQLiteJobStore(path: path)
        let expected = ["account": [alice.id.rawValue: 2, carol.id.rawValue: 2], "tier": ["free": 2, "enterprise": 2]]
        #expect(try Self.queuedCounts(at: path) == expected, "counted from the rows by the migration")
        // Through every kind of change, the counts stay those of the rows.
        _ = try await reopened.cancel(generations[1].id, at: Fixture.time(11))
        _ = try await reopened.leaseQueued(generations[3], to: worker, at: Fixture.time(12))
        _ = try await reopened.expireLeases(at: Fixture.time(100))
        _ = try await reopened.submitQueued(makeGeneration(account: carol.id, tier: "enterprise", at: Fixture.time(101)))
        let counted = try await DatabaseQueue(path: path).read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT 'account' AS scope, account_id AS name, COUNT(*) AS queued FROM generations WHERE state = 'queued'
                    GROUP BY account_id UNION ALL
                    SELECT 'tier', tier, COUNT(*) FROM generations WHERE state = 'queued' GROUP BY tier
                    """)
        }
        var rows: [String: [String: Int]] = [:]
        for row in counted { rows[row["scope"], default: [:]][row["name"]] = row["queued"] }
        #expect(rows == ["account": [alice.id.rawValue: 2, carol.id.rawValue: 3], "tier": ["free": 2, "enterprise": 3]])
        #expect(try Self.queuedCounts(at: path) == rows)
    }

    /// The nonzero queued counts the store keeps, by scope and name.
    private static func queuedCounts(at path: String) throws -> [String: [String: Int]] {
        var counts: [String: [String: Int]] = [:]
        for row in try DatabaseQueue(path: path).read({ try Row.fetchAll($0, sql: "SELECT * FROM queued_counts WHERE queued != 0") }) {
            counts[row["scope"], default: [:]][row["name"]] = row["queued"]
        }
        return counts
    }

    @Test("changes made at once commit together; one that fails rolls back alone and the rest are kept")
    func groupCommit() async throws {
        let store = try SQLiteJobStore(path: try temporaryDatabasePath())
        let accounts = (0..<50).map { Account(id: .random(), name: "a\($0)", tier: "api", createdAt: Date(timeIntervalSince1970: 0)) }
        let outcomes = await withTaskGroup(of: Bool.self) { group in
            for account in accounts + [accounts[7]] {
                group.addTask { (try? await store.createAccount(account)) != nil }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(outcomes.filter { !$0 }.count == 1, "exactly the duplicate is refused")
        #expect(Set(try await store.accounts().map(\.id)) == Set(accounts.map(\.id)))
    }

    @Test("durability: every record and generation state survives close and reopen")
    func closeAndReopen() async throws {
        let path = try temporaryDatabasePath()
        let written = try await writeEverything(at: path)
        // The first store is gone with `writeEverything`'s scope; this one reads the same file afresh.
        let reopened = try SQLiteJobStore(path: path)

        let accounts = try await reopened.accounts()
        #expect(Set(accounts) == Set(written.accounts))
        let key = try #require(written.key)
        let storedKey = try await reopened.key(secretHash: key.secretHash)
        #expect(storedKey == key)
        let model = try #require(written.model)
        let storedModel = try await reopened.model(named: model.name)
        #expect(storedModel == model)
        let worker = try #require(written.worker)
        let storedWorker = try await reopened.worker(worker.id)
        #expect(storedWorker == worker)
        let output = try #require(written.output)
        let storedOutput = try await reopened.file(output.id)
        #expect(storedOutput == output)

        let expectedStates: [GenerationState] = [.queued, .running, .succeeded, .failed, .canceled, .queued]
        #expect(written.generations.map(\.state) == expectedStates, "the fixture covers every state")
        for generation in written.generations {
            let stored = try await reopened.generation(generation.id)
            #expect(stored == generation, "generation \(generation.id) (\(generation.state)) survives reopening")
            let bySequence = try await reopened.generation(sequence: generation.sequence)
            #expect(bySequence?.id == generation.id)
            let expectedEvents = try #require(written.events[generation.id])
            let events = try await reopened.events(of: generation.id, after: 0, limit: 100)
            #expect(events == expectedEvents, "the event log of \(generation.id) survives reopening")
        }
        let expectedQueued = written.generations.filter { $0.state == .queued }.map(\.id)
        let queued = try await reopened.queuedGenerations()
        #expect(queued.map(\.id) == expectedQueued)
        let expectedRunning = written.generations.filter { $0.state == .running }.map(\.id)
        let running = try await reopened.runningGenerations()
        #expect(running.map(\.id) == expectedRunning)

        // The reopened store goes on where the first one stopped.
        let account = try #require(written.accounts.first)
        let next = try await reopened.submit(
            makeGeneration(account: account.id, at: Fixture.time(500)), admission: Admission(), idempotency: nil)
        let highest = try #require(written.generations.map(\.sequence).max())
        #expect(next.generation.sequence > highest)

        // So do idempotency keys.
        let replay = try await reopened.submit(
            makeGeneration(account: account.id, at: Fixture.time(501)), admission: Admission(),
            idempotency: IdempotencyClaim(key: "durable", requestHash: "hash-a"))
        #expect(replay.created == false)
        #expect(replay.generation.id == written.generations.first?.id)
    }

    /// Writes accounts, records and generations in every state to a store at `path`, then drops the store.
    private func writeEverything(at path: String) async throws -> Written {
        let store = try SQLiteJobStore(path: path)
        var written = Written()

        let account = try await store.seedAccount(name: "Acme", tier: "enterprise", at: Fixture.time(0))
        let other = try await store.seedAccount(name: "Other", tier: "free", at: Fixture.time(1))
        written.accounts = [account, other]
        let key = makeKey(account: account.id, at: Fixture.time(2))
        try await store.createKey(key)
        written.key = key
        let model = ModelRecord(
            name: "flux", description: "FLUX.1", inputSchema: .object(["type": .string("object")]), createdAt: Fixture.time(3))
        try await store.createModel(model)
        written.model = model
        let worker = try await store.seedWorker(at: Fixture.time(4))

        func draft(_ account: Account, _ seconds: Double, maxAttempts: Int = 3) -> Generation {
            makeGeneration(
                account: account.id, tier: account.tier, maxAttempts: maxAttempts,
                input: ["prompt": .string("generation at \(seconds)"), "steps": .number(seconds)], at: Fixture.time(seconds))
        }

        // Queued, with an idempotency key.
        let queued = try await store.submit(
            draft(account, 10), admission: Admission(), idempotency: IdempotencyClaim(key: "durable", requestHash: "hash-a")
        ).generation

        // Running, started, with progress.
        let running = try await store.submitQueued(draft(account, 11))
        let runningLease = try await store.leaseQueued(running, to: worker, at: Fixture.time(20), ttl: 600)
        let runningToken = try #require(runningLease.lease?.token)
        _ = try await store.start(running.id, worker: worker.id, token: runningToken, at: Fixture.time(21), ttl: 600)
        _ = try await store.heartbeat(
            running.id, worker: worker.id, token: runningToken, progress: JobProgress(fraction: 0.4, stage: "denoising"),
            at: Fixture.time(22), ttl: 600)

        // Succeeded, with an output.
        let succeeded = try await store.submitQueued(draft(other, 12))
        let succeededLease = try await store.leaseQueued(succeeded, to: worker, at: Fixture.time(23), ttl: 600)
        let succeededToken = try #require(succeededLease.lease?.token)
        let output = makeFile(account: other.id, contentType: "image/png", size: 777, at: Fixture.time(24))
        try await store.attachOutput(succeeded.id, worker: worker.id, token: succeededToken, name: "image", file: output)
        _ = try await store.complete(succeeded.id, worker: worker.id, token: succeededToken, outputs: ["image"], at: Fixture.time(25))
        written.output = output

        // Failed.
        let failed = try await store.submitQueued(draft(other, 13))
        let failedLease = try await store.leaseQueued(failed, to: worker, at: Fixture.time(26), ttl: 600)
        _ = try await store.fail(
            failed.id, worker: worker.id, token: try #require(failedLease.lease?.token),
            error: JobFailure(code: "invalid_prompt", message: "the prompt is empty"), retryable: false, at: Fixture.time(27))

        // Canceled.
        let canceled = try await store.submitQueued(draft(account, 14))
        _ = try await store.cancel(canceled.id, at: Fixture.time(28))

        // Queued again after a retryable failure (attempts 1, a fencing token already spent).
        let retried = try await store.submitQueued(draft(account, 15))
        let retriedLease = try await store.leaseQueued(retried, to: worker, at: Fixture.time(29), ttl: 600)
        _ = try await store.fail(
            retried.id, worker: worker.id, token: try #require(retriedLease.lease?.token),
            error: JobFailure(code: "worker_crash", message: "segfault"), retryable: true, at: Fixture.time(30))

        // A worker changed after registering.
        written.worker = try await store.setWorkerState(worker.id, .draining)

        for id in [queued.id, running.id, succeeded.id, failed.id, canceled.id, retried.id] {
            written.generations.append(try await store.fetch(id))
            written.events[id] = try await store.events(of: id, after: 0, limit: 100)
        }
        return written
    }
}
