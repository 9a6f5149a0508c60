import Foundation
import GRDB
import KilnCore

/// Models, versions and aliases.
extension SQLiteJobStore {
    public func createModel(_ model: ModelRecord) async throws {
        try await write { db in
            if try Bool.fetchOne(db, cached: "SELECT 1 FROM models WHERE name = ?", arguments: [model.name]) == true {
                throw KilnError(.conflict, "a model named '\(model.name)' already exists")
            }
            try db.run(
                sql: "INSERT INTO models (name, description, input_schema, created_at) VALUES (?, ?, ?, ?)",
                arguments: [model.name, model.description, model.inputSchema?.canonicalJSON(), model.createdAt.timeIntervalSince1970])
        }
    }

    public func model(named name: String) async throws -> ModelRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, cached: "SELECT * FROM models WHERE name = ?", arguments: [name]).map(Self.model(from:))
        }
    }

    public func models() async throws -> [ModelRecord] {
        try await pool.read { db in
            try Row.fetchAll(db, cached: "SELECT * FROM models ORDER BY name").map(Self.model(from:))
        }
    }

    // MARK: Model repository

    public func createVersion(_ version: ModelVersionRecord) async throws -> Bool {
        try await write { db in
            guard try Bool.fetchOne(db, cached: "SELECT 1 FROM models WHERE name = ?", arguments: [version.model]) == true else {
                throw KilnError(.notFound, "no model named '\(version.model)'")
            }
            if let model = try String.fetchOne(db, cached: "SELECT model FROM model_versions WHERE id = ?", arguments: [version.id.description]) {
                guard model == version.model else {
                    throw KilnError(.conflict, "version \(version.id) already belongs to model '\(model)'")
                }
                return false
            }
            try db.run(
                sql: "INSERT INTO model_versions (id, model, manifest, created_at) VALUES (?, ?, ?, ?)",
                arguments: [version.id.description, version.model, version.manifest, version.createdAt.timeIntervalSince1970])
            try Self.recordChange(db, .model, version.model)
            return true
        }
    }

    public func version(_ id: Digest) async throws -> ModelVersionRecord? {
        try await pool.read { db in
            try Row.fetchOne(db, cached: "SELECT * FROM model_versions WHERE id = ?", arguments: [id.description]).map(Self.version(from:))
        }
    }

    public func versions(of model: String) async throws -> [ModelVersionRecord] {
        try await pool.read { db in
            try Row.fetchAll(
                db, cached: "SELECT * FROM model_versions WHERE model = ? ORDER BY created_at DESC, id", arguments: [model]
            ).map(Self.version(from:))
        }
    }

    public func alias(_ name: String, of model: String) async throws -> AliasRecord? {
        try await pool.read { db in try Self.fetchAlias(db, name, of: model) }
    }

    public func aliases(of model: String) async throws -> [AliasRecord] {
        try await pool.read { db in
            try Row.fetchAll(db, cached: "SELECT * FROM aliases WHERE model = ? ORDER BY name", arguments: [model]).map(Self.alias(from:))
        }
    }

    public func moveAlias(_ name: String, of model: String, to targets: [AliasTarget], at: Date) async throws -> AliasRecord {
        try AliasRecord.validate(targets)
        return try await write { db in
            for target in targets {
                let owner = try String.fetchOne(
                    db, cached: "SELECT model FROM model_versions WHERE id = ?", arguments: [target.version.description])
                guard owner == model else {
                    throw KilnError(.invalidInput, "targets: \(target.version) is not a version of model '\(model)'")
                }
            }
            return try Self.setAlias(db, name, of: model, targets: targets, action: targets.count == 1 ? .promote : .split, at: at)
        }
    }

    public func rollbackAlias(_ name: String, of model: String, at: Date) async throws -> AliasRecord {
        try await write { db in
            guard try Self.fetchAlias(db, name, of: model) != nil else {
                throw KilnError(.notFound, "model '\(model)' has no alias '\(name)'")
            }
            guard let previous = AliasChange.rollbackTarget(history: try Self.fetchHistory(db, name, of: model)) else {
                throw KilnError(.conflict, "alias '\(name)' of model '\(model)' has nothing to roll back to")
            }
            return try Self.setAlias(db, name, of: model, targets: previous, action: .rollback, at: at)
        }
    }

    public func aliasHistory(_ name: String, of model: String) async throws -> [AliasChange] {
        try await pool.read { db in try Self.fetchHistory(db, name, of: model) }
    }

    static func setAlias(
        _ db: Database, _ name: String, of model: String, targets: [AliasTarget], action: AliasChange.Action, at: Date
    ) throws -> AliasRecord {
        let encoded = JSONColumn.encode(targets)
        try db.run(
            sql: """
                INSERT INTO aliases (model, name, targets, updated_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (model, name) DO UPDATE SET targets = excluded.targets, updated_at = excluded.updated_at
                """,
            arguments: [model, name, encoded, at.timeIntervalSince1970])
        try db.run(
            sql: "INSERT INTO alias_history (model, alias, action, targets, at) VALUES (?, ?, ?, ?, ?)",
            arguments: [model, name, action.rawValue, encoded, at.timeIntervalSince1970])
        try recordChange(db, .alias, "\(model)/\(name)")
        return AliasRecord(model: model, name: name, targets: targets, updatedAt: at)
    }

    static func fetchAlias(_ db: Database, _ name: String, of model: String) throws -> AliasRecord? {
        try Row.fetchOne(db, cached: "SELECT * FROM aliases WHERE model = ? AND name = ?", arguments: [model, name]).map(alias(from:))
    }

    static func fetchHistory(_ db: Database, _ name: String, of model: String) throws -> [AliasChange] {
        try Row.fetchAll(
            db, cached: "SELECT * FROM alias_history WHERE model = ? AND alias = ? ORDER BY seq", arguments: [model, name]
        ).map { row in
            AliasChange(
                sequence: row["seq"], model: row["model"], alias: row["alias"],
                action: AliasChange.Action(rawValue: row["action"]) ?? .promote, targets: JSONColumn.decode(row["targets"]) ?? [],
                at: Date(timeIntervalSince1970: row["at"]))
        }
    }

    static func version(from row: Row) -> ModelVersionRecord {
        ModelVersionRecord(
            id: Digest(row["id"] as String)!, model: row["model"], manifest: row["manifest"],
            createdAt: Date(timeIntervalSince1970: row["created_at"]))
    }

    static func alias(from row: Row) -> AliasRecord {
        AliasRecord(
            model: row["model"], name: row["name"], targets: JSONColumn.decode(row["targets"]) ?? [],
            updatedAt: Date(timeIntervalSince1970: row["updated_at"]))
    }
}
