import Foundation
import KilnAPI
import KilnCore
import Testing

@testable import KilnWorker

@Suite("Version cache")
struct VersionCacheTests {
    static func scratch() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appending(path: "kiln-cache-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// A cache on `root`; its client is never called here.
    static func cache(_ root: URL) throws -> VersionCache {
        try VersionCache(
            root: root, budgetBytes: 1 << 30, platform: "cpu", client: try KilnAPIClient(server: "http://127.0.0.1:9", key: "unused"),
            workerID: WorkerID.random())
    }

    static func write(_ text: String, _ url: URL) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url)
    }

    @Test("a worker starting on its cache sweeps what its last run left: half-fetched versions, job folders, scratch")
    func sweepsLeftovers() throws {
        let root = try Self.scratch()
        let version = root.appending(path: "versions/\(String(repeating: "a", count: 64))")
        try Self.write("{}", version.appending(path: "manifest.json"))
        try Self.write("old output", root.appending(path: "jobs/gen_old-1/outputs/video.mp4"))
        try Self.write("tmp", root.appending(path: "scratch/\(UUID().uuidString)/x"))
        try Self.write("half", root.appending(path: "tmp/version-1/code/predict.py"))
        // Read-only leftovers too, as an interrupted unpack leaves them.
        chmod(root.appending(path: "tmp/version-1/code/predict.py").path, 0o444)
        chmod(root.appending(path: "tmp/version-1/code").path, 0o555)
        _ = try Self.cache(root)
        let manager = FileManager.default
        #expect(!manager.fileExists(atPath: root.appending(path: "jobs/gen_old-1").path))
        let scratch = (try? manager.contentsOfDirectory(atPath: root.appending(path: "scratch").path)) ?? []
        #expect(scratch.isEmpty)
        #expect(!manager.fileExists(atPath: root.appending(path: "tmp/version-1").path))
        #expect(manager.fileExists(atPath: version.appending(path: "manifest.json").path), "cached versions stay")
    }

    @Test("a sealed version is intact until anything in it changes: content, mode, or a file replaced with the same times")
    func sealBreaksOnAnyChange() async throws {
        let root = try Self.scratch()
        let cache = try Self.cache(root)
        let parsed: KilnCore.Digest? = KilnCore.Digest(hex: String(repeating: "b", count: 64))
        let id = try #require(parsed)
        let folder = root.appending(path: "versions/\(id.hex)")
        let code = folder.appending(path: "code/predict.py")
        try Self.write("x = 1\n", code)
        try Self.write("{}", folder.appending(path: "manifest.json"))
        func seal() throws { try #require(VersionCache.seal(of: folder)).write(to: root.appending(path: "seals/\(id.hex)")) }
        try seal()
        #expect(await cache.isIntact(id))

        // Other bytes of the same size, written back with the old modification time: the change
        // time still moved.
        let attributes = try FileManager.default.attributesOfItem(atPath: code.path)
        try Self.write("x = 2\n", code)
        try FileManager.default.setAttributes([.modificationDate: attributes[.modificationDate]!], ofItemAtPath: code.path)
        #expect(await !cache.isIntact(id))

        try seal()
        #expect(await cache.isIntact(id))
        chmod(code.path, 0o600)
        #expect(await !cache.isIntact(id), "a changed mode breaks it too")

        try seal()
        try FileManager.default.removeItem(at: root.appending(path: "seals/\(id.hex)"))
        #expect(await !cache.isIntact(id), "a version without a seal is not trusted")
    }
}
