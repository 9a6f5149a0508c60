import AsyncHTTPClient
import Crypto
import Foundation
import KilnCore
import NIOCore
import NIOHTTP1

/// A client of the Kiln HTTP API, for the command line and workers. Errors come back as the
/// server's ``KilnError``.
public struct KilnAPIClient: Sendable {
    /// The HTTP methods the API uses.
    public enum Method: String, Sendable {
        case GET, POST, PUT, PATCH, DELETE

        var nio: HTTPMethod { HTTPMethod(rawValue: rawValue) }
    }

    public let server: String
    public let key: String
    let http: HTTPClient

    public init(server: String, key: String, http: HTTPClient = .shared) {
        self.server = server.hasSuffix("/") ? String(server.dropLast()) : server
        self.key = key
        self.http = http
    }

    /// A JSON call. `Response` may be `Empty` for calls that answer 204.
    /// - Parameter timeout: seconds before the call is abandoned (JSON calls are short; a long poll
    ///   passes its wait plus a margin).
    public func call<Response: Decodable>(
        _ method: Method, _ path: String, body: (some Encodable)? = Optional<Empty>.none, as: Response.Type = Response.self,
        timeout: Double = 60
    ) async throws -> Response {
        var data: ByteBuffer?
        if let body { data = ByteBuffer(bytes: try WireFormat.encoder().encode(body)) }
        let (status, bytes) = try await send(
            method, path, body: data.map { .bytes($0) }, contentType: "application/json", timeout: timeout)
        if Response.self == Empty.self || status == 204 { return try decodeEmpty() }
        return try WireFormat.decoder().decode(Response.self, from: bytes)
    }

    /// A JSON call that may answer 204 with nothing (a long-poll that timed out): nil then.
    public func callIfContent<Response: Decodable>(
        _ method: Method, _ path: String, body: (some Encodable)? = Optional<Empty>.none, as: Response.Type = Response.self,
        timeout: Double = 60
    ) async throws -> Response? {
        var data: ByteBuffer?
        if let body { data = ByteBuffer(bytes: try WireFormat.encoder().encode(body)) }
        let (status, bytes) = try await send(
            method, path, body: data.map { .bytes($0) }, contentType: "application/json", timeout: timeout)
        if status == 204 { return nil }
        return try WireFormat.decoder().decode(Response.self, from: bytes)
    }

    /// Uploads a file's bytes with `PUT` (or the given method), streaming it from disk.
    public func upload<Response: Decodable>(
        _ file: URL, method: Method = .PUT, to path: String, contentType: String = "application/octet-stream",
        as: Response.Type = Response.self
    ) async throws -> Response {
        let size = try FileManager.default.attributesOfItem(atPath: file.path)[.size] as? NSNumber
        let chunks = FileChunks(url: file)
        let (_, bytes) = try await send(
            method, path, body: .stream(chunks, length: .known(size?.int64Value ?? 0)), contentType: contentType, timeout: 6 * 3600)
        return try WireFormat.decoder().decode(Response.self, from: bytes)
    }

    /// Downloads to `file`, hashing as it streams.
    /// - Returns: the hex SHA-256 of the bytes written.
    @discardableResult
    public func download(_ path: String, to file: URL) async throws -> String {
        var request = HTTPClientRequest(url: server + path)
        request.headers.add(name: "Authorization", value: "Bearer \(key)")
        let response = try await http.execute(request, timeout: .hours(6))
        guard response.status.code < 300 else {
            let body = try await response.body.collect(upTo: 1 << 20)
            throw Self.error(status: response.status.code, body: Data(body.readableBytesView))
        }
        FileManager.default.createFile(atPath: file.path, contents: nil)
        let handle = try FileHandle(forWritingTo: file)
        defer { try? handle.close() }
        var hasher = SHA256()
        for try await chunk in response.body {
            let data = Data(chunk.readableBytesView)
            hasher.update(data: data)
            try handle.write(contentsOf: data)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    func send(_ method: Method, _ path: String, body: HTTPClientRequest.Body?, contentType: String, timeout: Double) async throws
        -> (UInt, Data)
    {
        var request = HTTPClientRequest(url: server + path)
        request.method = method.nio
        request.headers.add(name: "Authorization", value: "Bearer \(key)")
        if let body {
            request.headers.add(name: "Content-Type", value: contentType)
            request.body = body
        }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .milliseconds(Int64(timeout * 1000)))
        } catch {
            throw KilnError(.unavailable, "cannot reach the Kiln server at \(server): \(error)")
        }
        let data = Data(try await response.body.collect(upTo: 64 << 20).readableBytesView)
        guard response.status.code < 300 else { throw Self.error(status: response.status.code, body: data) }
        return (response.status.code, data)
    }

    static func error(status: UInt, body: Data) -> KilnError {
        if let decoded = try? JSONDecoder().decode(ErrorBody.self, from: body) {
            return KilnError(KilnError.Code(rawValue: decoded.error.code) ?? .internal, decoded.error.message)
        }
        return KilnError(.internal, "the server answered \(status)")
    }

    private func decodeEmpty<Response: Decodable>() throws -> Response {
        try JSONDecoder().decode(Response.self, from: Data("{}".utf8))
    }
}

/// The body of a call that has none.
public struct Empty: Codable, Sendable, Hashable {
    public init() {}
}

/// A file's bytes in 1 MiB chunks.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let url: URL

    struct AsyncIterator: AsyncIteratorProtocol {
        let handle: FileHandle?

        mutating func next() async throws -> ByteBuffer? {
            guard let handle, let data = try handle.read(upToCount: 1 << 20), !data.isEmpty else {
                try? handle?.close()
                return nil
            }
            return ByteBuffer(bytes: data)
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(handle: try? FileHandle(forReadingFrom: url))
    }
}
