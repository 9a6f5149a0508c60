import AsyncHTTPClient
import Crypto
import Foundation
import HTTPTypes
import KilnCore
import NIOCore
import OpenAPIAsyncHTTPClient
import OpenAPIRuntime

/// The client of the Kiln API that the command line, the worker and the benchmarks share: the
/// ``Client`` generated from the OpenAPI document, with the key sent on every call and every error
/// answer turned into the server's ``KilnError``.
///
/// ```swift
/// let api = try KilnAPIClient(server: "http://127.0.0.1:8080", key: key)
/// let generation = try await api { try await $0.getGeneration(path: .init(id: id)).ok.body.json }
/// ```
public struct KilnAPIClient: Sendable {
    public let server: String
    /// JSON calls and long polls: over HTTP, each abandoned after two minutes, or sooner when asked.
    private let calls: Client
    /// Uploads and downloads, of any size.
    private let transfers: Client

    /// - Parameters:
    ///   - server: the server's URL; or several, separated by commas, of servers sharing one store:
    ///     calls go to one of them, and to the next when it cannot be reached.
    ///   - http: the HTTP client; by default the process's shared one, or with several servers
    ///     ``failoverHTTP``.
    /// - Throws: `.invalidRequest` when `server` is not a list of http(s) URLs.
    public init(server: String, key: String, http: HTTPClient? = nil) throws {
        let urls = try server.split(separator: ",").map { item in
            let text = item.trimmingCharacters(in: .whitespaces)
            let trimmed = text.hasSuffix("/") ? String(text.dropLast()) : text
            guard let url = URL(string: trimmed), ["http", "https"].contains(url.scheme?.lowercased() ?? ""), url.host != nil else {
                throw KilnError(.invalidRequest, "'\(text)' is not an http(s) URL of a Kiln server")
            }
            return url
        }
        guard !urls.isEmpty else { throw KilnError(.invalidRequest, "no Kiln server URL given") }
        let http = http ?? (urls.count > 1 ? Self.failoverHTTP : .shared)
        self.init(
            servers: urls, key: key, calls: AsyncHTTPClientTransport(configuration: .init(client: http, timeout: .minutes(2))),
            transfers: AsyncHTTPClientTransport(configuration: .init(client: http, timeout: .hours(6))))
    }

    /// A client over other transports (an in-process server in tests, say).
    /// - Parameters:
    ///   - calls: carries JSON calls and long polls.
    ///   - transfers: carries uploads and downloads.
    public init(server: URL, key: String, calls: any ClientTransport, transfers: any ClientTransport) {
        self.init(servers: [server], key: key, calls: calls, transfers: transfers)
    }

    init(servers: [URL], key: String, calls: any ClientTransport, transfers: any ClientTransport) {
        self.server = servers.map(\.absoluteString).joined(separator: ",")
        var middlewares: [any ClientMiddleware] = [BearerKey(key: key), RawBodyType(), ErrorAnswers()]
        if servers.count > 1 { middlewares.append(Failover(servers: servers)) }
        self.calls = Client(serverURL: servers[0], configuration: .kiln, transport: calls, middlewares: middlewares)
        self.transfers = Client(serverURL: servers[0], configuration: .kiln, transport: transfers, middlewares: middlewares)
    }

    /// The HTTP client of a client given several servers: a connection refused fails its call at
    /// once, so that the next call goes to the next server. (By default a client retries a refused
    /// connection until its connect timeout of 10 s, which suits one server restarting; with
    /// several, a dead one would hold every call, heartbeats included, for those 10 s.) For the
    /// process's lifetime.
    public static let failoverHTTP = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .failingFast())

    /// Runs `body`'s calls. Errors come back as ``KilnError``: the server's own (its code, message
    /// and `Retry-After`), or `.unavailable` when the server could not be reached.
    /// - Parameter timeout: abandons the calls after this long (a heartbeat must not hang).
    public func callAsFunction<T: Sendable>(
        timeout: Duration? = nil, _ body: @escaping @Sendable (Client) async throws -> T
    ) async throws -> T {
        let calls = self.calls
        do {
            guard let timeout else { return try await body(calls) }
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask { try await body(calls) }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let value = first else {
                    throw KilnError(.unavailable, "the Kiln server at \(server) did not answer within \(timeout)")
                }
                return value
            }
        } catch {
            throw Self.kilnError(error, server: server)
        }
    }

    /// Like a call, for uploads and downloads that may take hours.
    /// - Parameter contentType: the media type of the raw body the calls send (the document
    ///   declares raw bodies as `*/*`, and the server records the type it receives).
    public func transfer<T: Sendable>(contentType: String? = nil, _ body: @Sendable (Client) async throws -> T) async throws -> T {
        do {
            return try await RawBodyType.$current.withValue(contentType) { try await body(transfers) }
        } catch {
            throw Self.kilnError(error, server: server)
        }
    }

    static func kilnError(_ error: any Error, server: String) -> any Error {
        switch error {
        case let error as KilnError: return error
        case let error as ClientError:
            if let kiln = error.underlyingError as? KilnError { return kiln }
            if error.response == nil {
                return KilnError(.unavailable, "cannot reach the Kiln server at \(server): \(error.underlyingError)")
            }
            return KilnError(.internal, "the answer to \(error.operationID) does not match the API document: \(error.causeDescription)")
        default: return error
        }
    }
}

