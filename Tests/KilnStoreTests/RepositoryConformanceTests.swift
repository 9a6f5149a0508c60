import Foundation
import KilnCore
import KilnStore
import Testing

func makeVersion(model: String = "flux", at: Date = Fixture.epoch) -> ModelVersionRecord {
    ModelVersionRecord(id: Digest(hex: randomHex())!, model: model, manifest: Data(#"{"model":"\#(model)"}"#.utf8), createdAt: at)
}

extension JobStore {
    func seedModel(_ name: String = "flux") async throws {
        try await createModel(ModelRecord(name: name, createdAt: Fixture.epoch))
    }
}

@Suite("JobStore conformance: model repository")
struct RepositoryConformanceTests {
    @Test("versions are immutable: a second create of the same id changes nothing", arguments: StoreBackend.allCases)
    func versions(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        try await store.seedModel()
        let v1 = makeVersion(at: Fixture.time(1))
        #expect(try await store.createVersion(v1))
        var again = v1
        again.manifest = Data(#"{"other":true}"#.utf8)
        again.createdAt = Fixture.time(99)
        #expect(try await store.createVersion(again) == false)
        #expect(try await store.version(v1.id) == v1)
        let v2 = makeVersion(at: Fixture.time(2))
        _ = try await store.createVersion(v2)
        #expect(try await store.versions(of: "flux").map(\.id) == [v2.id, v1.id])
        // A version of an unknown model, or the same id for another model, is refused.
        await expectError(.notFound) { try await store.createVersion(makeVersion(model: "nope")) }
        try await store.seedModel("other")
        var stolen = v1
        stolen.model = "other"
        await expectError(.conflict) { try await store.createVersion(stolen) }
    }

    @Test("promote, split and rollback move the alias and keep its history", arguments: StoreBackend.allCases)
    func aliases(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        try await store.seedModel()
        let v1 = makeVersion(), v2 = makeVersion(), v3 = makeVersion()
        for version in [v1, v2, v3] { _ = try await store.createVersion(version) }

        _ = try await store.moveAlias("production", of: "flux", to: [AliasTarget(version: v1.id)], at: Fixture.time(1))
        _ = try await store.moveAlias("production", of: "flux", to: [AliasTarget(version: v2.id)], at: Fixture.time(2))
        let split = try await store.moveAlias(
            "production", of: "flux", to: [AliasTarget(version: v2.id, weight: 90), AliasTarget(version: v3.id, weight: 10)],
            at: Fixture.time(3))
        #expect(split.targets.count == 2)
        #expect(try await store.alias("production", of: "flux") == split)

        // Rollbacks walk back through promotes and splits: split → v2 → v1, then nothing.
        #expect(try await store.rollbackAlias("production", of: "flux", at: Fixture.time(4)).targets == [AliasTarget(version: v2.id)])
        #expect(try await store.rollbackAlias("production", of: "flux", at: Fixture.time(5)).targets == [AliasTarget(version: v1.id)])
        await expectError(.conflict) { try await store.rollbackAlias("production", of: "flux", at: Fixture.time(6)) }
        #expect(try await store.alias("production", of: "flux")?.targets == [AliasTarget(version: v1.id)])

        let history = try await store.aliasHistory("production", of: "flux")
        #expect(history.map(\.action) == [.promote, .promote, .split, .rollback, .rollback])
        #expect(history.map(\.at) == (1...5).map { Fixture.time(Double($0)) })
        await expectError(.notFound) { try await store.rollbackAlias("canary", of: "flux", at: Fixture.time(7)) }
    }

    @Test("an alias can only point at versions of its own model, with sane weights", arguments: StoreBackend.allCases)
    func aliasValidation(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        try await store.seedModel()
        try await store.seedModel("other")
        let foreign = makeVersion(model: "other")
        _ = try await store.createVersion(foreign)
        await expectError(.invalidInput) {
            try await store.moveAlias("production", of: "flux", to: [AliasTarget(version: foreign.id)], at: Fixture.epoch)
        }
        let own = makeVersion()
        _ = try await store.createVersion(own)
        await expectError(.invalidRequest) {
            try await store.moveAlias("production", of: "flux", to: [AliasTarget(version: own.id, weight: 0)], at: Fixture.epoch)
        }
        #expect(try await store.alias("production", of: "flux") == nil)
        #expect(try await store.aliasHistory("production", of: "flux").isEmpty)
    }

    @Test("a lease resolves the generation's alias and records the version; a pinned version is kept", arguments: StoreBackend.allCases)
    func resolutionAtLease(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        try await store.seedModel()
        let account = try await store.seedAccount()
        let worker = try await store.seedWorker()
        let v1 = makeVersion(), v2 = makeVersion()
        for version in [v1, v2] { _ = try await store.createVersion(version) }
        _ = try await store.moveAlias("production", of: "flux", to: [AliasTarget(version: v1.id)], at: Fixture.epoch)

        var byAlias = makeGeneration(account: account.id, at: Fixture.time(1))
        byAlias.alias = "production"
        var pinned = makeGeneration(account: account.id, at: Fixture.time(1))
        pinned.version = v2.id.description
        let queuedAlias = try await store.submitQueued(byAlias)
        let queuedPinned = try await store.submitQueued(pinned)
        #expect(queuedAlias.version == nil)

        // The alias moves after submission: the lease resolves it as it is then.
        _ = try await store.moveAlias("production", of: "flux", to: [AliasTarget(version: v2.id)], at: Fixture.time(2))
        let leased = try await store.leaseQueued(queuedAlias, to: worker, at: Fixture.time(3), ttl: 30)
        #expect(leased.version == v2.id.description)
        _ = try await store.moveAlias("production", of: "flux", to: [AliasTarget(version: v1.id)], at: Fixture.time(4))
        let leasedPinned = try await store.leaseQueued(queuedPinned, to: worker, at: Fixture.time(5), ttl: 30)
        #expect(leasedPinned.version == v2.id.description)
    }
}

@Suite("Alias resolution")
struct AliasResolutionTests {
    @Test("a split sends each generation to one version, the same one every time, in proportion to the weights")
    func stickyWeightedSplit() {
        let stable = Digest(hex: String(repeating: "a", count: 64))!
        let canary = Digest(hex: String(repeating: "b", count: 64))!
        let alias = AliasRecord(
            model: "m", name: "production", targets: [AliasTarget(version: stable, weight: 90), AliasTarget(version: canary, weight: 10)],
            updatedAt: Fixture.epoch)
        var canaries = 0
        for _ in 0..<5_000 {
            let id = GenerationID.random()
            let first = alias.resolve(for: id)
            #expect(alias.resolve(for: id) == first)
            if first == canary { canaries += 1 }
        }
        // 10% of 5,000 is 500; the bound is six standard deviations (±127).
        #expect((373...627).contains(canaries), "\(canaries) of 5000 went to the canary")
    }
}
