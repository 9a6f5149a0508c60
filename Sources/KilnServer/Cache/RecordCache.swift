import Foundation
import KilnCore
import KilnStore
import Logging
import ServiceLifecycle

/// The records nearly every request reads (keys, workers, accounts, models, aliases, versions),
/// held in memory and kept true by the store's change feed (DESIGN §8: the store is the truth,
/// memory a cache of it).
///
/// A miss reads the store. A change made through any server (a revoked key, a drained worker, a
/// moved alias) is in the feed, and invalidates the record here once this server has applied the
/// feed: at once when the change was made through this server, otherwise within the interval of
/// ``ChangeFeed``. Versions are immutable and never invalidated. Nothing is cached that does not
/// exist, so a record created anywhere is seen at once, with one exception: an alias is remembered
/// missing too, since every submission to a model without versions asks for its `production`
/// alias. Every alias is created by a move, which is in the feed, and the server that moves it
/// applies the feed before it answers.
public final class RecordCache: @unchecked Sendable {
    private let store: any JobStore
    private let lock = NSLock()
    private var keys: [String: APIKeyRecord] = [:]
    private var keyHashes: [KeyID: String] = [:]
    private var workers: [WorkerID: WorkerRecord] = [:]
    private var accounts: [AccountID: Account] = [:]
    private var models: [String: ModelRecord] = [:]
    private var modelHasVersions: [String: Bool] = [:]
    /// By `model/alias`: the alias, or nil for one found missing.
    private var aliases: [String: AliasLookup] = [:]
    private var versions: [Digest: ModelVersionRecord] = [:]
    /// Bumped by every invalidation: a read that began before one may be stale and is not kept.
    private var epoch = 0
    /// The last change of the feed applied here.
    private var applied: Int64

    /// A cache that follows the feed from its latest change (it holds nothing older).
    public static func following(_ store: any JobStore) async throws -> RecordCache {
        RecordCache(store: store, applied: try await store.latestChange())
    }

    private init(store: any JobStore, applied: Int64) {
        self.store = store
        self.applied = applied
    }

    // MARK: Reads

    func key(secretHash: String) async throws -> APIKeyRecord? {
        try await lookup({ $0.keys[secretHash] }, load: { try await $0.key(secretHash: secretHash) }) { cache, key in
            cache.keys[secretHash] = key
            cache.keyHashes[key.id] = secretHash
        }
    }

    func worker(_ id: WorkerID) async throws -> WorkerRecord? {
        try await lookup({ $0.workers[id] }, load: { try await $0.worker(id) }) { $0.workers[id] = $1 }
    }

    func account(_ id: AccountID) async throws -> Account? {
        try await lookup({ $0.accounts[id] }, load: { try await $0.account(id) }) { $0.accounts[id] = $1 }
    }

    func model(named name: String) async throws -> ModelRecord? {
        try await lookup({ $0.models[name] }, load: { try await $0.model(named: name) }) { $0.models[name] = $1 }
    }

    func hasVersions(_ model: String) async throws -> Bool {
        try await lookup({ $0.modelHasVersions[model] }, load: { !(try await $0.versions(of: model)).isEmpty }) {
            $0.modelHasVersions[model] = $1
        } ?? false
    }

    func alias(_ name: String, of model: String) async throws -> AliasRecord? {
        let key = "\(model)/\(name)"
        let found = try await lookup({ $0.aliases[key] }, load: { AliasLookup(record: try await $0.alias(name, of: model)) }) {
            $0.aliases[key] = $1
        }
        return found?.record
    }

    /// What a lookup of an alias found: the alias, or that it does not exist.
    private struct AliasLookup {
        var record: AliasRecord?
    }

    func version(_ id: Digest) async throws -> ModelVersionRecord? {
        try await lookup({ $0.versions[id] }, load: { try await $0.version(id) }) { $0.versions[id] = $1 }
    }

    /// The worker was seen at `at`; the cached record says so, for the next throttled write.
    func touched(_ id: WorkerID, at: Date) {
        lock.withLock { workers[id]?.lastSeenAt = at }
    }

    // MARK: The feed

    /// Applies every change the store has after the last one applied. When changes this cache had
    /// not applied were pruned meanwhile (a gap in the feed), it forgets everything and follows on
    /// from there: a reload from the store costs only misses.
    public func catchUp() async throws {
        while true {
            let after = lock.withLock { applied }
            let changes = try await store.changes(after: after, limit: 1_000)
            // Pruning keeps the latest change, so changes missed are always followed by one read.
            if let first = changes.first, first.sequence > after + 1 {
                forgetAll(through: first.sequence - 1)
            }
            apply(changes)
            if changes.count < 1_000 { return }
        }
    }

    /// Drops every record that changes can make stale, as if the feed had said each changed.
    private func forgetAll(through sequence: Int64) {
        lock.withLock {
            keys.removeAll()
            keyHashes.removeAll()
            workers.removeAll()
            accounts.removeAll()
            models.removeAll()
            modelHasVersions.removeAll()
            aliases.removeAll()
            applied = max(applied, sequence)
            epoch += 1
        }
    }

    private func apply(_ changes: [StoreChange]) {
        guard !changes.isEmpty else { return }
        lock.withLock {
            for change in changes where change.sequence > applied {
                switch change.record {
                case .key:
                    let id = KeyID(unchecked: change.key)
                    if let hash = keyHashes.removeValue(forKey: id) { keys[hash] = nil }
                case .account: accounts[AccountID(unchecked: change.key)] = nil
                case .worker: workers[WorkerID(unchecked: change.key)] = nil
                case .model:
                    models[change.key] = nil
                    modelHasVersions[change.key] = nil
                case .alias: aliases[change.key] = nil
                }
                applied = change.sequence
            }
            epoch += 1
        }
    }

    /// A cached value, or the store's, kept unless an invalidation came while it was read.
    private func lookup<Value>(
        _ cached: (RecordCache) -> Value?, load: (any JobStore) async throws -> Value?, keep: (RecordCache, Value) -> Void
    ) async throws -> Value? {
        let (hit, started) = lock.withLock { (cached(self), epoch) }
        if let hit { return hit }
        guard let value = try await load(store) else { return nil }
        lock.withLock {
            if epoch == started { keep(self, value) }
        }
        return value
    }
}

/// Follows the store's change feed into a ``RecordCache``, every `interval`, and prunes changes
/// older than `retention` once a minute: a server that falls further behind than that reloads its
/// caches instead (see ``RecordCache/catchUp()``).
public struct ChangeFeed: Service {
    let cache: RecordCache
    let store: any JobStore
    let interval: Duration
    let retention: TimeInterval
    let logger: Logger

    public init(
        cache: RecordCache, store: any JobStore, interval: Duration = .milliseconds(250),
        retention: TimeInterval = 3600, logger: Logger
    ) {
        self.cache = cache
        self.store = store
        self.interval = interval
        self.retention = retention
        self.logger = logger
    }

    public func run() async throws {
        var lastPrune = ContinuousClock.now
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                try await cache.catchUp()
                if ContinuousClock.now - lastPrune > .seconds(60) {
                    lastPrune = .now
                    // The store stamps changes with its own real time, so the cutoff is real time too.
                    let pruned = try await store.pruneChanges(recordedBefore: Date() - retention)
                    if pruned > 0 { logger.debug("pruned the change feed", metadata: ["changes": "\(pruned)"]) }
                }
            } catch {
                logger.warning("could not read the change feed: \(error)")
            }
            try? await Task.sleep(for: interval)
        }
    }
}
