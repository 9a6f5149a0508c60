import Crypto
import Foundation
import KilnCore
import Testing

@testable import KilnObjects

/// Signatures checked against the examples AWS publishes in "Signature Calculations for the
/// Authorization Header" and "Authenticating Requests: Using Query Parameters" of the S3 API
/// reference: the expected values are AWS's, copied from the documentation.
@Suite("SigV4 against AWS's published examples")
struct SigV4Tests {
    let signer = SigV4(
        credentials: S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1")
    /// 2013-05-24T00:00:00Z.
    let now = Date(timeIntervalSince1970: 1_369_353_600)
    let host = "examplebucket.s3.amazonaws.com"
    let emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    func authorization(_ request: SigV4.Request, payloadSHA256: String) throws -> (signedHeaders: String, signature: String) {
        let headers = signer.signedHeaders(for: request, payloadSHA256: payloadSHA256, now: now)
        let value = try #require(headers.first { $0.name == "authorization" }?.value)
        #expect(value.hasPrefix("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "))
        let fields = Dictionary(
            value.split(separator: " ").dropFirst().map { $0.trimmingCharacters(in: CharacterSet(charactersIn: ",")) }
                .compactMap { field -> (String, String)? in
                    let parts = field.split(separator: "=", maxSplits: 1)
                    return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
                }, uniquingKeysWith: { $1 })
        return (try #require(fields["SignedHeaders"]), try #require(fields["Signature"]))
    }

    @Test("GET Object with a range header")
    func getObject() throws {
        let request = SigV4.Request(method: "GET", host: host, path: "/test.txt", headers: [("Range", "bytes=0-9")])
        let (signedHeaders, signature) = try authorization(request, payloadSHA256: emptySHA256)
        #expect(signedHeaders == "host;range;x-amz-content-sha256;x-amz-date")
        #expect(signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    @Test("PUT Object: a '$' in the key is encoded, extra headers are signed, the payload hash is the body's")
    func putObject() throws {
        let body = "Welcome to Amazon S3."
        let payload = SHA256.hash(data: Data(body.utf8)).hexString
        #expect(payload == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        let request = SigV4.Request(
            method: "PUT", host: host, path: "/test$file.text",
            headers: [("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-storage-class", "REDUCED_REDUNDANCY")])
        let (signedHeaders, signature) = try authorization(request, payloadSHA256: payload)
        #expect(signedHeaders == "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class")
        #expect(signature == "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    }

    @Test("GET Bucket lifecycle: a parameter without a value")
    func getBucketLifecycle() throws {
        let request = SigV4.Request(method: "GET", host: host, path: "/", query: [("lifecycle", "")])
        #expect(try authorization(request, payloadSHA256: emptySHA256).signature == "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543")
    }

    @Test("GET Bucket (list objects): parameters sorted")
    func listObjects() throws {
        let request = SigV4.Request(method: "GET", host: host, path: "/", query: [("prefix", "J"), ("max-keys", "2")])
        #expect(try authorization(request, payloadSHA256: emptySHA256).signature == "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")
    }

    @Test("a presigned GET is AWS's example URL, parameter for parameter")
    func presignedGet() {
        let query = signer.presignedQuery(for: SigV4.Request(method: "GET", host: host, path: "/test.txt"), expiresIn: 86_400, now: now)
        #expect(
            query
                == "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                + "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
                + "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    }

    @Test("temporary credentials sign and send their session token")
    func sessionToken() {
        var withToken = signer
        withToken.credentials.sessionToken = "token/with+symbols"
        let request = SigV4.Request(method: "GET", host: host, path: "/test.txt")
        let headers = withToken.signedHeaders(for: request, payloadSHA256: emptySHA256, now: now)
        #expect(headers.contains { $0.name == "x-amz-security-token" && $0.value == "token/with+symbols" })
        #expect(headers.first { $0.name == "authorization" }?.value.contains("x-amz-date;x-amz-security-token") == true)
        #expect(withToken.presignedQuery(for: request, expiresIn: 60, now: now).contains("X-Amz-Security-Token=token%2Fwith%2Bsymbols"))
        #expect(withToken.signedHeaders(for: request, payloadSHA256: emptySHA256, now: now).last?.value
            != signer.signedHeaders(for: request, payloadSHA256: emptySHA256, now: now).last?.value)
    }

    @Test("URI encoding keeps only unreserved characters; paths keep their '/'")
    func encoding() {
        #expect(SigV4.encode("a-Z_0.~ /+=é") == "a-Z_0.~%20%2F%2B%3D%C3%A9")
        #expect(SigV4.encodePath("/bucket/a b/c$") == "/bucket/a%20b/c%24")
        #expect(SigV4.canonicalQuery([("b", "2"), ("a", "x y"), ("uploads", "")]) == "a=x%20y&b=2&uploads=")
    }

    @Test("the credentials' description never shows the secret")
    func redactedSecret() {
        let configuration = S3Configuration(bucket: "b-1", credentials: signer.credentials)
        #expect(!"\(configuration)".contains("EXAMPLEKEY"))
        #expect(!String(reflecting: configuration).contains("EXAMPLEKEY"))
        #expect("\(configuration)".contains("AKIAIOSFODNN7EXAMPLE"))
    }
}
