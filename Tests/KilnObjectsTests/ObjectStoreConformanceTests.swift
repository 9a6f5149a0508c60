import Crypto
import Foundation
import KilnCore
import KilnObjects
import NIOCore
import Testing

/// The backends every conformance test runs against. S3 runs against the S3-compatible test
/// endpoint (``S3TestEndpoint``), a bucket a test, on the server that does not check signatures
/// (the S3 suite checks them).
enum ObjectBackend: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case fileSystem
    case s3
    var testDescription: String { rawValue }

    /// The backends this run can test: S3 where its test endpoint is installed or required.
    static let enabled: [ObjectBackend] = allCases.filter { $0 != .s3 || S3TestEndpoint.isEnabled }

    func make() async throws -> any ObjectStore {
        switch self {
        case .fileSystem:
            try FileSystemObjectStore(root: FileManager.default.temporaryDirectory.appending(path: "kiln-objects-\(UUID().uuidString)"))
        case .s3:
            try await S3TestEndpoint.makeStore(on: S3TestEndpoint.open)
        }
    }
}

/// A body in chunks of `chunk` bytes.
struct Chunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let bytes: [UInt8]
    var chunk = 4096

    struct AsyncIterator: AsyncIteratorProtocol {
        let bytes: [UInt8]
        let chunk: Int
        var offset = 0
        mutating func next() async -> ByteBuffer? {
            guard offset < bytes.count else { return nil }
            defer { offset += chunk }
            return ByteBuffer(bytes: bytes[offset..<Swift.min(offset + chunk, bytes.count)])
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(bytes: bytes, chunk: chunk) }
}

func collect(_ stream: AsyncThrowingStream<ByteBuffer, any Error>) async throws -> [UInt8] {
    var result: [UInt8] = []
    for try await buffer in stream { result += buffer.readableBytesView }
    return result
}

func sha256Hex(_ bytes: [UInt8]) -> String {
    SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}

@Suite("ObjectStore conformance")
struct ObjectStoreConformanceTests {
    let payload: [UInt8] = (0..<100_000).map { UInt8(($0 * 7 + 3) % 251) }

    @Test("put streams, hashes and stores; get returns the same bytes", arguments: ObjectBackend.enabled)
    func roundTrip(_ backend: ObjectBackend) async throws {
        let store = try await backend.make()
        let stored = try await store.put("files/a", body: Chunks(bytes: payload), maxBytes: 1 << 20)
        #expect(stored.size == Int64(payload.count))
        #expect(stored.sha256 == sha256Hex(payload))
        #expect(try await collect(store.get("files/a")) == payload)
        #expect(try await store.size(of: "files/a") == Int64(payload.count))
        #expect(try await store.size(of: "files/missing") == nil)
    }

    @Test("an empty body is an object of no bytes", arguments: ObjectBackend.enabled)
    func emptyObject(_ backend: ObjectBackend) async throws {
        let store = try await backend.make()
        let stored = try await store.put("files/empty", body: Chunks(bytes: []), maxBytes: 10, expectedSHA256: sha256Hex([]))
        #expect(stored == StoredObject(size: 0, sha256: sha256Hex([])))
        #expect(try await collect(store.get("files/empty")).isEmpty)
        #expect(try await store.size(of: "files/empty") == 0)
        #expect(try await store.list(prefix: "files/") == ["files/empty"])
    }

    @Test("ranged gets return exactly the bytes asked for", arguments: ObjectBackend.enabled)
    func ranges(_ backend: ObjectBackend) async throws {
        let store = try await backend.make()
        _ = try await store.put("blob", body: Chunks(bytes: payload), maxBytes: 1 << 20)
        #expect(try await collect(store.get("blob", range: 10...19)) == Array(payload[10...19]))
        #expect(try await collect(store.get("blob", range: 99_990...200_000)) == Array(payload[99_990...]))
        await #expect(throws: KilnError.self) { _ = try await store.get("blob", range: 100_000...100_010) }
    }

