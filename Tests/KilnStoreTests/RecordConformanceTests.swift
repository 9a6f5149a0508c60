import Foundation
import KilnCore
import KilnStore
import Testing

/// Conformance of ``JobStore`` backends: accounts, keys, models, files and workers.
@Suite("JobStore conformance: records")
struct RecordConformanceTests {
    @Test("accounts: create, fetch, list, update tier; unknown account is not found", arguments: StoreBackend.allCases)
    func accounts(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let first = makeAccount(name: "First", tier: "free", at: Fixture.time(0))
        let second = makeAccount(name: "Second", tier: "enterprise", at: Fixture.time(10))
        try await store.createAccount(first)
        try await store.createAccount(second)

        let fetched = try await store.account(first.id)
        #expect(fetched == first)
        let missing = try await store.account(AccountID.random())
        #expect(missing == nil)

        let listed = try await store.accounts()
        let expectedAccounts: Set<Account> = [first, second]
        #expect(listed.count == 2)
        #expect(Set(listed) == expectedAccounts)

        let updated = try await store.updateAccountTier(first.id, tier: "api")
        var expected = first
        expected.tier = "api"
        #expect(updated == expected)
        let refetched = try await store.account(first.id)
        #expect(refetched == expected)
        let untouched = try await store.account(second.id)
        #expect(untouched == second)

        await expectError(.notFound) { try await store.updateAccountTier(AccountID.random(), tier: "api") }
        let afterUnknown = try await store.accounts()
        #expect(afterUnknown.count == 2)
    }

    @Test("keys: create, look up by secret hash, revoke; unknown key is not found", arguments: StoreBackend.allCases)
    func keys(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let user = makeKey(scope: .user, account: account.id, at: Fixture.time(0))
        let admin = makeKey(scope: .admin, account: nil, at: Fixture.time(1))
        try await store.createKey(user)
        try await store.createKey(admin)

        let foundUser = try await store.key(secretHash: user.secretHash)
        #expect(foundUser == user)
        #expect(foundUser?.revokedAt == nil)
        let foundAdmin = try await store.key(secretHash: admin.secretHash)
        #expect(foundAdmin == admin)
        #expect(foundAdmin?.accountID == nil)
        let unknown = try await store.key(secretHash: randomHex())
        #expect(unknown == nil)

        try await store.revokeKey(user.id, at: Fixture.time(60))
        let revoked = try await store.key(secretHash: user.secretHash)
        var expected = user
        expected.revokedAt = Fixture.time(60)
        #expect(revoked == expected, "a revoked key is still found, with its revocation time")
        let otherKey = try await store.key(secretHash: admin.secretHash)
        #expect(otherKey?.revokedAt == nil, "revoking one key leaves the others alone")

        await expectError(.notFound) { try await store.revokeKey(KeyID.random(), at: Fixture.time(61)) }
    }

    @Test("models: create, fetch, list sorted by name; a taken name is a conflict", arguments: StoreBackend.allCases)
    func models(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let schema: JSONValue = .object([
            "type": .string("object"),
            "required": .array([.string("prompt")]),
            "properties": .object(["prompt": .object(["type": .string("string"), "maxLength": .number(2_000)])]),
        ])
        let sdxl = ModelRecord(name: "sdxl", description: "Stable Diffusion XL", inputSchema: schema, createdAt: Fixture.time(0))
        let flux = ModelRecord(name: "flux", description: "FLUX.1", createdAt: Fixture.time(5))
        try await store.createModel(sdxl)
        try await store.createModel(flux)

        let fetched = try await store.model(named: "sdxl")
        #expect(fetched == sdxl)
        #expect(fetched?.inputSchema == schema)
        let missing = try await store.model(named: "nope")
        #expect(missing == nil)

        let listed = try await store.models()
        let expectedNames = ["flux", "sdxl"]
        #expect(listed.map(\.name) == expectedNames)
        #expect(listed.first == flux)

        let impostor = ModelRecord(name: "flux", description: "someone else's flux", createdAt: Fixture.time(99))
        await expectError(.conflict) { try await store.createModel(impostor) }
        let original = try await store.model(named: "flux")
        #expect(original == flux, "a refused duplicate leaves the original unchanged")
        let afterDuplicate = try await store.models()
        #expect(afterDuplicate.count == 2)
    }

    @Test("files: create and fetch round trip", arguments: StoreBackend.allCases)
    func files(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        let image = makeFile(account: account.id, contentType: "image/png", size: 123_456, at: Fixture.time(3))
        let audio = makeFile(account: account.id, contentType: "audio/wav", size: 9, at: Fixture.time(4))
        try await store.createFile(image, quota: nil)
        try await store.createFile(audio, quota: nil)

        let fetchedImage = try await store.file(image.id)
        #expect(fetchedImage == image)
        let fetchedAudio = try await store.file(audio.id)
        #expect(fetchedAudio == audio)
        let missing = try await store.file(FileID.random())
        #expect(missing == nil)
    }

    @Test("files: an upload past the account's quota is refused and stores nothing; outputs do not count", arguments: StoreBackend.allCases)
    func fileQuota(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let account = try await store.seedAccount()
        try await store.createFile(makeFile(account: account.id, size: 600), quota: 1_000)
        var output = makeFile(account: account.id, size: 5_000)
        output.kind = .output
        try await store.createFile(output, quota: 1_000)
        #expect(try await store.uploadedBytes(of: account.id) == 600)
        let over = makeFile(account: account.id, size: 401)
        await #expect(throws: KilnError.uploadQuota(held: 600, adding: 401, quota: 1_000)) {
            try await store.createFile(over, quota: 1_000)
        }
        #expect(try await store.file(over.id) == nil)
        try await store.createFile(makeFile(account: account.id, size: 400), quota: 1_000)
        #expect(try await store.uploadedBytes(of: account.id) == 1_000)
    }

    @Test("workers: register, fetch, list, drain, touch; unknown worker is not found", arguments: StoreBackend.allCases)
    func workers(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        let first = makeWorker(cluster: "eu-1", labels: ["gpu": "h200", "zone": "a"], at: Fixture.time(0))
        let second = makeWorker(cluster: "us-2", labels: [:], at: Fixture.time(5))
        try await store.registerWorker(first)
        try await store.registerWorker(second)

        let fetched = try await store.worker(first.id)
        let expectedLabels: [String: String] = ["gpu": "h200", "zone": "a"]
        #expect(fetched == first)
        #expect(fetched?.labels == expectedLabels)
        let missing = try await store.worker(WorkerID.random())
        #expect(missing == nil)

        let listed = try await store.workers()
        let expectedWorkers: Set<WorkerRecord> = [first, second]
        #expect(listed.count == 2)
        #expect(Set(listed) == expectedWorkers)

        let drained = try await store.setWorkerState(first.id, .draining)
        var expectedDrained = first
        expectedDrained.state = .draining
        #expect(drained == expectedDrained)
        let refetched = try await store.worker(first.id)
        #expect(refetched == expectedDrained)

        try await store.touchWorker(second.id, at: Fixture.time(100))
        let touched = try await store.worker(second.id)
        var expectedTouched = second
        expectedTouched.lastSeenAt = Fixture.time(100)
        #expect(touched == expectedTouched)
        let stillDrained = try await store.worker(first.id)
        #expect(stillDrained == expectedDrained, "touching one worker leaves the others alone")

        await expectError(.notFound) { try await store.setWorkerState(WorkerID.random(), .draining) }
    }
}