/// Sends each call to the server in use, of several that share one store; when it cannot be
/// reached, the call fails as it would (callers retry) and the next one is in use.
final class Failover: ClientMiddleware, @unchecked Sendable {
    private let servers: [URL]
    private let lock = NSLock()
    private var current = 0

    init(servers: [URL]) {
        self.servers = servers
    }

    func intercept(
        _ request: HTTPRequest, body: HTTPBody?, baseURL: URL, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, URL) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        let index = lock.withLock { current }
        do {
            return try await next(request, body, servers[index])
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            // Not reached (an answer, even an error, is not thrown here): try the next one next time.
            lock.withLock { if current == index { current = (index + 1) % servers.count } }
            throw error
        }
    }
}

/// `Authorization: Bearer <key>` on every request.
struct BearerKey: ClientMiddleware {
    let key: String

    func intercept(
        _ request: HTTPRequest, body: HTTPBody?, baseURL: URL, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, URL) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        var request = request
        request.headerFields[.authorization] = "Bearer \(key)"
        return try await next(request, body, baseURL)
    }
}

/// Sends a raw body with the media type the caller gave ``KilnAPIClient/transfer(contentType:_:)``
/// instead of the document's `*/*`.
struct RawBodyType: ClientMiddleware {
    @TaskLocal static var current: String?

    func intercept(
        _ request: HTTPRequest, body: HTTPBody?, baseURL: URL, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, URL) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        var request = request
        if let type = Self.current, request.headerFields[.contentType] == "*/*" { request.headerFields[.contentType] = type }
        return try await next(request, body, baseURL)
    }
}

/// Turns an error answer (`{"error": {"code", "message"}}`, status 400 and above) into the
/// ``KilnError`` it carries, `Retry-After` included, so that callers handle one kind of error.
struct ErrorAnswers: ClientMiddleware {
    func intercept(
        _ request: HTTPRequest, body: HTTPBody?, baseURL: URL, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, URL) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        let (response, responseBody) = try await next(request, body, baseURL)
        guard response.status.code >= 400 else { return (response, responseBody) }
        let retryAfter = response.headerFields[.retryAfter].flatMap { Int($0) }
        if let responseBody, let data = try? await Data(collecting: responseBody, upTo: 1 << 20),
            let answer = try? JSONDecoder().decode(Components.Schemas._Error.self, from: data)
        {
            let code = KilnError.Code(rawValue: answer.error.code) ?? .internal
            throw KilnError(code, answer.error.message, retryAfter: retryAfter)
        }
        throw KilnError(.internal, "the server answered \(response.status.code) to \(operationID)")
    }
}

extension HTTPBody {
    /// A file's bytes, streamed in 1 MiB chunks.
    public static func file(_ url: URL) throws -> HTTPBody {
        let handle = try FileHandle(forReadingFrom: url)
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: 0)
        let chunks = AsyncThrowingStream<ArraySlice<UInt8>, any Error> {
            guard let data = try handle.read(upToCount: 1 << 20), !data.isEmpty else {
                try? handle.close()
                return nil
            }
            return ArraySlice(data)
        }
        return HTTPBody(chunks, length: .known(Int64(size)), iterationBehavior: .single)
    }

    /// Writes the body to `file` as it streams.
    /// - Returns: the hex SHA-256 of the bytes written.
    @discardableResult
    public func write(to file: URL) async throws -> String {
        FileManager.default.createFile(atPath: file.path, contents: nil)
        let handle = try FileHandle(forWritingTo: file)
        defer { try? handle.close() }
        var hasher = SHA256()
        for try await chunk in self {
            hasher.update(data: chunk)
            try handle.write(contentsOf: Data(chunk))
        }
        return hasher.finalize().hexString
    }
}

extension HTTPClient.Configuration {
    /// A client configuration in which a refused connection fails its request at once (connect
    /// timeout 2 s) instead of being retried until the connect timeout, for callers that have
    /// somewhere else to go: another of several servers, or an answer of `503` to their own caller.
    public static func failingFast(redirects: RedirectConfiguration? = nil) -> HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration(redirectConfiguration: redirects)
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .seconds(2)
        return configuration
    }
}