    @Test("a body past the limit or with the wrong digest stores nothing, not even part", arguments: ObjectBackend.enabled)
    func refusedPutsLeaveNothing(_ backend: ObjectBackend) async throws {
        let store = try await backend.make()
        await #expect(throws: KilnError.self) { _ = try await store.put("big", body: Chunks(bytes: payload), maxBytes: 50_000) }
        await #expect(throws: KilnError.self) {
            _ = try await store.put("wrong", body: Chunks(bytes: payload), maxBytes: 1 << 20, expectedSHA256: String(repeating: "0", count: 64))
        }
        #expect(try await store.size(of: "big") == nil)
        #expect(try await store.size(of: "wrong") == nil)
        #expect(try await store.list(prefix: "").isEmpty)
        let right = try await store.put("right", body: Chunks(bytes: payload), maxBytes: 1 << 20, expectedSHA256: sha256Hex(payload))
        #expect(right.size == Int64(payload.count))
    }

    @Test("concurrent writers of one key leave one whole object, never a mix", arguments: ObjectBackend.enabled)
    func concurrentWriters(_ backend: ObjectBackend) async throws {
        let store = try await backend.make()
        let bodies: [[UInt8]] = (0..<8).map { writer in [UInt8](repeating: UInt8(writer), count: 200_000) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for body in bodies {
                group.addTask { _ = try await store.put("blobs/same", body: Chunks(bytes: body, chunk: 1000), maxBytes: 1 << 20) }
            }
            try await group.waitForAll()
        }
        let result = try await collect(store.get("blobs/same"))
        #expect(bodies.contains(result))
    }

    @Test("list by prefix is sorted; delete removes and is idempotent", arguments: ObjectBackend.enabled)
    func listAndDelete(_ backend: ObjectBackend) async throws {
        let store = try await backend.make()
        for key in ["blobs/sha256/bb", "blobs/sha256/aa", "files/x"] {
            _ = try await store.put(key, body: Chunks(bytes: [1, 2, 3]), maxBytes: 10)
        }
        #expect(try await store.list(prefix: "blobs/") == ["blobs/sha256/aa", "blobs/sha256/bb"])
        try await store.delete("blobs/sha256/aa")
        try await store.delete("blobs/sha256/aa")
        #expect(try await store.list(prefix: "blobs/") == ["blobs/sha256/bb"])
        await #expect(throws: KilnError.self) { _ = try await store.get("blobs/sha256/aa") }
    }

    @Test("keys that could escape the store are refused", arguments: ObjectBackend.enabled)
    func badKeys(_ backend: ObjectBackend) async throws {
        let store = try await backend.make()
        for key in ["../x", "/etc/passwd", "a//b", "a/./b", "", "a/../../b"] {
            await #expect(throws: KilnError.self, "\(key)") { _ = try await store.put(key, body: Chunks(bytes: [1]), maxBytes: 10) }
        }
    }
}

@Suite("File-system object store")
struct FileSystemObjectStoreTests {
    @Test("what a put that died left in .tmp is gone when the store opens again; the objects stay")
    func sweepsTemporaryFiles() async throws {
        let root = FileManager.default.temporaryDirectory.appending(path: "kiln-objects-\(UUID().uuidString)")
        let store = try FileSystemObjectStore(root: root)
        _ = try await store.put("files/kept", body: Chunks(bytes: [1, 2, 3]), maxBytes: 10)
        let leftover = root.appending(path: ".tmp/\(UUID().uuidString)")
        #expect(FileManager.default.createFile(atPath: leftover.path, contents: Data(repeating: 9, count: 100)))
        let reopened = try FileSystemObjectStore(root: root)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root.appending(path: ".tmp").path).isEmpty)
        #expect(try await reopened.list(prefix: "") == ["files/kept"])
    }

    @Test("the file system cannot presign: the server serves its blobs itself")
    func noPresignedURLs() async throws {
        let store: any ObjectStore = try FileSystemObjectStore(
            root: FileManager.default.temporaryDirectory.appending(path: "kiln-objects-\(UUID().uuidString)"))
        _ = try await store.put("files/kept", body: Chunks(bytes: [1, 2, 3]), maxBytes: 10)
        #expect(try await store.presignedGetURL(for: "files/kept", expiresIn: 60) == nil)
    }
}
