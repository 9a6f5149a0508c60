import Foundation
import KilnCore
import NIOCore
import Testing

@testable import KilnObjects

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The S3-compatible endpoint the S3 backend's tests talk to: moto's server (`moto_server`, PyPI
/// `moto[server]`) on loopback, started by the test process on first use and gone when it ends.
/// Each test gets a bucket of its own.
///
/// Two servers, each started only when first asked for: one with authentication on, which checks
/// every request's SigV4 signature against an IAM user's key made at start, and one that accepts
/// any request. Moto's check gets two things wrong that S3 gets right, so the second server is
/// needed: it refuses a correctly signed request with a `/` in a query value (a listing under a
/// prefix; boto3's own requests fail the same way), and it cannot check a presigned URL at all
/// (with authentication on it fails on any request without an `Authorization` header). The
/// conformance suite, which lists under prefixes, and presigned downloads run on the second.
///
/// The tests run where `moto_server` is on the `PATH`; with `KILN_REQUIRE_S3=1` (as in CI) they run
/// regardless, and a missing server fails them.
enum S3TestEndpoint {
    static let isEnabled = ProcessInfo.processInfo.environment["KILN_REQUIRE_S3"] == "1" || motoServerIsInstalled

    /// Checks every request's signature.
    static let signatureChecking = Task { try await MotoServer.start(checkingSignatures: true) }
    /// Accepts any request, signed or not.
    static let open = Task { try await MotoServer.start(checkingSignatures: false) }

    /// A store over a new, empty bucket of `server`.
    static func makeStore(
        on server: Task<MotoServer, any Error> = signatureChecking, partSize: Int = S3Configuration.minimumPartSize, keyPrefix: String = ""
    ) async throws -> S3ObjectStore {
        let server = try await server.value
        let store = try S3ObjectStore(configuration: server.configuration(bucket: newBucketName(), keyPrefix: keyPrefix, partSize: partSize))
        try await store.createBucket()
        return store
    }

    static func newBucketName() -> String { "kiln-test-\(UUID().uuidString.lowercased())" }

    private static var motoServerIsInstalled: Bool {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        return path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/moto_server") }
    }
}

/// One `moto_server` process. It dies with the test process however that ends: a shell starts it
/// and waits on a pipe that only this process holds open, and kills it (`SIGKILL`, as a process
/// started from the test runner may ignore `SIGTERM`) when the pipe closes.
struct MotoServer: Sendable {
    let endpoint: URL
    let credentials: S3Credentials

    func configuration(bucket: String, keyPrefix: String = "", partSize: Int = S3Configuration.minimumPartSize) -> S3Configuration {
        S3Configuration(bucket: bucket, keyPrefix: keyPrefix, endpoint: endpoint, credentials: credentials, partSize: partSize)
    }

    static func start(checkingSignatures: Bool) async throws -> MotoServer {
        guard S3TestEndpoint.isEnabled else { throw KilnError(.unavailable, "moto_server is not installed") }
        let log = FileManager.default.temporaryDirectory.appending(path: "kiln-moto-\(UUID().uuidString).log")
        // The write end is never closed and never inherited: it closes when this process ends.
        var lifeline: [Int32] = [0, 0]
        guard pipe(&lifeline) == 0 else { throw KilnError(.internal, "cannot make a pipe: errno \(errno)") }
        _ = fcntl(lifeline[1], F_SETFD, FD_CLOEXEC)
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = [
            "-c", "moto_server -H 127.0.0.1 -p 0 >\"$0\" 2>&1 & server=$!; read -r _; kill -9 \"$server\"; rm -f \"$0\"", log.path,
        ]
        shell.standardInput = FileHandle(fileDescriptor: lifeline[0], closeOnDealloc: true)
        try shell.run()
        let deadline = ContinuousClock.now + .seconds(30)
        var port: Int?
        while port == nil {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.contains("Running on http://127.0.0.1:") }) {
                port = line.split(separator: ":").last.flatMap { Int($0) }
            } else if ContinuousClock.now > deadline || text.contains("not found") || text.contains("Traceback") {
                throw KilnError(.unavailable, "moto_server did not start (install moto[server]): \(text)")
            } else {
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        guard let port, let endpoint = URL(string: "http://127.0.0.1:\(port)") else {
            throw KilnError(.internal, "moto_server printed no port")
        }
        guard checkingSignatures else {
            return MotoServer(endpoint: endpoint, credentials: S3Credentials(accessKeyID: "AKIDOPEN", secretAccessKey: "open"))
        }
        // An IAM user allowed everything, and its key; then authentication on for every request.
        _ = try await iam(endpoint, ["Action": "CreateUser", "UserName": "kiln"])
        let policy = #"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#
        _ = try await iam(endpoint, ["Action": "PutUserPolicy", "UserName": "kiln", "PolicyName": "all", "PolicyDocument": policy])
        let key = try await iam(endpoint, ["Action": "CreateAccessKey", "UserName": "kiln"])
        let path = "CreateAccessKeyResponse/CreateAccessKeyResult/AccessKey/"
        guard let id = key.value(path + "AccessKeyId"), let secret = key.value(path + "SecretAccessKey") else {
            throw KilnError(.internal, "moto_server made no access key")
        }
        var enable = URLRequest(url: endpoint.appending(path: "moto-api/reset-auth"))
        enable.httpMethod = "POST"
        enable.setValue("text/plain", forHTTPHeaderField: "Content-Type")
        enable.httpBody = Data("0".utf8)
        let (_, response) = try await URLSession.shared.data(for: enable)
        guard (response as? HTTPURLResponse)?.statusCode == 200 else {
            throw KilnError(.internal, "moto_server did not turn authentication on")
        }
        return MotoServer(endpoint: endpoint, credentials: S3Credentials(accessKeyID: id, secretAccessKey: secret))
    }

    /// One IAM call, before authentication is on: the `Authorization` header only routes it to IAM.
    private static func iam(_ endpoint: URL, _ parameters: [String: String]) async throws -> S3XMLDocument {
        var request = URLRequest(url: endpoint)
        request.httpMethod = "POST"
        request.setValue("application/x-www-form-urlencoded", forHTTPHeaderField: "Content-Type")
        request.setValue(
            "AWS4-HMAC-SHA256 Credential=AKIDSETUP/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            forHTTPHeaderField: "Authorization")
        let form = (parameters.merging(["Version": "2010-05-08"]) { $1 }).map { "\($0.key)=\(SigV4.encode($0.value))" }
        request.httpBody = Data(form.joined(separator: "&").utf8)
        let (data, response) = try await URLSession.shared.data(for: request)
        guard (response as? HTTPURLResponse)?.statusCode == 200 else {
            throw KilnError(.internal, "moto_server refused \(parameters["Action"] ?? ""): \(String(decoding: data, as: UTF8.self))")
        }
        return try S3XMLDocument(ByteBuffer(bytes: data))
    }
}
