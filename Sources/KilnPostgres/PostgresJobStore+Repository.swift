import Foundation
import KilnCore
import KilnStore
import PostgresNIO

/// Models, versions and aliases.
extension PostgresJobStore {
    public func createModel(_ model: ModelRecord) async throws {
        try await write { session in
            let created = try await session.run(
                """
                INSERT INTO models (name, description, input_schema, created_at)
                VALUES (\(model.name), \(model.description), \(model.inputSchema?.canonicalJSON()), \(model.createdAt.timeIntervalSince1970))
                ON CONFLICT (name) DO NOTHING RETURNING 1
                """)
            guard created == 1 else { throw KilnError(.conflict, "a model named '\(model.name)' already exists") }
        }
    }

    public func model(named name: String) async throws -> ModelRecord? {
        try await read { session in
            try await session.row("SELECT name, description, input_schema, created_at FROM models WHERE name = \(name)")
                .map(Self.model(from:))
        }
    }

    public func models() async throws -> [ModelRecord] {
        try await read { session in
            try await session.rows("SELECT name, description, input_schema, created_at FROM models ORDER BY name").map(Self.model(from:))
        }
    }

    // MARK: Model repository

    public func createVersion(_ version: ModelVersionRecord) async throws -> Bool {
        try await write { session in
            guard try await session.value("SELECT 1 FROM models WHERE name = \(version.model)", as: Int32.self) != nil else {
                throw KilnError(.notFound, "no model named '\(version.model)'")
            }
            let created = try await session.run(
                """
                INSERT INTO model_versions (id, model, manifest, created_at)
                VALUES (\(version.id.description), \(version.model), \(version.manifest), \(version.createdAt.timeIntervalSince1970))
                ON CONFLICT (id) DO NOTHING RETURNING 1
                """)
            guard created == 1 else {
                let model = try await session.value("SELECT model FROM model_versions WHERE id = \(version.id.description)", as: String.self)
                guard model == version.model else {
                    throw KilnError(.conflict, "version \(version.id) already belongs to model '\(model ?? "")'")
                }
                return false
            }
            try await Self.recordChange(session, .model, version.model)
            return true
        }
    }

    public func version(_ id: Digest) async throws -> ModelVersionRecord? {
        try await read { session in
            try await session.row("SELECT id, model, manifest, created_at FROM model_versions WHERE id = \(id.description)")
                .map(Self.version(from:))
        }
    }

    public func versions(of model: String) async throws -> [ModelVersionRecord] {
        try await read { session in
            try await session.rows(
                "SELECT id, model, manifest, created_at FROM model_versions WHERE model = \(model) ORDER BY created_at DESC, id"
            ).map(Self.version(from:))
        }
    }

    public func alias(_ name: String, of model: String) async throws -> AliasRecord? {
        try await read { session in try await Self.fetchAlias(session, name, of: model) }
    }

    public func aliases(of model: String) async throws -> [AliasRecord] {
        try await read { session in
            try await session.rows("SELECT model, name, targets, updated_at FROM aliases WHERE model = \(model) ORDER BY name")
                .map(Self.alias(from:))
        }
    }

    public func moveAlias(_ name: String, of model: String, to targets: [AliasTarget], at: Date) async throws -> AliasRecord {
        try AliasRecord.validate(targets)
        return try await write { session in
            try await session.lock(.alias, "\(model)/\(name)")
            for target in targets {
                let owner = try await session.value(
                    "SELECT model FROM model_versions WHERE id = \(target.version.description)", as: String.self)
                guard owner == model else {
                    throw KilnError(.invalidInput, "targets: \(target.version) is not a version of model '\(model)'")
                }
            }
            return try await Self.setAlias(
                session, name, of: model, targets: targets, action: targets.count == 1 ? .promote : .split, at: at)
        }
    }

    public func rollbackAlias(_ name: String, of model: String, at: Date) async throws -> AliasRecord {
        try await write { session in
            // Under the alias's lock to the commit: two rollbacks at once go back two steps, not one twice.
            try await session.lock(.alias, "\(model)/\(name)")
            guard try await Self.fetchAlias(session, name, of: model) != nil else {
                throw KilnError(.notFound, "model '\(model)' has no alias '\(name)'")
            }
            guard let previous = AliasChange.rollbackTarget(history: try await Self.fetchHistory(session, name, of: model)) else {
                throw KilnError(.conflict, "alias '\(name)' of model '\(model)' has nothing to roll back to")
            }
            return try await Self.setAlias(session, name, of: model, targets: previous, action: .rollback, at: at)
        }
    }

    public func aliasHistory(_ name: String, of model: String) async throws -> [AliasChange] {
        try await read { session in try await Self.fetchHistory(session, name, of: model) }
    }

    /// Points the alias at `targets` and appends the move to its history; the caller holds the
    /// alias's advisory lock, so that the history's order is the order of the moves.
    static func setAlias(
        _ session: PostgresSession, _ name: String, of model: String, targets: [AliasTarget], action: AliasChange.Action, at: Date
    ) async throws -> AliasRecord {
        let encoded = JSONColumn.encode(targets)
        try await session.run(
            """
            WITH moved AS (
                INSERT INTO aliases (model, name, targets, updated_at) VALUES (\(model), \(name), \(encoded), \(at.timeIntervalSince1970))
                ON CONFLICT (model, name) DO UPDATE SET targets = excluded.targets, updated_at = excluded.updated_at)
            INSERT INTO alias_history (model, alias, action, targets, at)
            VALUES (\(model), \(name), \(action.rawValue), \(encoded), \(at.timeIntervalSince1970))
            """)
        try await recordChange(session, .alias, "\(model)/\(name)")
        return AliasRecord(model: model, name: name, targets: targets, updatedAt: at)
    }

    static func fetchAlias(_ session: PostgresSession, _ name: String, of model: String) async throws -> AliasRecord? {
        try await session.row("SELECT model, name, targets, updated_at FROM aliases WHERE model = \(model) AND name = \(name)")
            .map(alias(from:))
    }

    static func fetchHistory(_ session: PostgresSession, _ name: String, of model: String) async throws -> [AliasChange] {
        try await session.rows(
            "SELECT seq, model, alias, action, targets, at FROM alias_history WHERE model = \(model) AND alias = \(name) ORDER BY seq"
        ).map { row in
            AliasChange(
                sequence: try row.value("seq"), model: try row.value("model"), alias: try row.value("alias"),
                action: AliasChange.Action(rawValue: try row.value("action")) ?? .promote,
                targets: JSONColumn.decode(try row.value("targets")) ?? [], at: try row.date("at"))
        }
    }

    static func version(from row: PostgresRandomAccessRow) throws -> ModelVersionRecord {
        let id: String = try row.value("id")
        guard let digest = Digest(id) else { throw KilnError(.internal, "model_versions holds '\(id)', which is not a digest") }
        return ModelVersionRecord(id: digest, model: try row.value("model"), manifest: try row.value("manifest"), createdAt: try row.date("created_at"))
    }

    static func alias(from row: PostgresRandomAccessRow) throws -> AliasRecord {
        AliasRecord(
            model: try row.value("model"), name: try row.value("name"), targets: JSONColumn.decode(try row.value("targets")) ?? [],
            updatedAt: try row.date("updated_at"))
    }
}
