import Foundation
import Hummingbird
import KilnAPI
import KilnCore
import KilnModels
import KilnObjects
import KilnStore
import Logging
import NIOCore

/// The model repository of DESIGN §6 (admin keys): blobs by digest, immutable versions, aliases.
///
/// A push is: `POST /v1/admin/blobs/check` with every digest of the manifest, `PUT` of each missing
/// blob (its digest verified while it streams), then `POST .../versions` with the manifest, which
/// exists only once every blob it names is stored with the right size.
struct ModelRoutes {
    let services: KilnServices

    static func blobKey(_ digest: Digest) -> String { "blobs/sha256/\(digest.hex)" }

    func register(on v1: RouterGroup<KilnRequestContext>, authenticator: Authenticator) {
        let admin = v1.group("admin").add(middleware: RequireScope(scope: .admin, authenticator: authenticator))
        let limit = services.configuration.limits.maxJSONBytes

        admin.post("blobs/check") { request, _ in
            let body = try await JSONBody.decode(BlobCheckRequest.self, from: request, limit: limit)
            guard body.digests.count <= 100_000 else { throw KilnError(.invalidRequest, "digests: at most 100000 at once") }
            var missing: [Digest] = []
            for digest in body.digests where try await services.objects.size(of: Self.blobKey(digest)) == nil {
                missing.append(digest)
            }
            return try JSONBody.response(BlobCheckResponse(missing: missing))
        }

        admin.put("blobs/:digest") { request, context in
            let digest = try Self.digest(try context.parameters.require("digest"))
            let key = Self.blobKey(digest)
            if let size = try await services.objects.size(of: key) {
                // Content-addressed: the bytes are already there. Drain the body and say so.
                for try await _ in request.body {}
                return try JSONBody.response(BlobObject(digest: digest, size: size))
            }
            let stored = try await services.objects.put(
                key, body: request.body, maxBytes: services.configuration.limits.maxBlobBytes, expectedSHA256: digest.hex)
            return try JSONBody.response(BlobObject(digest: digest, size: stored.size), status: .created)
        }

        admin.post("models/:name/versions") { request, context in
            let name = try context.parameters.require("name")
            let data = try await JSONBody.collect(request, limit: limit, what: "the manifest")
            let manifest: ModelManifest
            do {
                manifest = try JSONDecoder().decode(ModelManifest.self, from: data)
            } catch let error as DecodingError {
                throw KilnError(.invalidRequest, "manifest: \(error.message())")
            } catch {
                throw KilnError(.invalidRequest, "manifest: not valid JSON")
            }
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
            let canonical = try manifest.canonicalJSON()
            let record = ModelVersionRecord(id: try manifest.versionID(), model: name, manifest: canonical, createdAt: services.clock.now())
            let created = try await services.store.createVersion(record)
            let stored = try await services.store.version(record.id) ?? record
            return try JSONBody.response(try Self.render(stored, created: created), status: created ? .created : .ok)
        }

        admin.get("models/:name/versions") { _, context in
            let name = try existingModel(context)
            return try JSONBody.response(VersionList(data: try await services.store.versions(of: name).map { try Self.render($0) }))
        }

        admin.get("models/:name/versions/:version") { _, context in
            let name = try existingModel(context)
            let id = try Self.digest(try context.parameters.require("version"))
            guard let version = try await services.store.version(id), version.model == name else {
                throw KilnError(.notFound, "model '\(name)' has no version \(id)")
            }
            return try JSONBody.response(try Self.render(version))
        }

        admin.get("models/:name/aliases") { _, context in
            let name = try existingModel(context)
            return try JSONBody.response(try await services.store.aliases(of: name).map(Self.render))
        }

        admin.put("models/:name/aliases/:alias") { request, context in
            let name = try existingModel(context)
            let alias = try Self.aliasName(context)
            let body = try await JSONBody.decode(MoveAliasRequest.self, from: request, limit: limit)
            let moved = try await services.store.moveAlias(
                alias, of: name, to: body.targets.map { AliasTarget(version: $0.version, weight: $0.weight) }, at: services.clock.now())
            services.logger.info("alias moved", metadata: ["model": "\(name)", "alias": "\(alias)", "targets": "\(moved.targets)"])
            return try JSONBody.response(Self.render(moved))
        }

        admin.post("models/:name/aliases/:alias/rollback") { _, context in
            let name = try existingModel(context)
            let alias = try Self.aliasName(context)
            return try JSONBody.response(Self.render(try await services.store.rollbackAlias(alias, of: name, at: services.clock.now())))
        }

        admin.get("models/:name/aliases/:alias/history") { _, context in
            let name = try existingModel(context)
            let alias = try Self.aliasName(context)
            let history = try await services.store.aliasHistory(alias, of: name)
            return try JSONBody.response(
                AliasHistory(
                    data: history.map {
                        AliasChangeObject(action: $0.action.rawValue, targets: $0.targets.map(Self.render), at: $0.at)
                    }))
        }
    }

    private func existingModel(_ context: KilnRequestContext) throws -> String {
        let name = try context.parameters.require("name")
        guard ModelRecord.isValidName(name) else { throw KilnError(.notFound, "no model named '\(name)'") }
        return name
    }

    static func aliasName(_ context: KilnRequestContext) throws -> String {
        let alias = try context.parameters.require("alias")
        guard AliasRecord.isValidName(alias) else {
            throw KilnError(.invalidRequest, "alias '\(alias)' must be 1 to 64 lowercase letters, digits, '-' or '_'")
        }
        return alias
    }

    /// `sha256:<hex>` or the bare hex.
    static func digest(_ text: String) throws -> Digest {
        guard let digest = Digest(text) ?? Digest(hex: text) else {
            throw KilnError(.invalidRequest, "'\(text)' is not a sha256 digest (sha256:<64 hex digits>)")
        }
        return digest
    }

    static func render(_ version: ModelVersionRecord, created: Bool? = nil) throws -> VersionObject {
        VersionObject(
            id: version.id, model: version.model, manifest: try JSONDecoder().decode(JSONValue.self, from: version.manifest),
            createdAt: version.createdAt, created: created)
    }

    static func render(_ target: AliasTarget) -> AliasTargetObject {
        AliasTargetObject(version: target.version, weight: target.weight)
    }

    static func render(_ alias: AliasRecord) -> AliasObject {
        AliasObject(name: alias.name, targets: alias.targets.map(render), updatedAt: alias.updatedAt)
    }
}
