import AsyncHTTPClient
import Crypto
import Foundation
import KilnCore
import NIOCore
import NIOHTTP1

/// The ``ObjectStore`` at scale: a bucket of any S3-compatible service, spoken to over HTTP with
/// requests signed by ``SigV4``, addressed path-style (`endpoint/bucket/key`).
///
/// A put streams and hashes its body. One that ends within a part (``S3Configuration/partSize``)
/// is checked against its limit and digest and then sent in one `PUT`, its SHA-256 signed. A
/// larger one becomes a multipart upload: parts go up as they fill, a few at a time, each with its
/// own SHA-256; the upload is completed only once the whole body's size and digest are checked, and
/// aborted on any failure, so a refused or failed put never leaves an object, not even a part.
///
/// The store does not own its ``HTTPClient`` (``HTTPClient/shared`` unless one is given): whoever
/// made the client shuts it down.
public struct S3ObjectStore: ObjectStore {
    public let configuration: S3Configuration
    private let client: HTTPClient
    private let signer: SigV4
    /// `scheme://host[:port]`, where requests go.
    private let origin: String
    /// The `Host` header, as signed.
    private let host: String
    /// The endpoint's own path, if any, before the bucket (no trailing `/`).
    private let basePath: String
    let partSize: Int
    let concurrentParts: Int
    private let timeout: TimeAmount

    /// - Throws: `.invalidInput` when the endpoint is not an http(s) URL with a host, or the bucket
    ///   name or key prefix is not valid.
    public init(configuration: S3Configuration, httpClient: HTTPClient = .shared) throws {
        guard S3Configuration.isValidBucketName(configuration.bucket) else {
            throw KilnError(.invalidInput, "'\(configuration.bucket)' is not a valid S3 bucket name")
        }
        guard configuration.keyPrefix.isEmpty
            || (configuration.keyPrefix.hasSuffix("/") && ObjectKey.isValid(String(configuration.keyPrefix.dropLast())))
        else {
            throw KilnError(.invalidInput, "'\(configuration.keyPrefix)' is not a valid key prefix: it must be a valid key followed by '/'")
        }
        if let endpoint = configuration.endpoint {
            guard let scheme = endpoint.scheme?.lowercased(), ["http", "https"].contains(scheme), let hostName = endpoint.host,
                !hostName.isEmpty
            else {
                throw KilnError(.invalidInput, "the S3 endpoint '\(endpoint.absoluteString)' is not an http:// or https:// URL with a host")
            }
            let defaultPort = scheme == "https" ? 443 : 80
            host = endpoint.port.map { $0 == defaultPort ? hostName : "\(hostName):\($0)" } ?? hostName
            origin = "\(scheme)://\(host)"
            basePath = endpoint.path.hasSuffix("/") ? String(endpoint.path.dropLast()) : endpoint.path
        } else {
            host = "s3.\(configuration.region).amazonaws.com"
            origin = "https://\(host)"
            basePath = ""
        }
        self.configuration = configuration
        self.client = httpClient
        self.signer = SigV4(credentials: configuration.credentials, region: configuration.region)
        self.partSize = max(configuration.partSize, S3Configuration.minimumPartSize)
        self.concurrentParts = max(configuration.concurrentParts, 1)
        let (seconds, attoseconds) = configuration.requestTimeout.components
        self.timeout = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    /// Creates the bucket, in the configured region; a bucket this account already owns is fine.
    /// - Throws: a ``KilnError`` naming the S3 error (`BucketAlreadyExists` when someone else owns it).
    public func createBucket() async throws {
        var body = ByteBuffer()
        if configuration.region != "us-east-1" {
            body.writeString(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>"
                    + configuration.region.xmlEscaped + "</LocationConstraint></CreateBucketConfiguration>")
        }
        let response = try await send("PUT", key: nil, body: body, action: "create the bucket")
        let answer = try await response.body.collect(upTo: Self.maximumErrorBody)
        if response.status.code == 409, (try? S3XMLDocument(answer))?.value("Error/Code") == "BucketAlreadyOwnedByYou" { return }
        guard response.status.code / 100 == 2 else { throw failure(response.status.code, answer, action: "create the bucket") }
    }

    // MARK: Get, size, list, delete

    public func get(_ key: String, range: ClosedRange<Int64>?) async throws -> AsyncThrowingStream<ByteBuffer, any Error> {
        try Self.validate(key)
        var headers: [(name: String, value: String)] = []
        if let range {
            guard range.lowerBound >= 0 else {
                throw KilnError(.invalidInput, "the range \(range.lowerBound)-\(range.upperBound) of '\(key)' starts before its first byte")
            }
            headers.append(("range", "bytes=\(range.lowerBound)-\(range.upperBound)"))
        }
        let action = "get '\(key)'"
        let response = try await send("GET", key: key, headers: headers, action: action)
        switch response.status.code {
        case 200, 206:
            break
        case 416:
            _ = try? await response.body.collect(upTo: Self.maximumErrorBody)
            let range = range.map { "\($0.lowerBound)-\($0.upperBound)" } ?? ""
            throw KilnError(.invalidInput, "the range \(range) starts past the end of '\(key)'")
        default:
            throw failure(response.status.code, try await response.body.collect(upTo: Self.maximumErrorBody), action: action, key: key)
        }
        let cursor = ResponseCursor(response.body.makeAsyncIterator())
        let bucket = configuration.bucket
        return AsyncThrowingStream(unfolding: {
            do {
                return try await cursor.next()
            } catch {
                throw KilnError(.unavailable, "reading '\(key)' from the S3 bucket '\(bucket)' failed: \(error)")
            }
        })
    }

    /// A response body read one buffer at a time, as the reader asks for them: the service is not
    /// read faster than the reader reads.
    ///
    /// Unchecked `Sendable`: only the stream ``get(_:range:)`` returns touches it, and that stream
    /// has one reader, which asks for one element at a time.
    private final class ResponseCursor: @unchecked Sendable {
        private var iterator: HTTPClientResponse.Body.AsyncIterator
        init(_ iterator: HTTPClientResponse.Body.AsyncIterator) { self.iterator = iterator }
        func next() async throws -> ByteBuffer? { try await iterator.next() }
    }

    public func size(of key: String) async throws -> Int64? {
        try Self.validate(key)
        let response = try await send("HEAD", key: key, action: "read the size of '\(key)'")
        switch response.status.code {
        case 200:
            guard let length = response.headers.first(name: "content-length").flatMap({ Int64($0) }) else {
                throw KilnError(.unavailable, "S3 gave no size for '\(key)' in the bucket '\(configuration.bucket)'")
            }
            return length
        case 404:
            return nil
        default:
            // A HEAD answer has no body to name the error: the status has to do.
            throw failure(response.status.code, ByteBuffer(), action: "read the size of '\(key)'")
        }
    }

    public func list(prefix: String) async throws -> [String] {
        guard prefix.isEmpty || ObjectKey.isValid(prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix) else {
            throw KilnError(.invalidInput, "'\(prefix)' is not a valid key prefix")
        }
        let action = "list the keys under '\(prefix)'"
        var keys: [String] = []
        var continuation: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", configuration.keyPrefix + prefix)]
            if let continuation { query.append(("continuation-token", continuation)) }
            let response = try await send("GET", key: nil, query: query, action: action)
            let page = try await document(response, action: action)
            keys += page.values("ListBucketResult/Contents/Key").map { String($0.dropFirst(configuration.keyPrefix.count)) }
            continuation = page.value("ListBucketResult/IsTruncated") == "true" ? page.value("ListBucketResult/NextContinuationToken") : nil
        } while continuation != nil
        return keys.sorted()
    }

