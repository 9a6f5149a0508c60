import Foundation
import KilnCore
import NIOCore
import Testing

@testable import KilnObjects

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// What only the S3 backend does, against the S3-compatible test endpoint (``S3TestEndpoint``).
@Suite("S3 object store", .enabled(if: S3TestEndpoint.isEnabled))
struct S3ObjectStoreTests {
    static let mebibyte = 1024 * 1024
    /// 12 MiB: three parts of 5 MiB, the last one short.
    static let large: [UInt8] = (0..<(12 * mebibyte)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 11) }

    var large: [UInt8] { Self.large }

    @Test("a body larger than a part goes up in parts and comes back whole")
    func multipartRoundTrip() async throws {
        let store = try await S3TestEndpoint.makeStore(partSize: 5 * Self.mebibyte)
        let stored = try await store.put("blobs/large", body: Chunks(bytes: large, chunk: 64 * 1024), maxBytes: Int64(large.count))
        #expect(stored == StoredObject(size: Int64(large.count), sha256: sha256Hex(large)))
        #expect(try await collect(store.get("blobs/large")) == large)
        #expect(try await store.size(of: "blobs/large") == Int64(large.count))
        let acrossParts = Int64(5 * Self.mebibyte - 10)...Int64(5 * Self.mebibyte + 10)
        #expect(try await collect(store.get("blobs/large", range: acrossParts)) == Array(large[Int(acrossParts.lowerBound)...Int(acrossParts.upperBound)]))
        #expect(try await store.pendingUploads().isEmpty)
    }

    @Test("a multipart body with the wrong digest, or past the limit, leaves no object and no pending upload")
    func refusedMultipartLeavesNothing() async throws {
        let store = try await S3TestEndpoint.makeStore(partSize: 5 * Self.mebibyte)
        let wrongDigest = await #expect(throws: KilnError.self) {
            _ = try await store.put(
                "blobs/wrong", body: Chunks(bytes: large, chunk: 64 * 1024), maxBytes: Int64(large.count),
                expectedSHA256: String(repeating: "0", count: 64))
        }
        #expect(wrongDigest?.code == .invalidInput)
        let tooLarge = await #expect(throws: KilnError.self) {
            _ = try await store.put("blobs/big", body: Chunks(bytes: large, chunk: 64 * 1024), maxBytes: Int64(11 * Self.mebibyte))
        }
        #expect(tooLarge?.code == .payloadTooLarge)
        #expect(try await store.size(of: "blobs/wrong") == nil)
        #expect(try await store.size(of: "blobs/big") == nil)
        #expect(try await store.list(prefix: "").isEmpty)
        #expect(try await store.pendingUploads().isEmpty)
    }

    @Test("a part size below S3's minimum is raised to it: the service refuses smaller parts")
    func smallPartSizeIsRaised() async throws {
        let store = try await S3TestEndpoint.makeStore(partSize: 1024)
        let body = Array(large.prefix(6 * Self.mebibyte))
        let stored = try await store.put("blobs/six", body: Chunks(bytes: body, chunk: 64 * 1024), maxBytes: 1 << 30)
        #expect(stored.sha256 == sha256Hex(body))
        #expect(try await collect(store.get("blobs/six")) == body)
    }

    @Test("a presigned URL fetches the object with a plain GET, no credentials or headers")
    func presignedDownload() async throws {
        let store = try await S3TestEndpoint.makeStore(on: S3TestEndpoint.open, keyPrefix: "kiln/")
        let bytes: [UInt8] = Array("a blob for a worker".utf8)
        _ = try await store.put("blobs/sha256/ab", body: Chunks(bytes: bytes), maxBytes: 100)
        // Through the protocol, as the server asks for it.
        let erased: any ObjectStore = store
        let url = try #require(try await erased.presignedGetURL(for: "blobs/sha256/ab", expiresIn: 300))
        #expect(url.path == "/\(store.configuration.bucket)/kiln/blobs/sha256/ab")
        #expect(url.query?.contains("X-Amz-Expires=300") == true)
        let (data, response) = try await URLSession.shared.data(from: url)
        #expect((response as? HTTPURLResponse)?.statusCode == 200)
        #expect(Array(data) == bytes)
        // Stored as opaque bytes: the type the worker API's blob download declares.
        #expect((response as? HTTPURLResponse)?.value(forHTTPHeaderField: "Content-Type") == "application/octet-stream")
    }

    @Test("a presigned URL is refused for a bad key or an expiry S3 would not honour")
    func presignedURLLimits() throws {
        let configuration = S3Configuration(
            bucket: "kiln", endpoint: URL(string: "http://127.0.0.1:9000"), credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "s"))
        let store = try S3ObjectStore(configuration: configuration)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        #expect(throws: KilnError.self) { try store.presignedGetURL(for: "../x", expiresIn: 60, now: now) }
        #expect(throws: KilnError.self) { try store.presignedGetURL(for: "x", expiresIn: 0, now: now) }
        #expect(throws: KilnError.self) { try store.presignedGetURL(for: "x", expiresIn: 7 * 24 * 3600 + 1, now: now) }
        let url = try store.presignedGetURL(for: "a/b", expiresIn: 60, now: now)
        #expect(url.absoluteString.hasPrefix("http://127.0.0.1:9000/kiln/a/b?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2F20270115%2Fus-east-1%2Fs3%2Faws4_request"))
    }

    @Test("every kind of request passes the service's signature check")
    func signedRequests() async throws {
        let store = try await S3TestEndpoint.makeStore()
        let bytes: [UInt8] = Array("signed all the way".utf8)
        _ = try await store.put("files/a", body: Chunks(bytes: bytes), maxBytes: 100)
        #expect(try await collect(store.get("files/a")) == bytes)
        #expect(try await collect(store.get("files/a", range: 7...9)) == Array(bytes[7...9]))
        #expect(try await store.size(of: "files/a") == Int64(bytes.count))
        #expect(try await store.size(of: "files/b") == nil)
        #expect(try await store.list(prefix: "") == ["files/a"])
        try await store.delete("files/a")
        try await store.delete("files/a")
        #expect(try await store.list(prefix: "").isEmpty)
        let missing = await #expect(throws: KilnError.self) { _ = try await store.get("files/a") }
        #expect(missing?.code == .notFound)
    }

    @Test("a bucket outside us-east-1: created with its location, requests signed for its region")
    func otherRegion() async throws {
        let server = try await S3TestEndpoint.signatureChecking.value
        var configuration = server.configuration(bucket: S3TestEndpoint.newBucketName())
        configuration.region = "eu-west-1"
        let store = try S3ObjectStore(configuration: configuration)
        try await store.createBucket()
        try await store.createBucket()
        _ = try await store.put("files/a", body: Chunks(bytes: [1, 2, 3]), maxBytes: 10)
        #expect(try await collect(store.get("files/a")) == [1, 2, 3])
    }

    @Test("a wrong secret key gets an error naming S3's error code and the bucket")
    func wrongSecret() async throws {
        let store = try await S3TestEndpoint.makeStore()
        var configuration = store.configuration
        configuration.credentials.secretAccessKey = "not-the-secret"
        let impostor = try S3ObjectStore(configuration: configuration)
        let error = await #expect(throws: KilnError.self) { _ = try await impostor.put("x", body: Chunks(bytes: [1, 2, 3]), maxBytes: 10) }
        #expect(error?.message.contains("SignatureDoesNotMatch") == true, "\(error.map { "\($0)" } ?? "")")
        #expect(error?.message.contains(configuration.bucket) == true)
        #expect(try await store.size(of: "x") == nil)
    }

    @Test("a missing bucket is named, not mistaken for a missing object")
    func missingBucket() async throws {
        let server = try await S3TestEndpoint.signatureChecking.value
        let store = try S3ObjectStore(configuration: server.configuration(bucket: S3TestEndpoint.newBucketName()))
        let error = await #expect(throws: KilnError.self) { _ = try await store.get("x") }
        #expect(error?.code != .notFound)
        #expect(error?.message.contains("NoSuchBucket") == true, "\(error.map { "\($0)" } ?? "")")
    }

    @Test("a listing longer than one page (1000 keys) follows the continuation tokens")
    func longListing() async throws {
        let store = try await S3TestEndpoint.makeStore(on: S3TestEndpoint.open)
        let keys = (0..<1001).map { "many/\($0)" }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, key) in keys.enumerated() {
                if index >= 16 { try await group.next() }
                group.addTask { _ = try await store.put(key, body: Chunks(bytes: [1]), maxBytes: 1) }
            }
            try await group.waitForAll()
        }
        #expect(try await store.list(prefix: "many/") == keys.sorted())
    }

    @Test("a key prefix keeps the store's keys under it, and out of its listings")
    func keyPrefix() async throws {
        let whole = try await S3TestEndpoint.makeStore(on: S3TestEndpoint.open)
        var configuration = whole.configuration
        configuration.keyPrefix = "tenant/a/"
        let tenant = try S3ObjectStore(configuration: configuration)
        _ = try await tenant.put("files/x", body: Chunks(bytes: [1, 2, 3]), maxBytes: 10)
        _ = try await whole.put("files/y", body: Chunks(bytes: [4]), maxBytes: 10)
        #expect(try await tenant.list(prefix: "") == ["files/x"])
        #expect(try await whole.list(prefix: "") == ["files/y", "tenant/a/files/x"])
        #expect(try await collect(whole.get("tenant/a/files/x")) == [1, 2, 3])
    }
}

