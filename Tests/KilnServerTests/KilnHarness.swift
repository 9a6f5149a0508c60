import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import KilnAPI
import KilnCore
import KilnObjects
import KilnServer
import KilnStore
import Logging
import OpenAPIRuntime
import Testing

/// An in-process Kiln on a fresh data folder with a manual clock, and a client that speaks its API.
struct KilnHarness: Sendable {
    static let adminKey = "test-admin-key"
    let server: KilnServer
    let clock: ManualWallClock
    let data: URL

    /// Warnings and errors only, as `KilnServer.open`'s default logger is quiet enough for tests.
    static var quietLogger: Logger {
        var logger = Logger(label: "kiln-test")
        logger.logLevel = .warning
        return logger
    }

    /// - Parameter providers: capacity providers that replace the server's own (test doubles).
    static func make(
        data: URL? = nil, configuration: ServerConfiguration = ServerConfiguration(), clock: ManualWallClock = ManualWallClock(),
        providers: [ServerConfiguration.Pool.Provider: any CapacityProvider] = [:], objects: (any ObjectStore)? = nil
    ) async throws -> KilnHarness {
        let folder = data ?? FileManager.default.temporaryDirectory.appending(path: "kiln-test-\(UUID().uuidString)")
        let server: KilnServer
        if providers.isEmpty, objects == nil {
            server = try await KilnServer.open(data: folder, configuration: configuration, clock: clock, adminKey: adminKey)
        } else {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            server = try await KilnServer(
                store: try SQLiteJobStore(path: folder.appending(path: "kiln.sqlite").path),
                objects: try objects ?? FileSystemObjectStore(root: folder.appending(path: "objects")), configuration: configuration, clock: clock,
                adminKey: adminKey, extraProviders: providers, logger: quietLogger)
        }
        return KilnHarness(server: server, clock: clock, data: folder)
    }

    /// Runs `body` against the router in process (no socket).
    func withClient<T: Sendable>(_ body: @Sendable (KilnClient) async throws -> T) async throws -> T {
        let app = Application(router: try server.router())
        return try await app.test(.router) { client in try await body(KilnClient(client: client)) }
    }
}

struct HTTPResult: Sendable {
    let status: HTTPResponse.Status
    let headers: HTTPFields
    let body: ByteBuffer

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            try RFC3339Transcoder().decode(try decoder.singleValueContainer().decode(String.self))
        }
        return try decoder.decode(T.self, from: Data(body.readableBytesView))
    }

    var error: Components.Schemas.ErrorDetail? { try? decode(Components.Schemas._Error.self).error }
    var text: String { String(buffer: body) }
}

/// The generated client's requests, carried to a Hummingbird test client.
struct TestClientTransport: ClientTransport {
    let client: any TestClientProtocol

    func send(_ request: HTTPRequest, body: HTTPBody?, baseURL: URL, operationID: String) async throws -> (HTTPResponse, HTTPBody?) {
        var bytes: ByteBuffer?
        if let body { bytes = ByteBuffer(bytes: try await [UInt8](collecting: body, upTo: .max)) }
        let response = try await client.execute(uri: request.path ?? "/", method: request.method, headers: request.headerFields, body: bytes)
        return (HTTPResponse(status: response.status, headerFields: response.headers), HTTPBody(Array(response.body.readableBytesView)))
    }
}

/// The API over any Hummingbird test client: set-up through the generated client, and raw calls
/// for the tests that send what no client would (malformed bodies, stale tokens, wrong keys).
struct KilnClient: Sendable {
    let client: any TestClientProtocol

    /// The generated client, with `key`.
    func api(_ key: String = KilnHarness.adminKey) -> KilnAPIClient {
        let transport = TestClientTransport(client: client)
        return KilnAPIClient(server: URL(string: "http://kiln.test")!, key: key, calls: transport, transfers: transport)
    }

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

    // MARK: Admin

    /// A new account of `tier` and a user key for it.
    func account(tier: String, name: String = "test") async throws -> (String, String) {
        let admin = api()
        let account = try await admin { try await $0.createAccount(body: .json(.init(name: name, tier: tier))).created.body.json }
        let key = try await admin { try await $0.createAccountKey(path: .init(id: account.id)).created.body.json }
        return (account.id, key.key)
    }

    func model(_ name: String = "demo") async throws {
        let admin = api()
        _ = try await admin { try await $0.createModel(body: .json(.init(name: name))).created }
    }

    func workerKey() async throws -> String {
        let admin = api()
        return try await admin { try await $0.createKey(body: .json(.init(scope: .worker))).created.body.json.key }
    }

    // MARK: Public

    func submit(_ key: String, model: String = "demo", input: [String: JSONValue] = [:]) async throws -> Components.Schemas.GenerationObject {
        let request = Components.Schemas.CreateGenerationRequest(model: model, input: .init(additionalProperties: try .init(input)))
        let user = api(key)
        return try await user { try await $0.createGeneration(body: .json(request)).created.body.json }
    }

    func generation(_ key: String, _ id: String) async throws -> Components.Schemas.GenerationObject {
        let user = api(key)
        return try await user { try await $0.getGeneration(path: .init(id: id)).ok.body.json }
    }

    // MARK: Worker

    /// The usual cast: the `demo` model, an account of `tier` with its user key, and a worker
    /// registered with a worker key of its own.
    func cast(tier: String = "api") async throws -> (user: String, workerKey: String, worker: String) {
        try await model()
        let (_, user) = try await account(tier: tier)
        let workerKey = try await workerKey()
        return (user, workerKey, try await register(workerKey))
    }

    func register(_ key: String, cluster: String = "default", accelerator: String = "cpu", gpus: Int = 0) async throws -> String {
        let worker = api(key)
        return try await worker {
            try await $0.registerWorker(body: .json(.init(cluster: cluster, accelerator: accelerator, gpus: gpus))).created.body.json.id
        }
    }

    /// A lease, or nil on 204.
    func lease(_ key: String, worker: String, wait: Double = 0) async throws -> Components.Schemas.LeaseResponse? {
        let client = api(key)
        return try await client {
            switch try await $0.leaseJob(path: .init(id: worker), body: .json(.init(waitSeconds: wait))) {
            case .ok(let leased): return try leased.body.json
            default: return nil
            }
        }
    }

    // The worker calls whose answers the tests inspect, raw.

    func job(_ key: String, _ worker: String, _ lease: Components.Schemas.LeaseResponse, _ action: String, json: String) async throws
        -> HTTPResult
    {
        try await call(.post, "/v1/workers/\(worker)/jobs/\(lease.job.id)/\(action)", key: key, json: json)
    }

    func heartbeat(_ key: String, _ worker: String, _ lease: Components.Schemas.LeaseResponse, fraction: Double? = nil) async throws
        -> HTTPResult
    {
        let progress = fraction.map { #","progress":{"fraction":\#($0),"stage":"denoising"}"# } ?? ""
        return try await job(key, worker, lease, "heartbeat", json: #"{"token":"\#(lease.lease.token)"\#(progress)}"#)
    }

    func complete(_ key: String, _ worker: String, _ lease: Components.Schemas.LeaseResponse, outputs: [String] = []) async throws
        -> HTTPResult
    {
        let names = outputs.map { #""\#($0)""# }.joined(separator: ",")
        return try await job(key, worker, lease, "complete", json: #"{"token":"\#(lease.lease.token)","outputs":[\#(names)]}"#)
    }
}