    public func delete(_ key: String) async throws {
        try Self.validate(key)
        let action = "delete '\(key)'"
        let response = try await send("DELETE", key: key, action: action)
        let answer = try await response.body.collect(upTo: Self.maximumErrorBody)
        guard response.status.code / 100 == 2 || response.status.code == 404 else {
            throw failure(response.status.code, answer, action: action)
        }
    }

    // MARK: Presigned URLs

    /// The type every object is stored with: opaque bytes. A signed URL's answer carries it (what
    /// the worker API's blob download declares), rather than S3's default `binary/octet-stream`.
    static let storedContentType = "application/octet-stream"

    /// A URL that fetches `key` with a plain `GET`, no credentials nor headers, until `seconds`
    /// after `now`: what a worker downloads a blob through.
    ///
    /// - Throws: `.invalidInput` for a key that is not valid or an expiry outside 1 s to 7 days.
    public func presignedGetURL(for key: String, expiresIn seconds: Int, now: Date = Date()) throws -> URL {
        try Self.validate(key)
        guard (1...SigV4.maximumExpiry).contains(seconds) else {
            throw KilnError(.invalidInput, "a presigned URL expires after 1 to \(SigV4.maximumExpiry) seconds, not \(seconds)")
        }
        let request = SigV4.Request(method: "GET", host: host, path: path(for: key))
        let text = origin + SigV4.encodePath(request.path) + "?" + signer.presignedQuery(for: request, expiresIn: seconds, now: now)
        guard let url = URL(string: text) else {
            throw KilnError(.internal, "the presigned URL of '\(key)' does not parse: \(text)")
        }
        return url
    }

    public func presignedGetURL(for key: String, expiresIn seconds: Int) async throws -> URL? {
        try presignedGetURL(for: key, expiresIn: seconds, now: Date())
    }

