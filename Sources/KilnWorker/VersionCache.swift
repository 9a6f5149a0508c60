import Crypto
import Foundation
import KilnAPI
import KilnCore
import KilnModels

/// A version unpacked on this worker, ready to run.
public struct PreparedVersion: Sendable {
    public var id: KilnCore.Digest
    public var manifest: ModelManifest
    public var code: URL
    /// The environment for this worker's platform, when the version has one.
    public var environment: URL?
    public var weights: URL
}

/// The worker's local cache of model versions (DESIGN §6): blobs fetched through the worker API,
/// every digest verified while it streams, layers unpacked without escapes into a staging folder
/// renamed into place, least recently used versions evicted past a disk budget.
public actor VersionCache {
    let root: URL
    let budgetBytes: Int64
    let platform: String
    let client: KilnAPIClient
    let workerID: WorkerID
    private var preparing: [KilnCore.Digest: Task<PreparedVersion, any Error>] = [:]

    public init(root: URL, budgetBytes: Int64, platform: String, client: KilnAPIClient, workerID: WorkerID) throws {
        self.root = root
        self.budgetBytes = budgetBytes
        self.platform = platform
        self.client = client
        self.workerID = workerID
        // What a previous run left half done is of no use.
        try? FileManager.default.removeItem(at: root.appending(path: "tmp"))
        try FileManager.default.createDirectory(at: root.appending(path: "versions"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: root.appending(path: "tmp"), withIntermediateDirectories: true)
    }

    /// The version, from the cache or fetched now; concurrent callers share one fetch.
    public func prepare(_ id: KilnCore.Digest, keeping inUse: Set<KilnCore.Digest> = []) async throws -> PreparedVersion {
        if let task = preparing[id] { return try await task.value }
        let task = Task { try await self.fetch(id) }
        preparing[id] = task
        defer { preparing[id] = nil }
        let version = try await task.value
        try evict(keeping: inUse.union([id]))
        return version
    }

    private func folder(_ id: KilnCore.Digest) -> URL { root.appending(path: "versions/\(id.hex)") }

    private func fetch(_ id: KilnCore.Digest) async throws -> PreparedVersion {
        let target = folder(id)
        let manifestFile = target.appending(path: "manifest.json")
        if let data = try? Data(contentsOf: manifestFile) {
            try? FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: target.path)
            return try layout(id, manifest: JSONDecoder().decode(ModelManifest.self, from: data))
        }
        let worker = workerID.rawValue
        let object = try await client {
            try await $0.getWorkerModelVersion(path: .init(id: worker, version: .init(value1: id.description))).ok.body.json
        }
        let manifest = try ModelManifest(object.manifest)
        guard try manifest.versionID() == id else {
            throw KilnError(.invalidInput, "the manifest served for \(id) has another digest")
        }
        let staging = root.appending(path: "tmp/version-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: staging.appending(path: "weights"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: staging) }
        for layer in manifest.layers {
            if layer.kind == .environment, layer.platform != platform { continue }
            let blob = root.appending(path: "tmp/blob-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: blob) }
            let digest = try await client.transfer {
                try await $0.downloadBlob(path: .init(id: worker, digest: .init(value1: layer.digest.description))).ok.body.binary
                    .write(to: blob)
            }
            guard digest == layer.digest.hex else {
                throw KilnError(.invalidInput, "blob \(layer.digest) arrived with digest sha256:\(digest)")
            }
            switch layer.kind {
            case .code:
                try SafeUnpacker.unpack(blob, into: staging.appending(path: "code"), expected: layer.digest)
            case .environment:
                try SafeUnpacker.unpack(blob, into: staging.appending(path: "env"), expected: layer.digest)
            case .weights:
                let path = staging.appending(path: "weights/\(layer.path ?? layer.digest.hex)")
                try FileManager.default.createDirectory(at: path.deletingLastPathComponent(), withIntermediateDirectories: true)
                try FileManager.default.moveItem(at: blob, to: path)
            }
        }
        try JSONEncoder().encode(manifest).write(to: staging.appending(path: "manifest.json"))
        if rename(staging.path, target.path) != 0, !FileManager.default.fileExists(atPath: manifestFile.path) {
            throw KilnError(.internal, "cannot move version \(id.short) into the cache (errno \(errno))")
        }
        return try layout(id, manifest: manifest)
    }

    private func layout(_ id: KilnCore.Digest, manifest: ModelManifest) throws -> PreparedVersion {
        let base = folder(id)
        let environment = base.appending(path: "env")
        return PreparedVersion(
            id: id, manifest: manifest, code: base.appending(path: "code"),
            environment: FileManager.default.fileExists(atPath: environment.path) ? environment : nil,
            weights: base.appending(path: "weights"))
    }

    /// Removes least recently used versions until the cache fits its budget.
    private func evict(keeping: Set<KilnCore.Digest>) throws {
        let manager = FileManager.default
        let versions = root.appending(path: "versions")
        var entries: [(URL, Date, Int64)] = []
        for name in try manager.contentsOfDirectory(atPath: versions.path) {
            let url = versions.appending(path: name)
            let used = (try? manager.attributesOfItem(atPath: url.path)[.modificationDate] as? Date) ?? .distantPast
            entries.append((url, used ?? .distantPast, Self.size(of: url)))
        }
        var total = entries.reduce(0) { $0 + $1.2 }
        for (url, _, size) in entries.sorted(by: { $0.1 < $1.1 }) where total > budgetBytes {
            guard let digest = KilnCore.Digest(hex: url.lastPathComponent), !keeping.contains(digest) else { continue }
            // Out of the versions folder first, in one rename, so a crash never leaves half a version.
            let doomed = root.appending(path: "tmp/evicted-\(UUID().uuidString)")
            guard rename(url.path, doomed.path) == 0 else { continue }
            try? manager.removeItem(at: doomed)
            total -= size
        }
    }

    static func size(of folder: URL) -> Int64 {
        let manager = FileManager.default
        let paths = (try? manager.subpathsOfDirectory(atPath: folder.path)) ?? []
        return paths.reduce(0) { total, path in
            let attributes = try? manager.attributesOfItem(atPath: folder.appending(path: path).path)
            return total + ((attributes?[.size] as? NSNumber)?.int64Value ?? 0)
        }
    }
}
