import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import KilnAPI
import KilnCore
import KilnServer
import KilnStore
import Testing

/// Two servers on one store: what one changes, the other's caches learn from the store's change
/// feed, not from the call that made the change.
@Suite("Caches follow the store's change feed")
struct ChangeFeedTests {
    /// Two servers on one store, with one clock.
    private func twoServers() async throws -> (KilnHarness, KilnHarness) {
        let clock = ManualWallClock()
        let first = try await KilnHarness.make(clock: clock)
        return (first, try await KilnHarness.make(data: first.data, clock: clock))
    }

    /// A new admin key made through `server`: its id and secret.
    private func adminKey(through server: KilnHarness) async throws -> (String, String) {
        try await server.withClient { api in
            let created = try await api.call(.post, "/v1/admin/keys", json: #"{"scope":"admin"}"#)
            let key = try created.decode(Components.Schemas.KeyObject.self)
            return (key.id, key.key)
        }
    }

    @Test("a key revoked through one server is refused by a second once it has applied the feed")
    func revokedKeyEverywhere() async throws {
        let (first, second) = try await twoServers()
        let (keyID, secret) = try await adminKey(through: first)
        // The second server has seen the key work, so it holds it in its cache.
        try await second.withClient { (api: KilnClient) async throws -> Void in
            #expect(try await api.call(.get, "/v1/admin/queue", key: secret).status == .ok)
        }
        try await first.withClient { (api: KilnClient) async throws -> Void in
            #expect(try await api.call(.delete, "/v1/admin/keys/\(keyID)").status == .noContent)
            #expect(try await api.call(.get, "/v1/admin/queue", key: secret).status == .unauthorized)
        }
        try await second.withClient { (api: KilnClient) async throws -> Void in
            // Until it reads the feed the second server still trusts its cache: the window the
            // change feed's interval bounds.
            #expect(try await api.call(.get, "/v1/admin/queue", key: secret).status == .ok)
            try await second.server.services.cache.catchUp()
            #expect(try await api.call(.get, "/v1/admin/queue", key: secret).status == .unauthorized)
        }
    }

    @Test("a worker drained through one server gets no work from a second once it has applied the feed")
    func drainedWorkerEverywhere() async throws {
        let (first, second) = try await twoServers()
        let (workerKey, worker) = try await first.withClient { api in
            let key = try await api.workerKey()
            return (key, try await api.register(key))
        }
        try await second.withClient { (api: KilnClient) async throws -> Void in
            #expect(try await api.lease(workerKey, worker: worker) == nil)  // cached, active, nothing queued
        }
        try await first.withClient { (api: KilnClient) async throws -> Void in
            #expect(try await api.call(.post, "/v1/admin/workers/\(worker)/drain").status == .ok)
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            _ = try await api.submit(user)
        }
        try await second.server.services.cache.catchUp()
        // A submission reaches another server's scheduler only through the hand-off of the scale-out
        // work; until then this one rebuilds its queue from the store.
        try await second.server.services.dispatcher.load()
        try await second.withClient { (api: KilnClient) async throws -> Void in
            #expect(try await api.lease(workerKey, worker: worker) == nil, "a draining worker gets nothing")
            let other = try await api.register(workerKey)
            #expect(try await api.lease(workerKey, worker: other) != nil)
        }
    }

    @Test("a server whose unapplied changes were pruned forgets its caches instead of trusting them")
    func prunedChangesForceAReload() async throws {
        let (first, second) = try await twoServers()
        let (keyID, secret) = try await adminKey(through: first)
        try await second.withClient { (api: KilnClient) async throws -> Void in
            #expect(try await api.call(.get, "/v1/admin/queue", key: secret).status == .ok)
        }
        // The key is revoked, and more changes follow; all but the latest are pruned before the
        // second server reads the feed, so the revocation is no longer in it.
        try await first.withClient { (api: KilnClient) async throws -> Void in
            #expect(try await api.call(.delete, "/v1/admin/keys/\(keyID)").status == .noContent)
            let (account, _) = try await api.account(tier: "api")
            #expect(try await api.call(.patch, "/v1/admin/accounts/\(account)", json: #"{"tier":"free"}"#).status == .ok)
        }
        #expect(try await first.server.services.store.pruneChanges(recordedBefore: Date() + 60) >= 1)
        try await second.server.services.cache.catchUp()
        try await second.withClient { (api: KilnClient) async throws -> Void in
            #expect(try await api.call(.get, "/v1/admin/queue", key: secret).status == .unauthorized)
        }
    }
}
