import Crypto
import Foundation
#if canImport(Glibc)
    import CoreFoundation
    import Glibc
#endif
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
///
/// A cached version is read-only, and sealed: the seal (kept outside the version's folder) is a
/// digest of every entry's type, size, mode, inode and modification and change times. Any change
/// to a file changes its change time, which no process can set back, so a version whose folder no
/// longer matches its seal (a job rewrote its own `predict.py`) is fetched again rather than run
/// under its digest.
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
        // What a previous run left half done is of no use: half-fetched versions, the folders of
        // jobs it ran (their leases are long gone), its runtimes' scratch folders.
        for leftover in ["tmp", "jobs", "scratch"] { Self.remove(root.appending(path: leftover)) }
        try FileManager.default.createDirectory(at: root.appending(path: "versions"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: root.appending(path: "seals"), withIntermediateDirectories: true)
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
    private func sealFile(_ id: KilnCore.Digest) -> URL { root.appending(path: "seals/\(id.hex)") }

    /// Whether the cached version still matches the seal it was given when it was unpacked.
    public func isIntact(_ id: KilnCore.Digest) -> Bool {
        guard let expected = try? Data(contentsOf: sealFile(id)), let actual = Self.seal(of: folder(id)) else { return false }
        return expected == actual
    }

    private func fetch(_ id: KilnCore.Digest) async throws -> PreparedVersion {
        let target = folder(id)
        let manifestFile = target.appending(path: "manifest.json")
        if FileManager.default.fileExists(atPath: target.path) {
            if isIntact(id), let data = try? Data(contentsOf: manifestFile) {
                try? FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: target.path)
                return try layout(id, manifest: JSONDecoder().decode(ModelManifest.self, from: data))
            }
            // Changed since it was unpacked (or never sealed): not the version its digest names.
            discard(target)
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
        defer { Self.remove(staging) }
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
        // Read-only below its root (which stays writable until it is in place: a folder moved to
        // another parent must be writable).
        Self.setWritable(false, under: staging)
        guard rename(staging.path, target.path) == 0 else {
            throw KilnError(.internal, "cannot move version \(id.short) into the cache (errno \(errno))")
        }
        chmod(target.path, 0o555)
        guard let seal = Self.seal(of: target) else { throw KilnError(.internal, "cannot seal version \(id.short)") }
        try seal.write(to: sealFile(id), options: .atomic)
        return try layout(id, manifest: manifest)
    }

    /// Moves a version out of the versions folder (one rename, so a crash never leaves half of it)
    /// and removes it.
    private func discard(_ url: URL) {
        if let digest = KilnCore.Digest(hex: url.lastPathComponent) { try? FileManager.default.removeItem(at: sealFile(digest)) }
        let doomed = root.appending(path: "tmp/evicted-\(UUID().uuidString)")
        guard rename(url.path, doomed.path) == 0 else { return }
        Self.remove(doomed)
    }

    /// The seal of a version's folder: a digest of every entry below it (path, type, size, mode,
    /// inode, modification and change times), in path order; nil when it cannot be read.
    static func seal(of folder: URL) -> Data? {
        guard let paths = entries(below: folder) else { return nil }
        var hasher = SHA256()
        for path in paths {
            var info = Glibc.stat()
            guard lstat(folder.appending(path: path).path, &info) == 0 else { return nil }
            let line =
                "\(path)\u{0}\(info.st_mode) \(info.st_size) \(info.st_ino) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec) "
                + "\(info.st_ctim.tv_sec).\(info.st_ctim.tv_nsec)\n"
            hasher.update(data: Data(line.utf8))
        }
        return Data(hasher.finalize())
    }

    /// Turns the write bits of everything below `folder` off, or back on for its owner.
    static func setWritable(_ writable: Bool, under folder: URL) {
        for path in entries(below: folder) ?? [] {
            let url = folder.appending(path: path).path
            var info = Glibc.stat()
            guard lstat(url, &info) == 0, info.st_mode & S_IFMT != S_IFLNK else { continue }
            let mode = info.st_mode & 0o7777
            chmod(url, writable ? mode | 0o200 : mode & ~0o222)
        }
    }

    /// Every entry below `folder`, in path order, links not followed; nil when it cannot be read.
    static func entries(below folder: URL) -> [String]? {
        var result: [String] = []
        func walk(_ prefix: String) -> Bool {
            let directory = prefix.isEmpty ? folder : folder.appending(path: prefix)
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path) else { return false }
            for name in names.sorted() {
                let path = prefix.isEmpty ? name : prefix + "/" + name
                result.append(path)
                var info = Glibc.stat()
                guard lstat(folder.appending(path: path).path, &info) == 0 else { return false }
                if info.st_mode & S_IFMT == S_IFDIR, !walk(path) { return false }
            }
            return true
        }
        return walk("") ? result : nil
    }

    /// Removes a folder that may hold read-only parts.
    static func remove(_ folder: URL) {
        chmod(folder.path, 0o755)
        setWritable(true, under: folder)
        try? FileManager.default.removeItem(at: folder)
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
            discard(url)
            total -= size
        }
    }

    static func size(of folder: URL) -> Int64 {
        (entries(below: folder) ?? []).reduce(0) { total, path in
            var info = Glibc.stat()
            return total + (lstat(folder.appending(path: path).path, &info) == 0 ? Int64(info.st_size) : 0)
        }
    }
}
