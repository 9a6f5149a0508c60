import Foundation
import KilnCore
import KilnStore
import Testing

/// Conformance of ``JobStore`` backends: submission, admission, idempotency, listing, cancellation.
@Suite("JobStore conformance: submission")
struct SubmissionConformanceTests {
    @Test("listing every account's generations: newest first, by state, paged by sequence", arguments: StoreBackend.allCases)
    func listAcrossAccounts(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let first = try await store.seedAccount(name: "first")
        let second = try await store.seedAccount(name: "second")
        var submitted: [Generation] = []
        for index in 0..<6 {
            let owner = index.isMultiple(of: 2) ? first : second
            submitted.append(try await store.submitQueued(makeGeneration(account: owner.id, at: Fixture.time(Double(index)))))
        }
        _ = try await store.cancel(submitted[1].id, at: Fixture.time(10))
        _ = try await store.cancel(submitted[4].id, at: Fixture.time(11))

        let all = try await store.generations(of: nil, state: nil, limit: 100, before: nil)
        #expect(all.map(\.id) == submitted.reversed().map(\.id))
        let canceled = try await store.generations(of: nil, state: .canceled, limit: 100, before: nil)
        #expect(canceled.map(\.id) == [submitted[4].id, submitted[1].id], "both accounts' canceled, newest first")
        let page = try await store.generations(of: nil, state: .queued, limit: 2, before: nil)
        #expect(page.map(\.id) == [submitted[5].id, submitted[3].id])
        let next = try await store.generations(of: nil, state: .queued, limit: 2, before: page.last?.sequence)
        #expect(next.map(\.id) == [submitted[2].id, submitted[0].id])
        let own = try await store.generations(of: second.id, state: .canceled, limit: 100, before: nil)
        #expect(own.map(\.id) == [submitted[1].id], "an account's own listing is still its own")
    }

