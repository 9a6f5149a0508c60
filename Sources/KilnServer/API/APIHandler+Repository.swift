import Foundation
import KilnAPI
import KilnCore
import KilnModels
import KilnObjects
import KilnStore
import Logging
import NIOCore
import OpenAPIRuntime

/// The model repository of DESIGN §6 (admin keys): blobs by digest, immutable versions, aliases.
///
/// A push is: `POST /v1/admin/blobs/check` with every digest of the manifest, `PUT` of each missing
/// blob (its digest verified while it streams), then `POST .../versions` with the manifest, which
/// exists only once every blob it names is stored with the right size.
extension APIHandler {
    static func blobKey(_ digest: KilnCore.Digest) -> String { "blobs/sha256/\(digest.hex)" }

    func checkBlobs(_ input: Operations.CheckBlobs.Input) async throws -> Operations.CheckBlobs.Output {
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        guard body.digests.count <= 100_000 else { throw KilnError(.invalidRequest, "digests: at most 100000 at once") }
        var missing: [String] = []
        for text in body.digests {
            let digest = try KilnCore.Digest(wire: text, field: "digests")
            if try await services.objects.size(of: Self.blobKey(digest)) == nil { missing.append(digest.description) }
        }
        return .ok(.init(body: .json(.init(missing: missing))))
    }

    func uploadBlob(_ input: Operations.UploadBlob.Input) async throws -> Operations.UploadBlob.Output {
        let digest = try KilnCore.Digest(wire: input.path.digest.text, field: "digest")
        guard case .any(let body) = input.body else { throw KilnError(.invalidRequest, "the blob's bytes are the request body") }
        let key = Self.blobKey(digest)
        if let size = try await services.objects.size(of: key) {
            // Content-addressed: the bytes are already there. Drain the body and say so.
            for try await _ in body {}
            return .ok(.init(body: .json(.init(digest: digest.description, size: size))))
        }
        let stored = try await services.objects.put(
            key, body: body.buffers, maxBytes: services.configuration.limits.maxBlobBytes, expectedSHA256: digest.hex)
        return .created(.init(body: .json(.init(digest: digest.description, size: stored.size))))
    }

    func pushModelVersion(_ input: Operations.PushModelVersion.Input) async throws -> Operations.PushModelVersion.Output {
        // A push creates the model when needed, so a name outside the rule is a bad request, not an unknown model.
        let name = input.path.name
        guard ModelRecord.isValidName(name) else {
            throw KilnError(
                .invalidRequest, "name: '\(name)' must be 1 to 64 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit")
        }
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let manifest = try ModelManifest(body)
        try manifest.validate()
        guard manifest.model == name else {
            throw KilnError(.invalidInput, "manifest: model '\(manifest.model)' does not match the path's '\(name)'")
        }
        if let inputs = manifest.inputs { _ = try InputSchema(inputs) }
        for layer in manifest.layers {
            let size = try await services.objects.size(of: Self.blobKey(layer.digest))
            guard let size else {
                throw KilnError(.invalidInput, "manifest: blob \(layer.digest) (\(layer.kind.rawValue)) was not uploaded")
            }
            guard size == layer.size else {
                throw KilnError(.invalidInput, "manifest: blob \(layer.digest) has \(size) bytes, not the \(layer.size) the manifest says")
            }
        }
        if try await services.store.model(named: name) == nil {
            try? await services.store.createModel(ModelRecord(name: name, createdAt: services.clock.now()))
        }
        let record = ModelVersionRecord(
            id: try manifest.versionID(), model: name, manifest: try manifest.canonicalJSON(), createdAt: services.clock.now())
        let created = try await services.store.createVersion(record)
        try await services.cache.catchUp()
        let stored = try await services.store.version(record.id) ?? record
        let object = try Components.Schemas.VersionObject(stored, created: created)
        return created ? .created(.init(body: .json(object))) : .ok(.init(body: .json(object)))
    }

    func listModelVersions(_ input: Operations.ListModelVersions.Input) async throws -> Operations.ListModelVersions.Output {
        let name = try existingModelName(input.path.name)
        let versions = try await services.store.versions(of: name).map { try Components.Schemas.VersionObject($0) }
        return .ok(.init(body: .json(.init(data: versions))))
    }

    func getModelVersion(_ input: Operations.GetModelVersion.Input) async throws -> Operations.GetModelVersion.Output {
        let name = try existingModelName(input.path.name)
        let id = try KilnCore.Digest(wire: input.path.version.text, field: "version")
        guard let version = try await services.store.version(id), version.model == name else {
            throw KilnError(.notFound, "model '\(name)' has no version \(id)")
        }
        return .ok(.init(body: .json(try .init(version))))
    }

    func listModelAliases(_ input: Operations.ListModelAliases.Input) async throws -> Operations.ListModelAliases.Output {
        let name = try existingModelName(input.path.name)
        return .ok(.init(body: .json(try await services.store.aliases(of: name).map(Components.Schemas.AliasObject.init))))
    }

    func moveModelAlias(_ input: Operations.MoveModelAlias.Input) async throws -> Operations.MoveModelAlias.Output {
        let name = try existingModelName(input.path.name)
        let alias = try aliasName(input.path.alias)
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let moved = try await services.store.moveAlias(
            alias, of: name, to: try body.targets.map(AliasTarget.init), at: services.clock.now())
        try await services.cache.catchUp()
        services.logger.info("alias moved", metadata: ["model": "\(name)", "alias": "\(alias)", "targets": "\(moved.targets)"])
        return .ok(.init(body: .json(.init(moved))))
    }

    func rollbackModelAlias(_ input: Operations.RollbackModelAlias.Input) async throws -> Operations.RollbackModelAlias.Output {
        let name = try existingModelName(input.path.name)
        let alias = try aliasName(input.path.alias)
        let rolledBack = try await services.store.rollbackAlias(alias, of: name, at: services.clock.now())
        try await services.cache.catchUp()
        return .ok(.init(body: .json(.init(rolledBack))))
    }

    func getModelAliasHistory(_ input: Operations.GetModelAliasHistory.Input) async throws -> Operations.GetModelAliasHistory.Output {
        let name = try existingModelName(input.path.name)
        let alias = try aliasName(input.path.alias)
        let history = try await services.store.aliasHistory(alias, of: name)
        return .ok(.init(body: .json(.init(data: history.map(Components.Schemas.AliasChangeObject.init)))))
    }

    private func existingModelName(_ name: String) throws -> String {
        guard ModelRecord.isValidName(name) else { throw KilnError(.notFound, "no model named '\(name)'") }
        return name
    }

    private func aliasName(_ alias: String) throws -> String {
        guard AliasRecord.isValidName(alias) else {
            throw KilnError(.invalidRequest, "alias '\(alias)' must be 1 to 64 lowercase letters, digits, '-' or '_'")
        }
        return alias
    }
}
