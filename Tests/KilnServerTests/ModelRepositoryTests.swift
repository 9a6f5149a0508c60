import Foundation
import HTTPTypes
import Hummingbird
import KilnAPI
import KilnCore
import KilnModels
import KilnObjects
import KilnServer
import NIOCore
import OpenAPIRuntime
import Testing

/// A model folder whose input schema asks for a prompt and a bounded frame count.
func videoModelFolder(code: String) throws -> (URL, ModelFolderSpec) {
    let folder = FileManager.default.temporaryDirectory.appending(path: "kiln-model-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: folder.appending(path: "weights"), withIntermediateDirectories: true)
    try Data(code.utf8).write(to: folder.appending(path: "predict.py"))
    try Data("checkpoint bytes".utf8).write(to: folder.appending(path: "weights/model.bin"))
    let schema = try JSONValue.parse(
        #"{"type":"object","additionalProperties":false,"required":["prompt"],"properties":{"prompt":{"type":"string","minLength":1},"num_frames":{"type":"integer","minimum":1,"maximum":240,"default":48},"video":{"type":"string","format":"file"}}}"#
    )
    return (folder, ModelFolderSpec(name: "video", entrypoint: "predict.py:Predictor", inputs: schema))
}

extension KilnClient {
    /// Pushes a packed version as `kiln models push` does: check, upload what is missing, manifest.
    func push(_ packed: PackedVersion) async throws -> (Components.Schemas.VersionObject, uploaded: Int) {
        let admin = api()
        let digests = packed.manifest.blobs.map(\.description)
        let missing = try await admin { try await $0.checkBlobs(body: .json(.init(digests: digests))).ok.body.json.missing }
        for text in missing {
            let digest = try #require(Digest(text))
            let file = try #require(packed.files[digest])
            _ = try await admin.transfer { try await $0.uploadBlob(path: .init(digest: .init(value1: text)), body: .any(try HTTPBody.file(file))).created }
        }
        let manifest = try Components.Schemas.ModelManifest(packed.manifest)
        let version = try await admin {
            switch try await $0.pushModelVersion(path: .init(name: packed.manifest.model), body: .json(manifest)) {
            case .created(let created): return try created.body.json
            case .ok(let known): return try known.body.json
            default: throw KilnError(.internal, "unexpected answer to a push")
            }
        }
        return (version, missing.count)
    }

    func moveAlias(_ model: String, _ alias: String, _ targets: [(String, Int)]) async throws -> Components.Schemas.AliasObject {
        let admin = api()
        let request = Components.Schemas.MoveAliasRequest(targets: targets.map { .init(version: $0.0, weight: $0.1) })
        return try await admin { try await $0.moveModelAlias(path: .init(name: model, alias: alias), body: .json(request)).ok.body.json }
    }
}

@Suite("Model repository over the API")
struct ModelRepositoryTests {
    func pack(_ code: String) throws -> PackedVersion {
        let (folder, spec) = try videoModelFolder(code: code)
        let workspace = FileManager.default.temporaryDirectory.appending(path: "kiln-pack-\(UUID().uuidString)")
        return try ModelPackager.pack(folder: folder, spec: spec, environments: [:], workspace: workspace)
    }

    @Test("push uploads only missing blobs; pushing again moves nothing and gives the same version")
    func pushDedupes() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let v1 = try pack("class Predictor: pass\n")
            let (first, uploadedFirst) = try await api.push(v1)
            #expect(first.id == v1.id.description)
            #expect(first.created == true)
            #expect(uploadedFirst == 2)
            let (again, uploadedAgain) = try await api.push(v1)
            #expect(again.id == v1.id.description)
            #expect(again.created == false)
            #expect(uploadedAgain == 0)
            // A code change uploads only the new code layer; the checkpoint is shared.
            let (_, uploadedV2) = try await api.push(try pack("class Predictor: # v2\n    pass\n"))
            #expect(uploadedV2 == 1)
            let versions = try await api.call(.get, "/v1/admin/models/video/versions").decode(Components.Schemas.VersionList.self)
            #expect(versions.data.count == 2)
        }
    }

    @Test("where the object store signs URLs, a worker's blob download is sent to the bucket; elsewhere the server streams it")
    func blobsFromSignedURLs() async throws {
        let folder = FileManager.default.temporaryDirectory.appending(path: "kiln-signing-\(UUID().uuidString)")
        let kiln = try await KilnHarness.make(objects: SigningObjectStore(base: try FileSystemObjectStore(root: folder)))
        try await kiln.withClient { api in
            let packed = try pack("class Predictor: pass\n")
            let digest = packed.manifest.blobs[0]
            _ = try await api.push(packed)
            let key = try await api.workerKey()
            let worker = try await api.register(key)
            let download = try await api.call(.get, "/v1/workers/\(worker)/blobs/\(digest)", key: key)
            #expect(download.status == .temporaryRedirect)
            #expect(download.headers[.location] == "https://bucket.example/blobs/sha256/\(digest.hex)?X-Amz-Expires=900")
            #expect(try await api.call(.get, "/v1/workers/\(worker)/blobs/sha256:\(String(repeating: "0", count: 64))", key: key).status == .notFound)
        }
    }

    @Test("where the object store signs URLs, a job's input file is sent to the bucket too, under the lease's checks first")
    func inputsFromSignedURLs() async throws {
        let folder = FileManager.default.temporaryDirectory.appending(path: "kiln-signing-\(UUID().uuidString)")
        let kiln = try await KilnHarness.make(objects: SigningObjectStore(base: try FileSystemObjectStore(root: folder)))
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let uploaded = try await api.call(
                .post, "/v1/files", key: user, raw: ByteBuffer(string: "clip bytes"), headers: [.contentType: "video/mp4"])
            let file = try uploaded.decode(Components.Schemas.FileObject.self)
            let generation = try await api.submit(user, input: ["video": .string(file.id)])
            let key = try await api.workerKey()
            let worker = try await api.register(key)
            let lease = try #require(try await api.lease(key, worker: worker))
            let base = "/v1/workers/\(worker)/jobs/\(generation.id)/inputs/video"
            let download = try await api.call(.get, "\(base)?token=\(lease.lease.token)", key: key)
            #expect(download.status == .temporaryRedirect)
            let location = try #require(download.headers[.location])
            #expect(location.hasPrefix("https://bucket.example/"), "\(location)")
            #expect(location.hasSuffix("?X-Amz-Expires=900"), "\(location)")
            // The lease is checked before any URL is signed.
            #expect(try await api.call(.get, "\(base)?token=1", key: key).status == .conflict)
            let unknown = "/v1/workers/\(worker)/jobs/\(generation.id)/inputs/other?token=\(lease.lease.token)"
            #expect(try await api.call(.get, unknown, key: key).status == .notFound)
        }
    }

    @Test("a blob whose bytes do not match its digest is refused and not stored; a manifest with a missing blob too")
    func digestsVerified() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let packed = try pack("class Predictor: pass\n")
            let digest = packed.manifest.blobs[0]
            let wrong = try await api.call(.put, "/v1/admin/blobs/\(digest)", raw: ByteBuffer(string: "not those bytes"))
            #expect(wrong.status == .unprocessableContent)
            // The same with the digest's `:` percent-encoded, as clients encode path segments.
            let encoded = try await api.call(.put, "/v1/admin/blobs/sha256%3A\(digest.hex)", raw: ByteBuffer(string: "not those bytes"))
            #expect(encoded.status == .unprocessableContent, "\(encoded.text)")
            let check = try await api.call(.post, "/v1/admin/blobs/check", json: #"{"digests":["\#(digest)"]}"#)
            #expect(try check.decode(Components.Schemas.BlobCheckResponse.self).missing == [digest.description])
            let manifest = String(decoding: try packed.manifest.canonicalJSON(), as: UTF8.self)
            let refused = try await api.call(.post, "/v1/admin/models/video/versions", json: manifest)
            #expect(refused.status == .unprocessableContent)
            #expect(refused.error?.message.contains("was not uploaded") == true)
        }
    }

    @Test("promote, canary and rollback change what new generations resolve to; pinned ones are unaffected")
    func aliasesDriveResolution() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (v1, _) = try await api.push(try pack("class Predictor: pass\n"))
            let (v2, _) = try await api.push(try pack("class Predictor: # v2\n    pass\n"))
            let (_, user) = try await api.account(tier: "api")
            let workerKey = try await api.workerKey()
            let worker = try await api.register(workerKey)
            let input: [String: JSONValue] = ["prompt": .string("a kiln")]

            // No alias yet: a versioned model refuses unpinned generations with a clear reason.
            let refused = try await api.call(.post, "/v1/generations", key: user, json: #"{"model":"video","input":{"prompt":"x"}}"#)
            #expect(refused.status == .unprocessableContent)
            #expect(refused.error?.message.contains("no alias 'production'") == true)

            #expect(try await api.moveAlias("video", "production", [(v1.id, 100)]).targets.map(\.version) == [v1.id])
            let pinned = try await api.call(
                .post, "/v1/generations", key: user, json: #"{"model":"video","version":"\#(v2.id)","input":{"prompt":"x"}}"#)
            #expect(pinned.status == .created)
            let first = try await api.submit(user, model: "video", input: input)
            #expect([String: JSONValue](first.input.additionalProperties)["num_frames"] == .number(48), "the schema's default is applied")

            func leaseAndRun() async throws -> String? {
                let lease = try #require(try await api.lease(workerKey, worker: worker))
                _ = try await api.complete(workerKey, worker, lease)
                return lease.job.version
            }
            #expect(try await leaseAndRun() == v2.id.description)  // the pinned one was queued first
            #expect(try await leaseAndRun() == v1.id.description)

            #expect(try await api.moveAlias("video", "production", [(v2.id, 100)]).targets.map(\.version) == [v2.id])
            _ = try await api.submit(user, model: "video", input: input)
            #expect(try await leaseAndRun() == v2.id.description)

            let rolledBack = try await api.call(.post, "/v1/admin/models/video/aliases/production/rollback")
            #expect(try rolledBack.decode(Components.Schemas.AliasObject.self).targets.map(\.version) == [v1.id])
            let done = try await api.submit(user, model: "video", input: input)
            #expect(try await leaseAndRun() == v1.id.description)
            #expect(try await api.generation(user, done.id).version == v1.id.description)

            // A 50/50 split sends generations to both versions.
            #expect(try await api.moveAlias("video", "production", [(v1.id, 50), (v2.id, 50)]).targets.count == 2)
            var seen = Set<String>()
            for _ in 0..<40 {
                _ = try await api.submit(user, model: "video", input: input)
                if let version = try await leaseAndRun() { seen.insert(version) }
            }
            #expect(seen == [v1.id.description, v2.id.description])

            let history = try await api.call(.get, "/v1/admin/models/video/aliases/production/history").decode(Components.Schemas.AliasHistory.self)
            #expect(history.data.map(\.action.rawValue) == ["promote", "promote", "rollback", "split"])
            let models = try await api.call(.get, "/v1/models", key: user).decode(Components.Schemas.ModelList.self)
            #expect(models.data.first { $0.name == "video" }?.aliases.first?.name == "production")
        }
    }

    @Test("input is checked against the version's schema: 422 naming every offending field, nothing stored")
    func schemaValidation() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (v1, _) = try await api.push(try pack("class Predictor: pass\n"))
            _ = try await api.moveAlias("video", "production", [(v1.id, 100)])
            let (_, user) = try await api.account(tier: "api")
            let bad = try await api.call(
                .post, "/v1/generations", key: user, json: #"{"model":"video","input":{"num_frames":500,"style":"noir"}}"#)
            #expect(bad.status == .unprocessableContent)
            let message = bad.error?.message ?? ""
            #expect(message.contains("input.num_frames"), "\(message)")
            #expect(message.contains("input.prompt"), "\(message)")
            #expect(message.contains("input.style"), "\(message)")
            let foreignFile = try await api.call(
                .post, "/v1/generations", key: user,
                json: #"{"model":"video","input":{"prompt":"x","video":"file_0000000000000000000000"}}"#)
            #expect(foreignFile.status == .unprocessableContent)
            #expect(try await api.call(.get, "/v1/generations", key: user).decode(Components.Schemas.GenerationList.self).data.isEmpty)
        }
    }
}

/// A file-system object store that also signs URLs, as S3 does (a test double: the URLs point
/// nowhere); what the server does with a store that can sign.
struct SigningObjectStore: ObjectStore {
    let base: FileSystemObjectStore

    func put<Body: AsyncSequence & Sendable>(_ key: String, body: Body, maxBytes: Int64, expectedSHA256: String?) async throws
        -> StoredObject
    where Body.Element == ByteBuffer {
        try await base.put(key, body: body, maxBytes: maxBytes, expectedSHA256: expectedSHA256)
    }

    func get(_ key: String, range: ClosedRange<Int64>?) async throws -> AsyncThrowingStream<ByteBuffer, any Error> {
        try await base.get(key, range: range)
    }

    func size(of key: String) async throws -> Int64? { try await base.size(of: key) }
    func list(prefix: String) async throws -> [String] { try await base.list(prefix: prefix) }
    func delete(_ key: String) async throws { try await base.delete(key) }

    func presignedGetURL(for key: String, expiresIn: Int) async throws -> URL? {
        URL(string: "https://bucket.example/\(key)?X-Amz-Expires=\(expiresIn)")
    }
}
