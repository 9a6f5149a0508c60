import Foundation
import KilnCore
import PostgresNIO

/// One connection lent to one call of the store, inside a transaction (``PostgresJobStore/write(_:)``)
/// or not (``PostgresJobStore/read(_:)``, ``PostgresJobStore/change(_:)``). Every value goes to the
/// server as a bound parameter, never inside the SQL text.
struct PostgresSession {
    let connection: PostgresConnection
    let logger: Logger

    /// The rows `query` returns.
    func rows(_ query: PostgresQuery) async throws -> [PostgresRandomAccessRow] {
        try await connection.query(query, logger: logger).collect().map { $0.makeRandomAccess() }
    }

    /// The first row `query` returns, if any.
    func row(_ query: PostgresQuery) async throws -> PostgresRandomAccessRow? {
        try await rows(query).first
    }

    /// Runs `query`; with `RETURNING`, the result is how many rows it changed.
    @discardableResult
    func run(_ query: PostgresQuery) async throws -> Int {
        try await connection.query(query, logger: logger).collect().count
    }

    /// The single value of the first row, if any.
    func value<T: PostgresDecodable>(_ query: PostgresQuery, as type: T.Type = T.self) async throws -> T? {
        guard let row = try await connection.query(query, logger: logger).collect().first else { return nil }
        return try row.makeRandomAccess()[0].decode(T.self, context: .default)
    }

    /// Takes the transaction-scoped advisory lock on `key` in `space`: held until commit or
    /// rollback, by one transaction at a time across every server.
    func lock(_ space: AdvisoryLock, _ key: String) async throws {
        try await run("SELECT pg_advisory_xact_lock(\(space.rawValue), hashtext(\(key)))")
    }
}

/// The spaces of the advisory locks the store takes (the first key of `pg_advisory_xact_lock`).
enum AdvisoryLock: Int32 {
    /// Migrations: several servers starting at once migrate once.
    case migrations = 7_301
    /// An account's admission caps, idempotency keys and upload quota.
    case account = 7_302
    /// A tier's admission cap.
    case tier = 7_303
    /// The change feed: sequences are handed out in commit order (see ``PostgresJobStore/recordChange``).
    case changeFeed = 7_304
    /// An alias: its moves are recorded in its history in the order they are made.
    case alias = 7_305
}

extension PostgresRandomAccessRow {
    /// The column's value, decoded.
    /// - Throws: PostgresNIO's decoding error, naming the column, for a NULL or a mismatched type.
    func value<T: PostgresDecodable>(_ column: String, as type: T.Type = T.self) throws -> T {
        try self[column].decode(T.self, context: .default)
    }

    /// A time column (seconds since the epoch).
    func date(_ column: String) throws -> Date {
        Date(timeIntervalSince1970: try value(column, as: Double.self))
    }

    /// A time column that may be NULL.
    func optionalDate(_ column: String) throws -> Date? {
        try value(column, as: Double?.self).map(Date.init(timeIntervalSince1970:))
    }
}

extension PostgresSession {
    /// The rows a prepared statement returns (prepared on this connection the first time).
    func rows<Statement: PostgresPreparedStatement>(_ statement: Statement) async throws -> [Statement.Row] {
        var rows: [Statement.Row] = []
        for try await row in try await connection.execute(statement, logger: logger) { rows.append(row) }
        return rows
    }
}
