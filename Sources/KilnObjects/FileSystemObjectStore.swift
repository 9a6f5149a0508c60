import Crypto
import Foundation
import KilnCore
import NIOCore

/// The embedded ``ObjectStore``: one file per object under a root folder. A put streams into a
/// temporary file beside its target, hashing as it goes, syncs it, renames it into place and syncs
/// the folders on the way, so concurrent writers of one key never expose a partial object and an
/// acknowledged put survives a power loss. One process owns a root: what a put that died left in
/// `.tmp` is removed when the store opens.
public struct FileSystemObjectStore: ObjectStore {
    public let root: URL

    public init(root: URL) throws {
        self.root = root
        let temporary = root.appending(path: ".tmp")
        try? FileManager.default.removeItem(at: temporary)
        try FileManager.default.createDirectory(at: temporary, withIntermediateDirectories: true)
    }

    public func put<Body: AsyncSequence & Sendable>(_ key: String, body: Body, maxBytes: Int64, expectedSHA256: String?)
        async throws -> StoredObject
    where Body.Element == ByteBuffer {
        let target = try url(for: key)
        let temporary = root.appending(path: ".tmp/\(UUID().uuidString)")
        guard FileManager.default.createFile(atPath: temporary.path, contents: nil) else {
            throw KilnError(.internal, "cannot create a temporary file in the object store")
        }
        var committed = false
        defer { if !committed { try? FileManager.default.removeItem(at: temporary) } }
        let handle = try FileHandle(forWritingTo: temporary)
        var hasher = SHA256()
        var size: Int64 = 0
        do {
            for try await buffer in body {
                size += Int64(buffer.readableBytes)
                guard size <= maxBytes else {
                    throw KilnError(.payloadTooLarge, "the body is larger than the limit of \(maxBytes) bytes")
                }
                buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                try handle.write(contentsOf: Data(buffer.readableBytesView))
            }
            try handle.synchronize()
            try handle.close()
        } catch {
            try? handle.close()
            throw error
        }
        let digest = hasher.finalize().hexString
        if let expectedSHA256, expectedSHA256 != digest {
            throw KilnError(.invalidInput, "the body's SHA-256 is \(digest), not the expected \(expectedSHA256)")
        }
        try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
        if rename(temporary.path, target.path) != 0 {
            throw KilnError(.internal, "cannot move an object into place: errno \(errno)")
        }
        committed = true
        // The rename is durable once the folder holding the entry is synced, and each folder
        // created for it once its own parent is.
        var folder = target.deletingLastPathComponent()
        while true {
            try Self.sync(folder: folder)
            guard folder.standardizedFileURL.path != root.standardizedFileURL.path, folder.pathComponents.count > 1 else { break }
            folder = folder.deletingLastPathComponent()
        }
        return StoredObject(size: size, sha256: digest)
    }

    /// Flushes a folder's entries to disk.
    static func sync(folder: URL) throws {
        let descriptor = open(folder.path, O_RDONLY | O_DIRECTORY)
        guard descriptor >= 0 else { throw KilnError(.internal, "cannot open \(folder.path) to sync it: errno \(errno)") }
        defer { close(descriptor) }
        guard fsync(descriptor) == 0 else { throw KilnError(.internal, "cannot sync \(folder.path): errno \(errno)") }
    }

    public func get(_ key: String, range: ClosedRange<Int64>?) async throws -> AsyncThrowingStream<ByteBuffer, any Error> {
        let path = try url(for: key)
        guard let handle = try? FileHandle(forReadingFrom: path) else {
            throw KilnError(.notFound, "no object '\(key)'")
        }
        var remaining = Int64.max
        if let range {
            let size = try handle.seekToEnd()
            guard range.lowerBound >= 0, UInt64(range.lowerBound) < size else {
                try? handle.close()
                throw KilnError(.invalidInput, "the range \(range.lowerBound)-\(range.upperBound) starts past the end of '\(key)' (\(size) bytes)")
            }
            try handle.seek(toOffset: UInt64(range.lowerBound))
            remaining = min(range.upperBound, Int64(size) - 1) - range.lowerBound + 1
        }
        let limit = remaining
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    var left = limit
                    while left > 0, let chunk = try handle.read(upToCount: Int(min(256 * 1024, left))), !chunk.isEmpty {
                        try Task.checkCancellation()
                        left -= Int64(chunk.count)
                        continuation.yield(ByteBuffer(bytes: chunk))
                    }
                    try? handle.close()
                    continuation.finish()
                } catch {
                    try? handle.close()
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    public func size(of key: String) async throws -> Int64? {
        let attributes = try? FileManager.default.attributesOfItem(atPath: try url(for: key).path)
        return (attributes?[.size] as? NSNumber)?.int64Value
    }

    public func list(prefix: String) async throws -> [String] {
        guard prefix.isEmpty || ObjectKey.isValid(prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix) else {
            throw KilnError(.invalidInput, "'\(prefix)' is not a valid key prefix")
        }
        let all = (try? FileManager.default.subpathsOfDirectory(atPath: root.path)) ?? []
        return all.filter { path in
            guard path.hasPrefix(prefix), !path.hasPrefix(".tmp") else { return false }
            var isDirectory: ObjCBool = false
            FileManager.default.fileExists(atPath: root.appending(path: path).path, isDirectory: &isDirectory)
            return !isDirectory.boolValue
        }.sorted()
    }

    public func delete(_ key: String) async throws {
        try? FileManager.default.removeItem(at: try url(for: key))
    }

    private func url(for key: String) throws -> URL {
        guard ObjectKey.isValid(key) else { throw KilnError(.invalidInput, "'\(key)' is not a valid object key") }
        return root.appending(path: key)
    }
}