    // MARK: Requests

    /// Error bodies and listings are read whole, up to this size.
    static let maximumErrorBody = 1024 * 1024
    static let maximumDocument = 16 * 1024 * 1024
    /// Tries of one request, the first included.
    private static let attempts = 4
    static let emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    static func validate(_ key: String) throws {
        guard ObjectKey.isValid(key) else { throw KilnError(.invalidInput, "'\(key)' is not a valid object key") }
    }

    /// `/basePath/bucket[/keyPrefix+key]`, not encoded.
    private func path(for key: String?) -> String {
        "\(basePath)/\(configuration.bucket)" + (key.map { "/\(configuration.keyPrefix)\($0)" } ?? "")
    }

    /// Signs and sends one request, again (up to ``attempts`` times in all, after a short pause)
    /// when the service answers 500, 502, 503 or 504, as S3 asks of its clients, or when an
    /// idempotent request could not reach it.
    ///
    /// - Parameters:
    ///   - key: the object, or nil for the bucket itself.
    ///   - sha256: the body's hex SHA-256 when the caller has it already.
    ///   - action: what the request does, for error messages (`put 'blobs/x'`).
    /// - Throws: `.unavailable` when the service cannot be reached or does not answer in time.
    func send(
        _ method: String, key: String?, query: [(name: String, value: String)] = [], headers: [(name: String, value: String)] = [],
        body: ByteBuffer? = nil, sha256: String? = nil, action: String
    ) async throws -> HTTPClientResponse {
        let signed = SigV4.Request(method: method, host: host, path: path(for: key), query: query, headers: headers)
        let payloadSHA256 = sha256 ?? body.map { $0.withUnsafeReadableBytes { SHA256.hash(data: $0) }.hexString } ?? Self.emptySHA256
        let canonicalQuery = SigV4.canonicalQuery(query)
        let url = origin + SigV4.encodePath(signed.path) + (canonicalQuery.isEmpty ? "" : "?" + canonicalQuery)
        var attempt = 1
        while true {
            var request = HTTPClientRequest(url: url)
            request.method = .init(rawValue: method)
            request.headers.add(name: "host", value: host)
            for header in signer.signedHeaders(for: signed, payloadSHA256: payloadSHA256, now: Date()) {
                request.headers.add(name: header.name, value: header.value)
            }
            if let body {
                request.headers.add(name: "content-length", value: String(body.readableBytes))
                request.body = .bytes(body)
            }
            do {
                let response = try await client.execute(request, timeout: timeout)
                guard attempt < Self.attempts, [500, 502, 503, 504].contains(response.status.code) else { return response }
                _ = try? await response.body.collect(upTo: Self.maximumErrorBody)
            } catch {
                guard attempt < Self.attempts, method != "POST", !Task.isCancelled else {
                    throw KilnError(.unavailable, "cannot \(action) in the S3 bucket '\(configuration.bucket)' at \(origin): \(error)")
                }
            }
            try await Task.sleep(for: .milliseconds(100 << attempt))
            attempt += 1
        }
    }

    /// Reads a successful answer's XML document.
    /// - Throws: the S3 error when the status is not 2xx or the document is an `Error`.
    func document(_ response: HTTPClientResponse, action: String) async throws -> S3XMLDocument {
        let body = try await response.body.collect(upTo: Self.maximumDocument)
        guard response.status.code / 100 == 2 else { throw failure(response.status.code, body, action: action) }
        let document = try S3XMLDocument(body)
        if document.root == "Error" { throw failure(response.status.code, body, action: action) }
        return document
    }

    func expectSuccess(_ response: HTTPClientResponse, action: String) async throws {
        let body = try await response.body.collect(upTo: Self.maximumErrorBody)
        guard response.status.code / 100 == 2 else { throw failure(response.status.code, body, action: action) }
    }

    /// The error for an S3 answer, naming the bucket, what was tried, S3's error code and message.
    ///
    /// - Parameter key: when given, a `NoSuchKey` (or a 404 without a body) is `.notFound` for it.
    func failure(_ status: UInt, _ body: ByteBuffer, action: String, key: String? = nil) -> KilnError {
        let document = try? S3XMLDocument(body)
        let code = document?.value("Error/Code")
        if let key, status == 404, code == nil || code == "NoSuchKey" {
            return KilnError(.notFound, "no object '\(key)'")
        }
        let detail = code.map { code in ": \(code)" + (document?.value("Error/Message").map { ", \($0)" } ?? "") } ?? ""
        let kind: KilnError.Code = status >= 500 || status == 429 ? .unavailable : .internal
        return KilnError(kind, "S3 refused to \(action) in the bucket '\(configuration.bucket)' (HTTP \(status))\(detail)")
    }
}
