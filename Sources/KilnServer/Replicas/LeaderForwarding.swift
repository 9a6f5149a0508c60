import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import KilnAPI
import KilnCore
import NIOCore
import NIOHTTP1

/// On a follower, forwards the API to the leader (DESIGN §2): the request as it came (method,
/// path, query, headers with the caller's key, body streamed), and the leader's answer back as it
/// comes (long polls and event streams included). What needs no scheduler stays local: health,
/// metrics, this document and the dashboard's page.
///
/// A follower that knows no leader answers `503` with `Retry-After: 1`; so does one asked to
/// forward a request another server forwarded already (two servers that each believe the other
/// leads, for the moment a change of leader takes): a request is forwarded once at most.
struct LeaderForwarding<Context: RequestContext>: RouterMiddleware {
    let state: ReplicaState

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard case .follower(let leader) = state.role, !Forwarding.local.contains(request.uri.path) else {
            return try await next(request, context)
        }
        guard let leader, request.headers[Forwarding.header] == nil else {
            throw KilnError(.unavailable, "no leader is elected for the moment; try again", retryAfter: 1)
        }
        var forwarded = HTTPClientRequest(url: leader + request.uri.description)
        forwarded.method = HTTPMethod(rawValue: request.method.rawValue)
        for field in request.headers where !Forwarding.hopByHop.contains(field.name.canonicalName) {
            forwarded.headers.add(name: field.name.rawName, value: field.value)
        }
        forwarded.headers.add(name: Forwarding.header.rawName, value: "follower")
        let length = request.headers[.contentLength].flatMap { Int($0) }
        if let length, length <= Forwarding.bufferedBytes {
            // Small bodies (every JSON call) are read first, so that the client may send them again
            // on a fresh connection when a pooled one turns out to be closed.
            forwarded.body = .bytes(try await request.body.collect(upTo: length))
        } else if length != nil || request.headers[.transferEncoding] != nil {
            forwarded.body = .stream(OneShot(request.body), length: length.map { .known(Int64($0)) } ?? .unknown)
        }
        let answer: HTTPClientResponse
        do {
            answer = try await Forwarding.client.execute(forwarded, deadline: .now() + .hours(6))
        } catch {
            throw KilnError(.unavailable, "the leader at \(leader) could not be reached: \(error)", retryAfter: 1)
        }
        var headers = HTTPFields()
        for (name, value) in answer.headers where !Forwarding.hopByHop.contains(name.lowercased()) {
            if let field = HTTPField.Name(name) { headers.append(HTTPField(name: field, value: value)) }
        }
        return Response(
            status: HTTPResponse.Status(code: Int(answer.status.code), reasonPhrase: answer.status.reasonPhrase), headers: headers,
            body: ResponseBody(asyncSequence: answer.body))
    }
}

enum Forwarding {
    /// Answers are passed on as they are, redirects included (a worker follows a blob's signed
    /// URL itself, straight to the bucket). A leader that refuses the connection (it died, and
    /// this server has not learned of its successor yet) is answered `503` at once rather than
    /// after the retries of a 10 s connect timeout, so that the caller tries again soon, or
    /// another server. For the process's lifetime.
    static let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .failingFast(redirects: .disallow))

    /// Bodies up to this size are read before they are forwarded.
    static let bufferedBytes = 1 << 20
    /// Marks a forwarded request.
    static var header: HTTPField.Name { HTTPField.Name("Kiln-Forwarded-By")! }
    /// Paths served by every server itself.
    static let local: Set<String> = ["/healthz", "/metrics", "/openapi.yaml", "/dashboard"]
    /// Headers that concern one connection, not the request (RFC 9110 §7.6.1).
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host",
    ]
}

/// A body that can be read once, as a request's can: a second reader (a client retrying on a new
/// connection) gets an error instead of the bytes the first one took.
struct OneShot<Base: AsyncSequence & Sendable>: AsyncSequence, Sendable where Base.Element == ByteBuffer {
    typealias Element = ByteBuffer

    private final class Taken: @unchecked Sendable {
        private let lock = NSLock()
        private var taken = false

        func take() -> Bool {
            lock.withLock {
                defer { taken = true }
                return !taken
            }
        }
    }

    private let base: Base
    private let taken = Taken()

    init(_ base: Base) {
        self.base = base
    }

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: Base.AsyncIterator?

        mutating func next() async throws -> ByteBuffer? {
            guard base != nil else {
                throw KilnError(.unavailable, "the request's body was sent once already and cannot be sent again; retry", retryAfter: 1)
            }
            return try await base?.next()
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: taken.take() ? base.makeAsyncIterator() : nil)
    }
}
