import Crypto
import Foundation
import KilnCore

/// An access key for an S3-compatible store. Its description never shows the secret, so a
/// configuration can be logged.
public struct S3Credentials: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    /// Set with temporary credentials (an assumed role, instance credentials).
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    public var description: String {
        "S3Credentials(accessKeyID: \(accessKeyID), secretAccessKey: <redacted>\(sessionToken == nil ? "" : ", sessionToken: <redacted>"))"
    }
    public var debugDescription: String { description }
}

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`) as S3 checks it: in the `Authorization` header
/// or, for a presigned URL, in the query string.
///
/// Signing a request takes five steps:
/// 1. the canonical request: method, URI-encoded path (each segment encoded, `/` kept, never
///    normalised), query encoded and sorted, headers lower-cased and sorted, the payload's SHA-256;
/// 2. the credential scope `yyyyMMdd/region/service/aws4_request`;
/// 3. the string to sign: algorithm, timestamp, scope and the canonical request's SHA-256;
/// 4. the signing key, an HMAC-SHA256 chain from `"AWS4" + secret` through the scope's parts;
/// 5. the signature, the hex HMAC of the string to sign under that key.
struct SigV4: Sendable {
    /// What a signature covers: the request as sent, before encoding.
    struct Request: Sendable {
        var method: String
        /// The `Host` header: the host, and `:port` when the port is not the scheme's default.
        var host: String
        /// The absolute path, not encoded (`/bucket/a/b`).
        var path: String
        /// Query parameters, not encoded, in any order.
        var query: [(name: String, value: String)] = []
        /// Headers to sign besides `host` and the `x-amz-` ones the signer adds.
        var headers: [(name: String, value: String)] = []
    }

    static let algorithm = "AWS4-HMAC-SHA256"
    /// The payload hash of a presigned request, whose body is not known when it is signed.
    static let unsignedPayload = "UNSIGNED-PAYLOAD"
    /// S3 refuses presigned URLs valid for longer than seven days.
    static let maximumExpiry = 7 * 24 * 3600

    var credentials: S3Credentials
    var region: String
    var service = "s3"

    /// The headers to send with `request`: its own, then `x-amz-date`, `x-amz-content-sha256`,
    /// `x-amz-security-token` (with temporary credentials) and `authorization`.
    ///
    /// - Parameter payloadSHA256: the hex SHA-256 of the body, sent as `x-amz-content-sha256`.
    func signedHeaders(for request: Request, payloadSHA256: String, now: Date) -> [(name: String, value: String)] {
        let timestamp = Self.timestamp(now)
        var headers = request.headers
        headers.append(("host", request.host))
        headers.append(("x-amz-content-sha256", payloadSHA256))
        headers.append(("x-amz-date", timestamp))
        if let token = credentials.sessionToken { headers.append(("x-amz-security-token", token)) }
        let canonical = Self.canonicalHeaders(headers)
        let signature = signature(
            method: request.method, path: request.path, query: Self.canonicalQuery(request.query),
            canonicalHeaders: canonical, payloadSHA256: payloadSHA256, timestamp: timestamp)
        let authorization =
            "\(Self.algorithm) Credential=\(credentials.accessKeyID)/\(scope(timestamp)), SignedHeaders=\(canonical.names), Signature=\(signature)"
        return headers.filter { $0.name.lowercased() != "host" } + [("authorization", authorization)]
    }

    /// The encoded query string of a presigned `request`, `X-Amz-Signature` last; only `host` is
    /// signed, so whoever holds the URL needs no header.
    ///
    /// - Parameter expiresIn: seconds the URL stays valid, 1 to ``maximumExpiry``.
    func presignedQuery(for request: Request, expiresIn: Int, now: Date) -> String {
        let timestamp = Self.timestamp(now)
        var query = request.query
        query.append(("X-Amz-Algorithm", Self.algorithm))
        query.append(("X-Amz-Credential", "\(credentials.accessKeyID)/\(scope(timestamp))"))
        query.append(("X-Amz-Date", timestamp))
        query.append(("X-Amz-Expires", String(expiresIn)))
        if let token = credentials.sessionToken { query.append(("X-Amz-Security-Token", token)) }
        query.append(("X-Amz-SignedHeaders", "host"))
        let canonicalQuery = Self.canonicalQuery(query)
        let signature = signature(
            method: request.method, path: request.path, query: canonicalQuery,
            canonicalHeaders: Self.canonicalHeaders([("host", request.host)]), payloadSHA256: Self.unsignedPayload,
            timestamp: timestamp)
        return canonicalQuery + "&X-Amz-Signature=" + signature
    }

    private func signature(
        method: String, path: String, query: String, canonicalHeaders: (block: String, names: String), payloadSHA256: String,
        timestamp: String
    ) -> String {
        let canonicalRequest = [
            method, Self.encodePath(path), query, canonicalHeaders.block, canonicalHeaders.names, payloadSHA256,
        ].joined(separator: "\n")
        let stringToSign = [
            Self.algorithm, timestamp, scope(timestamp), SHA256.hash(data: Data(canonicalRequest.utf8)).hexString,
        ].joined(separator: "\n")
        var key = SymmetricKey(data: Data("AWS4\(credentials.secretAccessKey)".utf8))
        for part in [String(timestamp.prefix(8)), region, service, "aws4_request"] {
            key = SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Data(part.utf8), using: key)))
        }
        return Data(HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: key)).hexString
    }

    private func scope(_ timestamp: String) -> String {
        "\(timestamp.prefix(8))/\(region)/\(service)/aws4_request"
    }

    /// Each header as `name:value\n` (name lower-cased, value trimmed, inner runs of spaces
    /// collapsed), sorted by name, then the names joined by `;`.
    static func canonicalHeaders(_ headers: [(name: String, value: String)]) -> (block: String, names: String) {
        let normalised = headers.map { header in
            (name: header.name.lowercased(), value: header.value.split(separator: " ").joined(separator: " "))
        }.sorted { $0.name < $1.name }
        return (normalised.map { "\($0.name):\($0.value)\n" }.joined(), normalised.map(\.name).joined(separator: ";"))
    }

    /// `name=value` pairs, both URI-encoded, sorted by name then value, joined by `&`; a parameter
    /// without a value keeps its `=`.
    static func canonicalQuery(_ query: [(name: String, value: String)]) -> String {
        query.map { (name: encode($0.name), value: encode($0.value)) }
            .sorted { ($0.name, $0.value) < ($1.name, $1.value) }
            .map { "\($0.name)=\($0.value)" }
            .joined(separator: "&")
    }

    /// The path with each segment URI-encoded and its `/` kept, as S3 wants it (no normalisation,
    /// no double encoding).
    static func encodePath(_ path: String) -> String {
        path.split(separator: "/", omittingEmptySubsequences: false).map { encode(String($0)) }.joined(separator: "/")
    }

    /// RFC 3986 percent-encoding as SigV4 defines it: every byte outside `A–Z a–z 0–9 - _ . ~`
    /// becomes `%XY` with upper-case hex.
    static func encode(_ text: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var encoded: [UInt8] = []
        encoded.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                encoded.append(byte)
            default:
                encoded += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0f)]]
            }
        }
        return String(decoding: encoded, as: UTF8.self)
    }

    /// `yyyyMMdd'T'HHmmss'Z'` in UTC.
    static func timestamp(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = .gmt
        let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        func two(_ value: Int?) -> String {
            let value = value ?? 0
            return value < 10 ? "0\(value)" : "\(value)"
        }
        return "\(parts.year ?? 1970)\(two(parts.month))\(two(parts.day))T\(two(parts.hour))\(two(parts.minute))\(two(parts.second))Z"
    }
}
