import Foundation
import KilnCore
import KilnStore
import PostgresNIO
import Synchronization

/// The ``JobStore`` that several control-plane replicas share: one PostgreSQL database (DESIGN §2).
///
/// It keeps the semantics of ``SQLiteJobStore`` exactly (one conformance suite runs on both), with
/// what sharing a database among processes adds:
/// - a change to a generation is read without a lock, decided by ``Lifecycle``, and written by one
///   statement (``PersistTransition``): an `UPDATE … WHERE state = … AND lease_token = … AND xmin
///   = …`, conditional on the very revision of the row that was read, and, only if it applied, the
///   event, the settled outputs and the webhook delivery. Two servers racing on one job never both
///   win: PostgreSQL makes the second update wait for the first and then finds the row changed,
///   and the loser decides again on the row as the winner left it;
/// - changes that read more than one row first (a completion with outputs, an attachment, the
///   expiry and release of leases in bulk) run in a transaction that locks the rows
///   (`SELECT … FOR UPDATE`) at PostgreSQL's default isolation, read committed;
/// - fencing tokens grow per generation by a random step, as on SQLite; the conditional update
///   makes each token committed at most once per generation, whichever server drew it;
/// - admission caps, idempotency keys and the upload quota are checked under transaction-scoped
///   advisory locks on the account (and on the tier), see ``AdvisoryLock``;
/// - the change feed's sequence is handed out in commit order (``recordChange(_:_:_:)``);
/// - the statements of every job's path are prepared once per connection.
///
/// Each change is acknowledged once PostgreSQL has committed it (with the server's
/// `synchronous_commit`, durable by default).
///
/// Lifecycle: ``connect(url:maximumConnections:logger:)`` migrates the database and starts the
/// connection pool in a task of its own; ``shutdown()`` closes the pool and waits for it.
public final class PostgresJobStore: JobStore {
    let client: PostgresClient
    let logger: Logger
    private let pool: Task<Void, Never>
    /// Told of each committed change (``observeCommits(_:)``).
    ///
    /// The closure is held in a struct, not as the mutex's value itself: read out of a `Mutex`
    /// whose value is a function, a closure comes back wrapped in one more reabstraction thunk at
    /// every read, and the stored one with it, so that each commit called through a chain one
    /// link longer than the last (server CPU per job grew with every job served).
    private let commitObserver = Mutex<CommitObserver?>(nil)

    private struct CommitObserver: Sendable {
        let observe: @Sendable (CommitTiming) -> Void
    }