@Suite("S3 configuration")
struct S3ConfigurationTests {
    let environment = ["AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret"]

    @Test("an s3:// URL gives the bucket, prefix, endpoint and region; credentials come from the environment")
    func parses() throws {
        let configuration = try S3Configuration(
            url: "s3://kiln-blobs/prod/objects/?endpoint=http://127.0.0.1:9000&region=eu-west-1",
            environment: environment.merging(["AWS_SESSION_TOKEN": "token"]) { $1 })
        #expect(configuration.bucket == "kiln-blobs")
        #expect(configuration.keyPrefix == "prod/objects/")
        #expect(configuration.endpoint == URL(string: "http://127.0.0.1:9000"))
        #expect(configuration.region == "eu-west-1")
        #expect(configuration.credentials == S3Credentials(accessKeyID: "AKID", secretAccessKey: "secret", sessionToken: "token"))
    }

    @Test("without parameters: AWS, the region from AWS_REGION or us-east-1; given credentials win")
    func defaults() throws {
        let plain = try S3Configuration(url: "s3://kiln-blobs", environment: environment)
        #expect(plain.keyPrefix == "")
        #expect(plain.endpoint == nil)
        #expect(plain.region == "us-east-1")
        #expect(try S3Configuration(url: "s3://kiln-blobs", environment: environment.merging(["AWS_REGION": "ap-south-1"]) { $1 }).region == "ap-south-1")
        let given = S3Credentials(accessKeyID: "other", secretAccessKey: "other-secret")
        #expect(try S3Configuration(url: "s3://kiln-blobs", credentials: given, environment: [:]).credentials == given)
    }

    @Test(
        "bad URLs are refused with a message naming the problem",
        arguments: [
            ("https://kiln-blobs/x", "s3://"),
            ("s3:///prefix", "names no bucket"),
            ("s3://Kiln_Blobs", "is not a valid S3 bucket name"),
            ("s3://kiln-blobs/a/../b", "not a valid key prefix"),
            ("s3://kiln-blobs?endpont=http://x", "unknown parameter 'endpont'"),
            ("s3://kiln-blobs?endpoint=ftp://x", "endpoint 'ftp://x'"),
            ("s3://kiln-blobs?region=", "region"),
        ])
    func refusesBadURLs(_ url: String, _ message: String) {
        let error = #expect(throws: KilnError.self) { try S3Configuration(url: url, environment: environment) }
        #expect(error?.code == .invalidInput)
        #expect(error?.message.contains(message) == true, "\(error?.message ?? "")")
    }

    @Test("missing credentials name the variables to set")
    func missingCredentials() {
        let error = #expect(throws: KilnError.self) { try S3Configuration(url: "s3://kiln-blobs", environment: ["AWS_ACCESS_KEY_ID": "AKID"]) }
        #expect(error?.message.contains("AWS_SECRET_ACCESS_KEY") == true)
    }
}
