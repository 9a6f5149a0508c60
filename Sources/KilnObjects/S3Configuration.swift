import Foundation
import KilnCore

/// Where an ``S3ObjectStore`` keeps its objects and how it signs in.
///
/// Written as a URL, `s3://bucket/optional/prefix?endpoint=http://127.0.0.1:9000&region=eu-west-1`;
/// see ``init(url:credentials:environment:)``.
public struct S3Configuration: Hashable, Sendable {
    public var bucket: String
    /// Prepended to every key (`kiln/` puts `blobs/x` at `kiln/blobs/x`): empty, or ending in `/`.
    public var keyPrefix: String
    public var region: String
    /// The S3-compatible service, addressed path-style (`endpoint/bucket/key`); nil for AWS itself,
    /// `https://s3.<region>.amazonaws.com`.
    public var endpoint: URL?
    public var credentials: S3Credentials
    /// Bodies up to this size go up in one request; larger ones in parts of this size. At least
    /// 5 MiB, S3's smallest part but the last; smaller values are raised to it.
    public var partSize: Int
    /// Parts of one put uploaded at the same time (memory: this many parts are held at once).
    public var concurrentParts: Int
    /// How long a request may take until the response's head arrives.
    public var requestTimeout: Duration

    /// S3's smallest multipart part but the last.
    public static let minimumPartSize = 5 * 1024 * 1024

    public init(
        bucket: String, keyPrefix: String = "", region: String = "us-east-1", endpoint: URL? = nil, credentials: S3Credentials,
        partSize: Int = 8 * 1024 * 1024, concurrentParts: Int = 4, requestTimeout: Duration = .seconds(60)
    ) {
        self.bucket = bucket
        self.keyPrefix = keyPrefix
        self.region = region
        self.endpoint = endpoint
        self.credentials = credentials
        self.partSize = partSize
        self.concurrentParts = concurrentParts
        self.requestTimeout = requestTimeout
    }

    /// Reads `s3://bucket[/prefix][?endpoint=URL][&region=NAME]`.
    ///
    /// The region comes from the URL, else `AWS_REGION`, else `us-east-1`. The credentials, unless
    /// given, come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` (never
    /// from the URL, which gets logged).
    ///
    /// - Throws: `.invalidInput` naming what is wrong: not an `s3://` URL, a bad bucket name or
    ///   prefix, an unknown parameter, an endpoint that is not an http(s) URL, missing credentials.
    public init(url text: String, credentials: S3Credentials? = nil, environment: [String: String] = ProcessInfo.processInfo.environment)
        throws
    {
        guard let components = URLComponents(string: text) else {
            throw KilnError(.invalidInput, "'\(text)' is not a URL; an S3 object store is written s3://bucket/optional/prefix")
        }
        guard components.scheme?.lowercased() == "s3" else {
            throw KilnError(.invalidInput, "'\(text)' is not an s3:// URL; an S3 object store is written s3://bucket/optional/prefix")
        }
        guard let bucket = components.host, !bucket.isEmpty else {
            throw KilnError(.invalidInput, "'\(text)' names no bucket; write s3://bucket/optional/prefix")
        }
        guard Self.isValidBucketName(bucket) else {
            throw KilnError(
                .invalidInput,
                "'\(bucket)' is not a valid S3 bucket name: 3 to 63 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
            )
        }
        let path = components.path.split(separator: "/").joined(separator: "/")
        guard path.isEmpty || ObjectKey.isValid(path) else {
            throw KilnError(.invalidInput, "'\(components.path)' is not a valid key prefix for the bucket '\(bucket)'")
        }
        var endpoint: URL?
        var region: String?
        for item in components.queryItems ?? [] {
            switch item.name {
            case "endpoint":
                guard let value = item.value, let url = URL(string: value), ["http", "https"].contains(url.scheme?.lowercased()),
                    url.host?.isEmpty == false
                else {
                    throw KilnError(.invalidInput, "the S3 endpoint '\(item.value ?? "")' is not an http:// or https:// URL with a host")
                }
                endpoint = url
            case "region":
                guard let value = item.value, !value.isEmpty else {
                    throw KilnError(.invalidInput, "the S3 region in '\(text)' is empty")
                }
                region = value
            default:
                throw KilnError(.invalidInput, "unknown parameter '\(item.name)' in the S3 URL '\(text)'; known: endpoint, region")
            }
        }
        let resolvedRegion = region ?? environment["AWS_REGION"].flatMap { $0.isEmpty ? nil : $0 } ?? "us-east-1"
        let resolvedCredentials: S3Credentials
        if let credentials {
            resolvedCredentials = credentials
        } else {
            guard let id = environment["AWS_ACCESS_KEY_ID"], !id.isEmpty, let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty
            else {
                throw KilnError(
                    .invalidInput, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the S3 object store in the bucket '\(bucket)'")
            }
            let token = environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
            resolvedCredentials = S3Credentials(accessKeyID: id, secretAccessKey: secret, sessionToken: token)
        }
        self.init(
            bucket: bucket, keyPrefix: path.isEmpty ? "" : path + "/", region: resolvedRegion, endpoint: endpoint,
            credentials: resolvedCredentials)
    }

    /// S3's rules for new buckets: 3 to 63 characters of `a-z 0-9 - .`, a letter or digit at both ends.
    static func isValidBucketName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        func isLetterOrDigit(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        guard (3...63).contains(bytes.count), let first = bytes.first, let last = bytes.last, isLetterOrDigit(first), isLetterOrDigit(last)
        else { return false }
        return bytes.allSatisfy { isLetterOrDigit($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }
    }
}