    private init(client: PostgresClient, logger: Logger) {
        self.client = client
        self.logger = logger
        // Started at once, not later on some thread: the pool must be running before the first
        // call leases a connection (PostgresNIO warns about every lease that comes before).
        if #available(macOS 26.0, *) {
            pool = Task.immediate { await client.run() }
        } else {
            pool = Task { await client.run() }
        }
    }

    /// Connects to the database at `url`, applies the migrations it lacks, and starts the pool.
    ///
    /// - Parameters:
    ///   - url: `postgres://user:password@host:port/database[?sslmode=…]` (see ``PostgresURL``).
    ///   - maximumConnections: the most connections the pool opens.
    /// - Throws: `.invalidInput` for a malformed URL; `.unavailable` when the database cannot be
    ///   reached or refuses the login (the error says which); the error of a failed migration.
    public static func connect(
        url: String, maximumConnections: Int = 20, logger: Logger = Logger(label: "kiln.postgres")
    ) async throws -> PostgresJobStore {
        let target = try PostgresURL(url)
        // One connection of its own for the migrations: a wrong password or a missing database
        // fails here, with PostgreSQL's own words, rather than as a pool that waits for ever.
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(
                configuration: PostgresConnection.Configuration(
                    host: target.host, port: target.port, username: target.user, password: target.password,
                    database: target.database, tls: try target.connectionTLS()),
                id: 0, logger: logger)
        } catch {
            throw KilnError(.unavailable, "cannot connect to PostgreSQL at \(target): \(Self.describe(error))")
        }
        do {
            _ = try await PostgresSchema.migrate(PostgresSession(connection: connection, logger: logger))
            try await connection.close()
        } catch {
            try? await connection.close()
            throw storeError(error)
        }
        var configuration = PostgresClient.Configuration(
            host: target.host, port: target.port, username: target.user, password: target.password, database: target.database,
            tls: target.clientTLS)
        configuration.options.maximumConnections = maximumConnections
        return PostgresJobStore(client: PostgresClient(configuration: configuration, backgroundLogger: logger), logger: logger)
    }

    /// Closes the pool and waits until it has; the store takes no call afterwards.
    public func shutdown() async {
        pool.cancel()
        await pool.value
    }

    /// The schema versions the database records as applied, in order.
    public func appliedMigrations() async throws -> [Int] {
        try await read { try await PostgresSchema.appliedVersions($0) }
    }

    // MARK: - Sessions

    public func observeCommits(_ observer: @escaping @Sendable (CommitTiming) -> Void) {
        commitObserver.withLock { $0 = CommitObserver(observe: observer) }
    }

    /// Runs `body` in a transaction of its own, committed before this returns.
    /// - Throws: what `body` threw (everything rolled back), or the commit's error; database errors
    ///   as ``KilnError`` (a broken constraint is `.conflict`).
    @discardableResult
    func write<T: Sendable>(_ body: (PostgresSession) async throws -> T) async throws -> T {
        try await change { session in
            try await session.run("BEGIN")
            do {
                let value = try await body(session)
                try await session.run("COMMIT")
                return value
            } catch {
                // A connection that cannot roll back is closed by the pool; the change is lost either way.
                _ = try? await session.run("ROLLBACK")
                throw error
            }
        }
    }

    /// Runs a change made by statements that each commit on their own (one statement, or one
    /// that is retried until it applies), and reports it to the commit observer once done.
    @discardableResult
    func change<T: Sendable>(_ body: (PostgresSession) async throws -> T) async throws -> T {
        let clock = ContinuousClock()
        let began = clock.now
        let value = try await read(body)
        let seconds = (clock.now - began).seconds
        commitObserver.withLock { $0 }?.observe(CommitTiming(changes: 1, seconds: seconds))
        return value
    }

    /// Runs `body` on a connection outside any transaction: each statement commits on its own and
    /// sees what was committed when it began.
    @discardableResult
    func read<T: Sendable>(_ body: (PostgresSession) async throws -> T) async throws -> T {
        do {
            return try await client.withConnection { connection in
                try await body(PostgresSession(connection: connection, logger: logger))
            }
        } catch {
            throw Self.storeError(error)
        }
    }

    /// The store's errors as ``KilnError``: a broken unique or foreign-key constraint is a
    /// conflict, as on SQLite; any other refusal names PostgreSQL's message and SQLSTATE.
    static func storeError(_ error: any Error) -> any Error {
        if error is KilnError { return error }
        guard let psql = error as? PSQLError else { return error }
        guard psql.code == .server, let state = psql.serverInfo?[.sqlState] else {
            return KilnError(.unavailable, "PostgreSQL is unavailable: \(describe(error))")
        }
        let message = psql.serverInfo?[.message] ?? "no message"
        switch state {
        case "23505", "23503":
            return KilnError(.conflict, "the change conflicts with stored data: \(message)")
        case "40001", "40P01":
            return KilnError(.conflict, "the change collided with a concurrent one and was rolled back; retry it: \(message)")
        default:
            return KilnError(.internal, "PostgreSQL refused a statement: \(message) (SQLSTATE \(state))")
        }
    }

    /// PostgresNIO's errors describe themselves only when reflected (their `description` hides
    /// details on purpose); the server's message first when there is one.
    static func describe(_ error: any Error) -> String {
        if let psql = error as? PSQLError {
            if let message = psql.serverInfo?[.message] {
                return "\(message) (SQLSTATE \(psql.serverInfo?[.sqlState] ?? "?"))"
            }
            if let underlying = psql.underlying { return String(describing: underlying) }
            return "\(psql.code)"
        }
        return String(describing: error)
    }

    // MARK: - Change feed

    public func changes(after: Int64, limit: Int) async throws -> [StoreChange] {
        try await read { session in
            try await session.rows(
                "SELECT sequence, record, key FROM changes WHERE sequence > \(after) ORDER BY sequence LIMIT \(limit)"
            ).compactMap { row in
                guard let record = StoreChange.Record(rawValue: try row.value("record")) else { return nil }
                return StoreChange(sequence: try row.value("sequence"), record: record, key: try row.value("key"))
            }
        }
    }

    public func latestChange() async throws -> Int64 {
        try await read { try await $0.value("SELECT COALESCE(MAX(sequence), 0) FROM changes", as: Int64.self) ?? 0 }
    }

    /// Appends to the change feed, in the transaction of the change itself.
    ///
    /// A follower reads the feed after the last sequence it applied, so a sequence must never
    /// become visible after a larger one: the feed's advisory lock, held to the commit, makes the
    /// transactions that record changes take their sequences in the order they commit. (Changes
    /// are administrative and rare; nothing on the path of a job records one.)
    static func recordChange(_ session: PostgresSession, _ record: StoreChange.Record, _ key: String) async throws {
        try await session.run("SELECT pg_advisory_xact_lock(\(AdvisoryLock.changeFeed.rawValue), 0)")
        try await session.run(
            """
            INSERT INTO changes (record, key, recorded_at) VALUES (\(record.rawValue), \(key), extract(epoch FROM clock_timestamp()))
            """)
    }

    public func pruneChanges(recordedBefore cutoff: Date) async throws -> Int {
        try await write { session in
            try await session.run(
                """
                DELETE FROM changes
                WHERE recorded_at < \(cutoff.timeIntervalSince1970) AND sequence < (SELECT MAX(sequence) FROM changes)
                RETURNING 1
                """)
        }
    }
}