    @Test("submit: increasing sequence, queued, input stored exactly, a queued event", arguments: StoreBackend.allCases)
    func submitStoresQueuedGeneration(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let file = makeFile(account: account.id)
        try await store.createFile(file, quota: nil)
        let input: [String: JSONValue] = [
            "prompt": .string("a kiln at dusk, \"quoted\" — ünïcødé"),
            "steps": .number(30),
            "guidance": .number(7.5),
            "hdr": .bool(true),
            "negative": .null,
            "sizes": .array([.number(512), .number(768)]),
            "style": .object(["name": .string("ukiyo-e"), "strength": .number(0.25)]),
            "image": .string(file.id.rawValue),
        ]
        var draft = makeGeneration(account: account.id, input: input, inputFiles: ["image": file.id], at: Fixture.time(0))
        draft.version = "2025-01"
        draft.alias = "latest"
        draft.callbackURL = "https://example.com/hooks/kiln"

        let first = try await store.submit(draft, admission: Admission(), idempotency: nil)
        #expect(first.created)
        #expect(first.generation.id == draft.id)
        #expect(first.generation.state == .queued)
        #expect(first.generation.attempts == 0)
        #expect(first.generation.lease == nil)
        #expect(first.generation.queuedAt == Fixture.time(0))

        let second = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(1)))
        let third = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(2)))
        #expect(first.generation.sequence < second.sequence)
        #expect(second.sequence < third.sequence)

        let byID = try await store.fetch(draft.id)
        #expect(byID == first.generation, "what submit returns is what it stored")
        #expect(byID.input == input)
        let expectedFiles: [String: FileID] = ["image": file.id]
        #expect(byID.inputFiles == expectedFiles)
        #expect(byID.version == "2025-01")
        #expect(byID.alias == "latest")
        #expect(byID.callbackURL == "https://example.com/hooks/kiln")
        #expect(byID.model == "flux")
        #expect(byID.tier == "free")
        #expect(byID.maxAttempts == 3)

        let bySequence = try await store.generation(sequence: first.generation.sequence)
        #expect(bySequence == first.generation)
        let unknownSequence = try await store.generation(sequence: third.sequence + 1_000)
        #expect(unknownSequence == nil)
        let unknownID = try await store.generation(GenerationID.random())
        #expect(unknownID == nil)

        let events = try await store.allEvents(of: draft.id)
        #expect(events.count == 1)
        let queued = try #require(events.first)
        #expect(queued.kind == .queued)
        #expect(queued.state == .queued)
        #expect(queued.generationID == draft.id)
        #expect(queued.at == Fixture.time(0))
    }

    @Test("idempotency: a replay returns the first generation; another request under the key conflicts",
          arguments: StoreBackend.allCases)
    func idempotency(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let other = try await store.seedAccount(name: "Other")
        let claim = IdempotencyClaim(key: "order-42", requestHash: "hash-a")
        let onePerAccount = Admission(maxQueuedPerAccount: 1)

        let original = makeGeneration(account: account.id, at: Fixture.time(0))
        let first = try await store.submit(original, admission: onePerAccount, idempotency: claim)
        #expect(first.created)

        // The replay is answered even though the account is at its cap: it adds nothing.
        let retry = makeGeneration(account: account.id, at: Fixture.time(5))
        let replay = try await store.submit(retry, admission: onePerAccount, idempotency: claim)
        #expect(replay.created == false)
        #expect(replay.generation.id == original.id)
        #expect(replay.generation.sequence == first.generation.sequence)
        #expect(replay.generation.createdAt == Fixture.time(0))
        let afterReplay = try await store.generations(of: account.id, state: nil, limit: 100, before: nil)
        #expect(afterReplay.map(\.id) == [original.id], "a replay stores no second generation")
        let retryStored = try await store.generation(retry.id)
        #expect(retryStored == nil)

        let different = makeGeneration(account: account.id, at: Fixture.time(6))
        await expectError(.conflict) {
            try await store.submit(different, admission: Admission(), idempotency: IdempotencyClaim(key: "order-42", requestHash: "hash-b"))
        }
        let afterConflict = try await store.generations(of: account.id, state: nil, limit: 100, before: nil)
        #expect(afterConflict.map(\.id) == [original.id], "a conflicting request stores nothing")
        let differentStored = try await store.generation(different.id)
        #expect(differentStored == nil)
        let events = try await store.allEvents(of: original.id)
        #expect(events.count == 1, "neither the replay nor the conflict appends events")

        // Keys are per account: the same key and request elsewhere is a new generation of that account.
        let theirs = makeGeneration(account: other.id, at: Fixture.time(7))
        let elsewhere = try await store.submit(theirs, admission: onePerAccount, idempotency: claim)
        #expect(elsewhere.created)
        #expect(elsewhere.generation.id == theirs.id)
        #expect(elsewhere.generation.accountID == other.id)
        let otherList = try await store.generations(of: other.id, state: nil, limit: 100, before: nil)
        #expect(otherList.map(\.id) == [theirs.id])
        let ownList = try await store.generations(of: account.id, state: nil, limit: 100, before: nil)
        #expect(ownList.map(\.id) == [original.id])
    }

    @Test("a submission handed to a waiting worker is leased in its own transaction, and counts as not queued",
          arguments: StoreBackend.allCases)
    func handoff(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker(cluster: "eu-1")
        let caps = Admission(maxQueuedPerAccount: 1)
        let drafts = (0..<4).map { makeGeneration(account: account.id, at: Fixture.time(Double($0))) }
        let results = try await store.submit(
            [
                SubmissionRequest(drafts[0], handoff: Handoff(worker: worker, at: Fixture.time(5), ttl: 30, start: false)),
                SubmissionRequest(drafts[1]),  // admitted: the one before it is not queued
                SubmissionRequest(drafts[2], handoff: Handoff(worker: worker, at: Fixture.time(5), ttl: 30, start: false)),  // over the cap
            ], admission: caps)
        let handed = try results[0].get()
        #expect(handed.created)
        #expect(handed.generation.state == .running)
        #expect(handed.generation.attempts == 1)
        let lease = try #require(handed.generation.lease)
        #expect(lease.workerID == worker.id)
        #expect(lease.cluster == "eu-1")
        #expect(lease.leasedAt == Fixture.time(5))
        #expect(lease.expiresAt == Fixture.time(35))
        #expect(lease.startedAt == nil)
        #expect(try await store.fetch(drafts[0].id) == handed.generation, "what submit returns is what it stored")
        #expect(try await store.eventKinds(of: drafts[0].id) == [.queued, .leased])
        #expect(try results[1].get().generation.state == .queued)
        if case .failure(let error) = results[2] {
            #expect(error.code == .rateLimited, "a refused request ignores its handoff")
        } else {
            Issue.record("the item past the account's cap was admitted")
        }
        #expect(try await store.generation(drafts[2].id) == nil)
        #expect(try await store.runningGenerations().map(\.id) == [drafts[0].id])

        // Started as it is leased, for a worker that runs it at once.
        let started = try await store.submit(
            [SubmissionRequest(drafts[3], handoff: Handoff(worker: worker, at: Fixture.time(6), ttl: 30, start: true))],
            admission: Admission())[0].get()
        #expect(started.generation.lease?.startedAt == Fixture.time(6))
        #expect(started.generation.startedAt == Fixture.time(6))
        #expect(try await store.eventKinds(of: drafts[3].id) == [.queued, .started])

        // A replay is the earlier generation, untouched by the handoff it came with.
        let key = IdempotencyClaim(key: "k/1", requestHash: "a")
        let first = try await store.submit(makeGeneration(account: account.id, at: Fixture.time(7)), admission: Admission(), idempotency: key)
        let replay = try await store.submit(
            [SubmissionRequest(makeGeneration(account: account.id, at: Fixture.time(8)), idempotency: key,
                handoff: Handoff(worker: worker, at: Fixture.time(8), ttl: 30, start: false))], admission: Admission())
        #expect(try !replay[0].get().created)
        #expect(try replay[0].get().generation == first.generation)
        #expect(try await store.fetch(first.generation.id).state == .queued)
    }

    @Test("a batch: each item admitted or refused on its own, in order, the caps counting the ones before it",
          arguments: StoreBackend.allCases)
    func batch(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let caps = Admission(maxQueuedPerAccount: 3)
        let earlier = try await store.submit(
            makeGeneration(account: account.id, at: Fixture.time(0)), admission: caps,
            idempotency: IdempotencyClaim(key: "k/0", requestHash: "a"))

        let drafts = (1...5).map { makeGeneration(account: account.id, at: Fixture.time(Double($0))) }
        let results = try await store.submit(
            [
                SubmissionRequest(drafts[0], idempotency: IdempotencyClaim(key: "k/0", requestHash: "a")),  // a replay
                SubmissionRequest(drafts[1], idempotency: IdempotencyClaim(key: "k/0", requestHash: "b")),  // a conflict
                SubmissionRequest(drafts[2], idempotency: IdempotencyClaim(key: "k/2", requestHash: "c")),
                SubmissionRequest(drafts[3]),
                SubmissionRequest(drafts[4]),  // the fourth queued: over the cap
            ], admission: caps)
        #expect(results.count == 5)
        let replay = try results[0].get()
        #expect(!replay.created)
        #expect(replay.generation.id == earlier.generation.id)
        #expect(throws: KilnError.self) { try results[1].get() }
        if case .failure(let error) = results[1] { #expect(error.code == .conflict) }
        let third = try results[2].get()
        let fourth = try results[3].get()
        #expect(third.created && fourth.created)
        #expect(third.generation.sequence > earlier.generation.sequence)
        #expect(fourth.generation.sequence > third.generation.sequence, "sequences follow the order sent")
        if case .failure(let error) = results[4] {
            #expect(error.code == .rateLimited)
        } else {
            Issue.record("the item past the account's cap was admitted")
        }
        let stored = try await store.generations(of: account.id, state: nil, limit: 100, before: nil)
        #expect(stored.map(\.id) == [fourth.generation.id, third.generation.id, earlier.generation.id], "refused items store nothing")
        let events = try await store.allEvents(of: third.generation.id)
        #expect(events.map(\.kind) == [.queued])

        // The same key again within one batch finds the item stored before it in that batch.
        let twice = makeGeneration(account: account.id, at: Fixture.time(9))
        let again = try await store.submit(
            [
                SubmissionRequest(twice, idempotency: IdempotencyClaim(key: "k/9", requestHash: "d")),
                SubmissionRequest(makeGeneration(account: account.id, at: Fixture.time(9)), idempotency: IdempotencyClaim(key: "k/9", requestHash: "d")),
            ], admission: Admission())
        #expect(try again[0].get().created)
        #expect(try again[1].get().generation.id == twice.id)
        #expect(try !again[1].get().created)

        // A batch of several accounts is refused whole.
        let other = try await store.seedAccount(name: "Other")
        let mixed = [makeGeneration(account: account.id, at: Fixture.time(10)), makeGeneration(account: other.id, at: Fixture.time(10))]
        await expectError(.invalidRequest) { _ = try await store.submit(mixed.map { SubmissionRequest($0) }, admission: Admission()) }
        let mixedStored = try await store.generation(mixed[0].id)
        #expect(mixedStored == nil)
    }

    @Test("admission: the per-account queued cap refuses, stores nothing, and frees up on lease",
          arguments: StoreBackend.allCases)
    func admissionPerAccount(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let neighbour = try await store.seedAccount(name: "Neighbour")
        let worker = try await store.seedWorker()
        let caps = Admission(maxQueuedPerAccount: 2)

        let first = try await store.submit(makeGeneration(account: account.id, at: Fixture.time(0)), admission: caps, idempotency: nil)
        _ = try await store.submit(makeGeneration(account: account.id, at: Fixture.time(1)), admission: caps, idempotency: nil)

        let third = makeGeneration(account: account.id, at: Fixture.time(2))
        await expectError(.rateLimited) { try await store.submit(third, admission: caps, idempotency: nil) }
        let stored = try await store.generations(of: account.id, state: nil, limit: 100, before: nil)
        #expect(stored.count == 2, "a refused submission stores nothing")
        let thirdStored = try await store.generation(third.id)
        #expect(thirdStored == nil)

        // The cap counts this account only.
        let theirs = try await store.submit(makeGeneration(account: neighbour.id, at: Fixture.time(3)), admission: caps, idempotency: nil)
        #expect(theirs.created)

        // A leased generation is no longer queued, so it frees a place.
        _ = try await store.leaseQueued(first.generation, to: worker, at: Fixture.time(4))
        let admitted = try await store.submit(third, admission: caps, idempotency: nil)
        #expect(admitted.created)
        #expect(admitted.generation.state == .queued)
        let queued = try await store.generations(of: account.id, state: .queued, limit: 100, before: nil)
        #expect(queued.count == 2)
    }

    @Test("admission: the tier queued cap counts every account of the tier", arguments: StoreBackend.allCases)
    func admissionPerTier(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let alice = try await store.seedAccount(name: "Alice", tier: "free")
        let bob = try await store.seedAccount(name: "Bob", tier: "free")
        let carol = try await store.seedAccount(name: "Carol", tier: "enterprise")
        let worker = try await store.seedWorker()
        let caps = Admission(maxQueuedInTier: 2)

        let aliceFirst = try await store.submit(
            makeGeneration(account: alice.id, tier: "free", at: Fixture.time(0)), admission: caps, idempotency: nil)
        _ = try await store.submit(makeGeneration(account: bob.id, tier: "free", at: Fixture.time(1)), admission: caps, idempotency: nil)

        let bobSecond = makeGeneration(account: bob.id, tier: "free", at: Fixture.time(2))
        await expectError(.rateLimited) { try await store.submit(bobSecond, admission: caps, idempotency: nil) }
        let bobs = try await store.generations(of: bob.id, state: nil, limit: 100, before: nil)
        #expect(bobs.count == 1, "a refused submission stores nothing")
        let bobSecondStored = try await store.generation(bobSecond.id)
        #expect(bobSecondStored == nil)

        // Another tier has its own count.
        let enterprise = try await store.submit(
            makeGeneration(account: carol.id, tier: "enterprise", at: Fixture.time(3)), admission: caps, idempotency: nil)
        #expect(enterprise.created)

        _ = try await store.leaseQueued(aliceFirst.generation, to: worker, at: Fixture.time(4))
        let admitted = try await store.submit(bobSecond, admission: caps, idempotency: nil)
        #expect(admitted.created)
    }

    @Test("admission: the queued counts follow every way a generation leaves the queue or returns to it",
          arguments: StoreBackend.allCases)
    func admissionCountsFollowTransitions(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let alice = try await store.seedAccount(name: "Alice", tier: "free")
        let bob = try await store.seedAccount(name: "Bob", tier: "free")
        let worker = try await store.seedWorker()
        let perAccount = Admission(maxQueuedPerAccount: 1)
        let perTier = Admission(maxQueuedInTier: 2)
        var clock = 0.0
        func draft(_ account: Account) -> Generation {
            clock += 1
            return makeGeneration(account: account.id, tier: "free", at: Fixture.time(clock))
        }
        /// Whether one more of `account`'s generations is admitted under `admission` (it stays queued).
        func admits(_ account: Account, _ admission: Admission) async throws -> Generation? {
            do {
                return try await store.submit(draft(account), admission: admission, idempotency: nil).generation
            } catch let error as KilnError where error.code == .rateLimited {
                return nil
            }
        }

        let first = try #require(try await admits(alice, perAccount))
        #expect(try await admits(alice, perAccount) == nil, "one queued: Alice is at her cap")
        // Canceled while queued: her place is free.
        _ = try await store.cancel(first.id, at: Fixture.time(clock))
        let second = try #require(try await admits(alice, perAccount))
        // Leased: free again.
        let leased = try await store.leaseQueued(second, to: worker, at: Fixture.time(clock))
        let third = try #require(try await admits(alice, perAccount))
        // Its lease expires: it is queued again beside the third, so she is over her cap.
        let expired = try await store.expireLeases(at: Fixture.time(clock + Fixture.ttl + 1))
        #expect(expired.map(\.id) == [leased.id])
        #expect(try await store.fetch(leased.id).state == .queued)
        #expect(try await admits(alice, perAccount) == nil, "a requeued generation counts again")
        // Both leased, then handed back by a drain: queued again, both of them.
        let again = try await store.leaseQueued(try await store.fetch(leased.id), to: worker, at: Fixture.time(clock + 40))
        _ = try await store.leaseQueued(third, to: worker, at: Fixture.time(clock + 40))
        let fourth = try #require(try await admits(alice, perAccount))
        _ = try await store.cancel(fourth.id, at: Fixture.time(clock + 41))
        let released = try await store.releaseLeases(of: worker.id, reason: "drain", at: Fixture.time(clock + 42))
        #expect(Set(released.map(\.id)) == [again.id, third.id])
        #expect(try await admits(alice, perAccount) == nil, "released generations count again")

        // The tier counts both accounts: Alice's two queued fill it; Bob is refused until one is leased.
        #expect(try await admits(bob, perTier) == nil)
        _ = try await store.leaseQueued(try await store.fetch(third.id), to: worker, at: Fixture.time(clock + 43))
        let bobs = try #require(try await admits(bob, perTier))
        #expect(try await admits(bob, perTier) == nil)
        // Handed to a waiting worker in its own commit, a generation never counts as queued.
        let handed = try await store.submit(
            [SubmissionRequest(draft(bob), handoff: Handoff(worker: worker, at: Fixture.time(clock), ttl: 30, start: true))],
            admission: Admission())
        #expect(try handed[0].get().generation.state == .running)
        _ = try await store.cancel(bobs.id, at: Fixture.time(clock + 44))
        #expect(try await admits(bob, perTier) != nil, "the handed-off generation took no place in the tier")
    }

    @Test("listing: newest first, filtered by state, paged by sequence, one account only", arguments: StoreBackend.allCases)
    func listing(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let other = try await store.seedAccount(name: "Other")
        let worker = try await store.seedWorker()

        var mine: [Generation] = []
        var theirs: [Generation] = []
        for i in 0..<5 {
            mine.append(try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(Double(2 * i)))))
            theirs.append(try await store.submitQueued(makeGeneration(account: other.id, at: Fixture.time(Double(2 * i + 1)))))
        }
        _ = try await store.leaseQueued(mine[1], to: worker, at: Fixture.time(20))
        _ = try await store.cancel(mine[3].id, at: Fixture.time(21))

        let all = try await store.generations(of: account.id, state: nil, limit: 100, before: nil)
        #expect(all.map(\.id) == mine.reversed().map(\.id))
        let onlyMine = all.allSatisfy { $0.accountID == account.id }
        #expect(onlyMine, "an account's listing never shows another account's generations")

        let page1 = try await store.generations(of: account.id, state: nil, limit: 2, before: nil)
        #expect(page1.map(\.id) == [mine[4].id, mine[3].id])
        let page2 = try await store.generations(of: account.id, state: nil, limit: 2, before: try #require(page1.last).sequence)
        #expect(page2.map(\.id) == [mine[2].id, mine[1].id])
        let page3 = try await store.generations(of: account.id, state: nil, limit: 2, before: try #require(page2.last).sequence)
        #expect(page3.map(\.id) == [mine[0].id])
        let page4 = try await store.generations(of: account.id, state: nil, limit: 2, before: try #require(page3.last).sequence)
        #expect(page4.isEmpty)

        let queued = try await store.generations(of: account.id, state: .queued, limit: 100, before: nil)
        #expect(queued.map(\.id) == [mine[4].id, mine[2].id, mine[0].id])
        let onlyQueued = queued.allSatisfy { $0.state == .queued }
        #expect(onlyQueued)
        let running = try await store.generations(of: account.id, state: .running, limit: 100, before: nil)
        #expect(running.map(\.id) == [mine[1].id])
        let canceled = try await store.generations(of: account.id, state: .canceled, limit: 100, before: nil)
        #expect(canceled.map(\.id) == [mine[3].id])
        let succeeded = try await store.generations(of: account.id, state: .succeeded, limit: 100, before: nil)
        #expect(succeeded.isEmpty)

        let olderQueued = try await store.generations(of: account.id, state: .queued, limit: 100, before: mine[2].sequence)
        #expect(olderQueued.map(\.id) == [mine[0].id])

        let otherAll = try await store.generations(of: other.id, state: nil, limit: 100, before: nil)
        #expect(otherAll.map(\.id) == theirs.reversed().map(\.id))
        let stranger = try await store.generations(of: AccountID.random(), state: nil, limit: 100, before: nil)
        #expect(stranger.isEmpty)
    }

    @Test("cancel: queued or running becomes canceled; an ended one conflicts; unknown is not found",
          arguments: StoreBackend.allCases)
    func cancel(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()

        // Queued.
        let queued = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(0)))
        let canceledQueued = try await store.cancel(queued.id, at: Fixture.time(5))
        #expect(canceledQueued.state == .canceled)
        #expect(canceledQueued.completedAt == Fixture.time(5))
        let storedQueued = try await store.fetch(queued.id)
        #expect(storedQueued == canceledQueued)
        let queuedKinds = try await store.eventKinds(of: queued.id)
        let expectedQueuedKinds: [GenerationEvent.Kind] = [.queued, .canceled]
        #expect(queuedKinds == expectedQueuedKinds)
        let stillQueued = try await store.queuedGenerations()
        #expect(!stillQueued.map(\.id).contains(queued.id))

        // Running.
        let running = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(1)))
        let leased = try await store.leaseQueued(running, to: worker, at: Fixture.time(10))
        let token = try #require(leased.lease?.token)
        let canceledRunning = try await store.cancel(running.id, at: Fixture.time(15))
        #expect(canceledRunning.state == .canceled)
        #expect(canceledRunning.completedAt == Fixture.time(15))
        let storedRunning = try await store.fetch(running.id)
        #expect(storedRunning.state == .canceled)
        #expect(storedRunning.completedAt == Fixture.time(15))
        let stillRunning = try await store.runningGenerations()
        #expect(!stillRunning.map(\.id).contains(running.id))
        let expired = try await store.expireLeases(at: Fixture.time(10_000))
        #expect(!expired.map(\.id).contains(running.id), "a canceled generation's old lease never requeues it")

        // Its worker can no longer complete it.
        await #expect(throws: KilnError.self) {
            try await store.complete(running.id, worker: worker.id, token: token, outputs: [], at: Fixture.time(16))
        }
        let afterComplete = try await store.fetch(running.id)
        #expect(afterComplete.state == .canceled)
        #expect(afterComplete.completedAt == Fixture.time(15))

        // Ended ones conflict and stay as they were.
        await expectError(.conflict) { try await store.cancel(queued.id, at: Fixture.time(20)) }
        let recanceled = try await store.fetch(queued.id)
        #expect(recanceled == canceledQueued)

        let finished = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(2)))
        let finishedLease = try await store.leaseQueued(finished, to: worker, at: Fixture.time(30))
        let done = try await store.complete(
            finished.id, worker: worker.id, token: try #require(finishedLease.lease?.token), outputs: [], at: Fixture.time(31))
        #expect(done.state == .succeeded)
        await expectError(.conflict) { try await store.cancel(finished.id, at: Fixture.time(32)) }
        let stillSucceeded = try await store.fetch(finished.id)
        #expect(stillSucceeded == done)

        await expectError(.notFound) { try await store.cancel(GenerationID.random(), at: Fixture.time(40)) }
    }

    @Test("queue views: queued oldest first, running, an account's oldest queued", arguments: StoreBackend.allCases)
    func queueViews(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let alice = try await store.seedAccount(name: "Alice")
        let bob = try await store.seedAccount(name: "Bob")
        let idle = try await store.seedAccount(name: "Idle")
        let worker = try await store.seedWorker()

        let alice1 = try await store.submitQueued(makeGeneration(account: alice.id, at: Fixture.time(0)))
        let bob1 = try await store.submitQueued(makeGeneration(account: bob.id, at: Fixture.time(1)))
        let alice2 = try await store.submitQueued(makeGeneration(account: alice.id, at: Fixture.time(2)))

        let oldest = try await store.oldestQueuedGeneration(of: alice.id)
        #expect(oldest?.id == alice1.id)
        let none = try await store.oldestQueuedGeneration(of: idle.id)
        #expect(none == nil)
        let allQueued = try await store.queuedGenerations()
        #expect(allQueued.map(\.id) == [alice1.id, bob1.id, alice2.id])
        let noneRunning = try await store.runningGenerations()
        #expect(noneRunning.isEmpty)

        _ = try await store.leaseQueued(alice1, to: worker, at: Fixture.time(10), ttl: 30)
        let oldestWhileLeased = try await store.oldestQueuedGeneration(of: alice.id)
        #expect(oldestWhileLeased?.id == alice2.id)
        let queuedWhileLeased = try await store.queuedGenerations()
        #expect(queuedWhileLeased.map(\.id) == [bob1.id, alice2.id])
        let runningWhileLeased = try await store.runningGenerations()
        #expect(runningWhileLeased.map(\.id) == [alice1.id])

        // A requeued generation keeps its place: it has waited longest.
        _ = try await store.expireLeases(at: Fixture.time(41))
        let oldestAfterRequeue = try await store.oldestQueuedGeneration(of: alice.id)
        #expect(oldestAfterRequeue?.id == alice1.id)
        #expect(oldestAfterRequeue?.queuedAt == Fixture.time(0))
        let queuedAfterRequeue = try await store.queuedGenerations()
        #expect(queuedAfterRequeue.map(\.id) == [alice1.id, bob1.id, alice2.id])
        let runningAfterRequeue = try await store.runningGenerations()
        #expect(runningAfterRequeue.isEmpty)
    }
}
