import Hummingbird
import KilnCore
import NIOCore

/// Refuses a JSON request body past `limit` bytes with `413 payload_too_large`, before it is read
/// whole: at once when `Content-Length` says so, otherwise when the streamed bytes pass it. Raw
/// uploads (files, blobs, outputs) have limits of their own.
struct JSONBodyLimit: RouterMiddleware {
    typealias Context = KilnRequestContext
    let limit: Int

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.headers[.contentType]?.lowercased().hasPrefix("application/json") == true else {
            return try await next(request, context)
        }
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            throw KilnError(.payloadTooLarge, "the JSON body is larger than the limit of \(limit) bytes")
        }
        var request = request
        let limit = self.limit
        let body = request.body
        request.body = RequestBody(asyncSequence: LimitedBytes(base: body, limit: limit))
        return try await next(request, context)
    }
}

/// A body that throws `.payloadTooLarge` once more than `limit` bytes went through.
struct LimitedBytes<Base: AsyncSequence & Sendable>: AsyncSequence, Sendable where Base.Element == ByteBuffer {
    typealias Element = ByteBuffer
    let base: Base
    let limit: Int

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: Base.AsyncIterator
        let limit: Int
        var seen = 0

        mutating func next() async throws -> ByteBuffer? {
            guard let chunk = try await base.next() else { return nil }
            seen += chunk.readableBytes
            guard seen <= limit else {
                throw KilnError(.payloadTooLarge, "the JSON body is larger than the limit of \(limit) bytes")
            }
            return chunk
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: base.makeAsyncIterator(), limit: limit) }
}
