import Foundation
import KilnCore
import NIOCore

/// Where media and model blobs live (DESIGN §6): the file system when embedded, any
/// S3-compatible store at scale. Keys are `/`-separated paths of safe characters.
public protocol ObjectStore: Sendable {
    /// Streams `body` into `key`, atomically: readers see the whole object or none of it.
    ///
    /// - Parameters:
    ///   - maxBytes: refuse (and store nothing) past this many bytes.
    ///   - expectedSHA256: when given, the hex digest the bytes must have; otherwise nothing is stored.
    /// - Returns: the size and hex SHA-256 of what was stored.
    /// - Throws: `.payloadTooLarge` past `maxBytes`; `.invalidInput` on a digest mismatch.
    func put<Body: AsyncSequence & Sendable>(_ key: String, body: Body, maxBytes: Int64, expectedSHA256: String?) async throws
        -> StoredObject
    where Body.Element == ByteBuffer

    /// The object's bytes, in chunks; only `range` of them when given (clamped to the object).
    /// - Throws: `.notFound`; `.invalidInput` for a range that starts past the end.
    func get(_ key: String, range: ClosedRange<Int64>?) async throws -> AsyncThrowingStream<ByteBuffer, any Error>

    /// Size of the object, or nil when absent (a HEAD).
    func size(of key: String) async throws -> Int64?

    /// The keys under `prefix`, sorted.
    func list(prefix: String) async throws -> [String]

    /// Removes the object; removing an absent one is not an error.
    func delete(_ key: String) async throws

    /// A URL that fetches the object with a plain `GET` for `expiresIn` seconds, with no
    /// credentials, or nil when the store cannot make one (the file system): the server then
    /// serves the bytes itself. Workers download blobs through such URLs (DESIGN §6).
    /// - Throws: `.invalidInput` for a key that is not valid or an expiry the store cannot give.
    func presignedGetURL(for key: String, expiresIn: Int) async throws -> URL?
}

extension ObjectStore {
    public func presignedGetURL(for key: String, expiresIn: Int) async throws -> URL? { nil }

    public func get(_ key: String) async throws -> AsyncThrowingStream<ByteBuffer, any Error> {
        try await get(key, range: nil)
    }

    public func put<Body: AsyncSequence & Sendable>(_ key: String, body: Body, maxBytes: Int64) async throws -> StoredObject
    where Body.Element == ByteBuffer {
        try await put(key, body: body, maxBytes: maxBytes, expectedSHA256: nil)
    }
}

public struct StoredObject: Hashable, Sendable {
    public var size: Int64
    public var sha256: String

    public init(size: Int64, sha256: String) {
        self.size = size
        self.sha256 = sha256
    }
}

public enum ObjectKey {
    /// Letters, digits, `-`, `_`, `.` in `/`-separated segments, none of them `.` or `..`.
    public static func isValid(_ key: String) -> Bool {
        guard !key.isEmpty, key.utf8.count <= 1024 else { return false }
        let segments = key.split(separator: "/", omittingEmptySubsequences: false)
        return segments.allSatisfy { segment in
            !segment.isEmpty && segment != "." && segment != ".."
                && segment.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0) }
        }
    }
}
