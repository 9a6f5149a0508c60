import Foundation
import KilnCore
import KilnPostgres
import KilnStore
import Testing

// MARK: - Backends

/// The backends every conformance test runs against. PostgreSQL runs where it is installed (see
/// ``PostgresTestCluster``), and always under `KILN_REQUIRE_POSTGRES=1`.
enum StoreBackend: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case sqlite
    case postgres

    static var allCases: [StoreBackend] { PostgresTestCluster.enabled ? [.sqlite, .postgres] : [.sqlite] }

    var testDescription: String { rawValue }

    /// A fresh, empty store that no other test shares.
    func make() async throws -> any JobStore {
        switch self {
        case .sqlite:
            return try SQLiteJobStore(path: temporaryDatabasePath())
        case .postgres:
            return try await PostgresJobStore.connect(url: PostgresTestCluster.freshDatabase(), maximumConnections: 4)
        }
    }
}

/// A path for a new SQLite database, in a directory of its own under the temporary directory.
func temporaryDatabasePath() throws -> String {
    let directory = FileManager.default.temporaryDirectory
        .appendingPathComponent("kiln-store-tests-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    return directory.appendingPathComponent("kiln.sqlite").path
}

// MARK: - Time

/// Fixed instants: tests advance time by hand and never sleep.
enum Fixture {
    static let epoch = Date(timeIntervalSince1970: 1_800_000_000)

    /// `seconds` after ``epoch``.
    static func time(_ seconds: Double) -> Date { epoch.addingTimeInterval(seconds) }

    /// The lease time-to-live the tests use unless they say otherwise.
    static let ttl: Double = 30
}

// MARK: - Records

func makeAccount(name: String = "Acme", tier: String = "free", at: Date = Fixture.epoch) -> Account {
    Account(id: .random(), name: name, tier: tier, createdAt: at)
}

func makeKey(
    scope: KeyScope = .user, account: AccountID?, secretHash: String = randomHex(), at: Date = Fixture.epoch
) -> APIKeyRecord {
    APIKeyRecord(id: .random(), scope: scope, accountID: account, secretHash: secretHash, createdAt: at)
}

func makeWorker(cluster: String = "eu-1", labels: [String: String] = ["gpu": "h200"], at: Date = Fixture.epoch) -> WorkerRecord {
    WorkerRecord(
        id: .random(), cluster: cluster, accelerator: "h200", gpus: 8, labels: labels, state: .active, registeredAt: at,
        lastSeenAt: at)
}

func makeFile(account: AccountID, contentType: String = "image/png", size: Int64 = 1_024, at: Date = Fixture.epoch) -> FileRecord {
    let id = FileID.random()
    return FileRecord(
        id: id, accountID: account, size: size, sha256: randomHex(), contentType: contentType, objectKey: "files/\(id.rawValue)",
        createdAt: at)
}

func makeGeneration(
    account: AccountID, tier: String = "free", model: String = "flux", maxAttempts: Int = 3,
    input: [String: JSONValue] = ["prompt": .string("a kiln at dusk")], inputFiles: [String: FileID] = [:], at: Date
) -> Generation {
    Generation(
        id: .random(), accountID: account, model: model, tier: tier, input: input, inputFiles: inputFiles,
        maxAttempts: maxAttempts, createdAt: at)
}

/// 64 hex digits, as a SHA-256 is written.
func randomHex() -> String {
    let digits = Array("0123456789abcdef")
    return String((0..<64).map { _ in digits[Int.random(in: 0..<16)] })
}

// MARK: - Store helpers

extension JobStore {
    /// Creates and returns an account.
    func seedAccount(name: String = "Acme", tier: String = "free", at: Date = Fixture.epoch) async throws -> Account {
        let account = makeAccount(name: name, tier: tier, at: at)
        try await createAccount(account)
        return account
    }

    /// Registers and returns a worker.
    func seedWorker(cluster: String = "eu-1", at: Date = Fixture.epoch) async throws -> WorkerRecord {
        let worker = makeWorker(cluster: cluster, at: at)
        try await registerWorker(worker)
        return worker
    }

    /// Submits without caps or idempotency key; returns the stored generation, with its sequence.
    func submitQueued(_ generation: Generation, sourceLocation: SourceLocation = #_sourceLocation) async throws -> Generation {
        let submission = try await submit(generation, admission: Admission(), idempotency: nil)
        #expect(submission.created, "a submission without idempotency key is always new", sourceLocation: sourceLocation)
        return submission.generation
    }

    /// The stored generation, which must exist.
    func fetch(_ id: GenerationID, sourceLocation: SourceLocation = #_sourceLocation) async throws -> Generation {
        let found = try await generation(id)
        return try #require(found, "generation \(id) should be stored", sourceLocation: sourceLocation)
    }

    /// Leases a generation that must be leasable.
    func leaseQueued(
        _ generation: Generation, to worker: WorkerRecord, at: Date, ttl: Double = Fixture.ttl,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> Generation {
        let leased = try await lease(sequence: generation.sequence, to: worker, at: at, ttl: ttl)
        return try #require(leased, "generation \(generation.id) should be leasable", sourceLocation: sourceLocation)
    }

    /// All events of a generation, oldest first.
    func allEvents(of id: GenerationID) async throws -> [GenerationEvent] {
        try await events(of: id, after: 0, limit: 1_000)
    }

    func eventKinds(of id: GenerationID) async throws -> [GenerationEvent.Kind] {
        try await allEvents(of: id).map(\.kind)
    }
}

// MARK: - Errors

/// Runs `body`, expecting it to throw a ``KilnError`` with `code`; returns the error when it did.
@discardableResult
func expectError<T>(
    _ code: KilnError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> T
) async -> KilnError? {
    do {
        let value = try await body()
        Issue.record("expected a KilnError '\(code)', but the call returned \(value)", sourceLocation: sourceLocation)
        return nil
    } catch let error as KilnError {
        #expect(error.code == code, "expected '\(code)', got \(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected a KilnError '\(code)', got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}
