import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import KilnAPI
import KilnCore
import KilnServer
import KilnStore
import Testing

/// An in-process Kiln on a fresh data folder with a manual clock, and a client that speaks its API.
struct KilnHarness: Sendable {
    static let adminKey = "test-admin-key"
    let server: KilnServer
    let clock: ManualWallClock
    let data: URL

    static func make(data: URL? = nil, configuration: ServerConfiguration = ServerConfiguration(), clock: ManualWallClock = ManualWallClock())
        async throws -> KilnHarness
    {
        let folder = data ?? FileManager.default.temporaryDirectory.appending(path: "kiln-test-\(UUID().uuidString)")
        let server = try await KilnServer.open(data: folder, configuration: configuration, clock: clock, adminKey: adminKey)
        return KilnHarness(server: server, clock: clock, data: folder)
    }

    /// Runs `body` against the router in process (no socket).
    func withClient<T: Sendable>(_ body: @Sendable (KilnClient) async throws -> T) async throws -> T {
        let app = Application(router: server.router())
        return try await app.test(.router) { client in try await body(KilnClient(client: client)) }
    }
}

struct HTTPResult: Sendable {
    let status: HTTPResponse.Status
    let headers: HTTPFields
    let body: ByteBuffer

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try WireFormat.decoder().decode(T.self, from: Data(body.readableBytesView))
    }

    var error: ErrorBody.Detail? { try? decode(ErrorBody.self).error }
    var text: String { String(buffer: body) }
}

/// Calls of the API, by scope, over any Hummingbird test client.
struct KilnClient: Sendable {
    let client: any TestClientProtocol

    func call(
        _ method: HTTPRequest.Method, _ path: String, key: String? = KilnHarness.adminKey, json: String? = nil,
        raw: ByteBuffer? = nil, headers extra: HTTPFields = [:]
    ) async throws -> HTTPResult {
        var headers = extra
        if let key { headers[.authorization] = "Bearer \(key)" }
        var body: ByteBuffer?
        if let json {
            headers[.contentType] = "application/json"
            body = ByteBuffer(string: json)
        } else if let raw {
            body = raw
        }
        let response = try await client.execute(uri: path, method: method, headers: headers, body: body)
        return HTTPResult(status: response.status, headers: response.headers, body: response.body)
    }

    func encode<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try WireFormat.encoder().encode(value), as: UTF8.self)
    }

    // MARK: Admin

    /// A new account of `tier` and a user key for it.
    func account(tier: String, name: String = "test") async throws -> (AccountID, String) {
        let created = try await call(.post, "/v1/admin/accounts", json: try encode(CreateAccountRequest(name: name, tier: tier)))
        try #require(created.status == .created, "\(created.text)")
        let account = try created.decode(AccountObject.self)
        let key = try await call(.post, "/v1/admin/accounts/\(account.id)/keys")
        try #require(key.status == .created)
        return (account.id, try key.decode(KeyObject.self).key)
    }

    func model(_ name: String = "demo") async throws {
        let result = try await call(.post, "/v1/admin/models", json: try encode(CreateModelRequest(name: name)))
        try #require(result.status == .created, "\(result.text)")
    }

    func workerKey() async throws -> String {
        let result = try await call(.post, "/v1/admin/keys", json: #"{"scope":"worker"}"#)
        try #require(result.status == .created)
        return try result.decode(KeyObject.self).key
    }

    // MARK: Public

    func submit(_ key: String, model: String = "demo", input: [String: JSONValue] = [:], headers: HTTPFields = [:]) async throws
        -> GenerationObject
    {
        let result = try await call(
            .post, "/v1/generations", key: key, json: try encode(CreateGenerationRequest(model: model, input: input)),
            headers: headers)
        try #require(result.status == .created || result.status == .ok, "\(result.text)")
        return try result.decode(GenerationObject.self)
    }

    func generation(_ key: String, _ id: GenerationID) async throws -> GenerationObject {
        let result = try await call(.get, "/v1/generations/\(id)", key: key)
        try #require(result.status == .ok, "\(result.text)")
        return try result.decode(GenerationObject.self)
    }

    // MARK: Worker

    func register(_ key: String, cluster: String = "default", accelerator: String = "cpu", gpus: Int = 0) async throws -> WorkerID {
        let result = try await call(
            .post, "/v1/workers", key: key,
            json: try encode(RegisterWorkerRequest(cluster: cluster, accelerator: accelerator, gpus: gpus)))
        try #require(result.status == .created, "\(result.text)")
        return try result.decode(RegisterWorkerResponse.self).id
    }

    /// A lease, or nil on 204.
    func lease(_ key: String, worker: WorkerID, wait: Double = 0) async throws -> LeaseResponse? {
        let result = try await call(.post, "/v1/workers/\(worker)/lease", key: key, json: #"{"wait_seconds":\#(wait)}"#)
        if result.status == .noContent { return nil }
        try #require(result.status == .ok, "\(result.text)")
        return try result.decode(LeaseResponse.self)
    }

    func job(_ key: String, _ worker: WorkerID, _ lease: LeaseResponse, _ action: String, json: String) async throws -> HTTPResult {
        try await call(.post, "/v1/workers/\(worker)/jobs/\(lease.job.id)/\(action)", key: key, json: json)
    }

    func heartbeat(_ key: String, _ worker: WorkerID, _ lease: LeaseResponse, fraction: Double? = nil) async throws -> HTTPResult {
        let progress = fraction.map { #","progress":{"fraction":\#($0),"stage":"denoising"}"# } ?? ""
        return try await job(key, worker, lease, "heartbeat", json: #"{"token":"\#(lease.lease.token)"\#(progress)}"#)
    }

    func complete(_ key: String, _ worker: WorkerID, _ lease: LeaseResponse, outputs: [String] = []) async throws -> HTTPResult {
        try await job(key, worker, lease, "complete", json: try encode(CompleteRequest(token: lease.lease.token, outputs: outputs)))
    }
}
