import Foundation
import KilnCore
import KilnStore
import Testing

/// Conformance of ``JobStore`` backends: the change feed servers follow to keep their caches true.
@Suite("JobStore conformance: change feed")
struct ChangeFeedConformanceTests {
    @Test("each change to a cached record appears in the feed, in order, after the sequence asked for", arguments: StoreBackend.allCases)
    func feed(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        #expect(try await store.latestChange() == 0)
        let account = makeAccount()
        try await store.createAccount(account)
        let key = makeKey(account: account.id)
        try await store.createKey(key)
        let worker = makeWorker()
        try await store.registerWorker(worker)
        try await store.createModel(ModelRecord(name: "video", createdAt: Fixture.epoch))
        // Creations are not changes: nothing could have cached what did not exist.
        #expect(try await store.changes(after: 0, limit: 100).isEmpty)

        _ = try await store.updateAccountTier(account.id, tier: "api")
        try await store.revokeKey(key.id, at: Fixture.time(1))
        _ = try await store.setWorkerState(worker.id, .draining)
        let version = makeVersion(model: "video")
        #expect(try await store.createVersion(version))
        _ = try await store.moveAlias("production", of: "video", to: [AliasTarget(version: version.id, weight: 100)], at: Fixture.time(2))

        let changes = try await store.changes(after: 0, limit: 100)
        #expect(changes.map(\.record) == [.account, .key, .worker, .model, .alias])
        #expect(changes.map(\.key) == [account.id.rawValue, key.id.rawValue, worker.id.rawValue, "video", "video/production"])
        #expect(changes.map(\.sequence) == changes.map(\.sequence).sorted())
        #expect(try await store.latestChange() == changes.last?.sequence)
        #expect(try await store.changes(after: changes[2].sequence, limit: 100) == Array(changes.dropFirst(3)))
        #expect(try await store.changes(after: 0, limit: 2) == Array(changes.prefix(2)))
        // A change refused changes nothing, the feed included.
        await #expect(throws: KilnError.self) { try await store.revokeKey(KeyID.random(), at: Fixture.time(3)) }
        #expect(try await store.changes(after: 0, limit: 100) == changes)
    }

    @Test("pruning deletes the changes recorded before the cutoff, never the latest one", arguments: StoreBackend.allCases)
    func pruning(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = makeAccount()
        try await store.createAccount(account)
        for tier in ["api", "free", "light"] { _ = try await store.updateAccountTier(account.id, tier: tier) }
        let all = try await store.changes(after: 0, limit: 100)
        #expect(all.count == 3)
        #expect(try await store.pruneChanges(recordedBefore: Date() - 3600) == 0, "nothing is an hour old")
        // Everything is older than a cutoff in the future, but the latest change stays.
        #expect(try await store.pruneChanges(recordedBefore: Date() + 60) == 2)
        #expect(try await store.changes(after: 0, limit: 100) == [all[2]])
        #expect(try await store.latestChange() == all[2].sequence)
        #expect(try await store.pruneChanges(recordedBefore: Date() + 60) == 0)
    }
}
