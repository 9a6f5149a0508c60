import Foundation
import Hummingbird
import KilnCore
import NIOCore
import OpenAPIRuntime

/// Refuses a JSON request body past `limit` bytes with `413 payload_too_large`, before it is read
/// whole: at once when `Content-Length` says so, otherwise when the streamed bytes pass it. Raw
/// uploads (files, blobs, outputs) have limits of their own.
///
/// It also says which field is at fault when a body that is valid JSON cannot be decoded because a
/// number does not fit its field (`"gpus": 1e20`): the decoder reports that as JSON that is not
/// valid, naming nothing.
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
        var collected = ByteBuffer()
        for try await chunk in LimitedBytes(base: request.body, limit: limit) { collected.writeImmutableBuffer(chunk) }
        request.body = RequestBody(buffer: collected)
        do {
            return try await next(request, context)
        } catch let error as ServerError {
            guard let decoding = error.underlyingError as? DecodingError, case .dataCorrupted(let context) = decoding,
                context.debugDescription == "The given data was not valid JSON.",
                let parsed = try? JSONSerialization.jsonObject(with: Data(collected.readableBytesView), options: [.fragmentsAllowed])
            else { throw error }
            let suspects = Self.numbersThatFitNoInteger(parsed, path: "")
            guard !suspects.isEmpty else { throw error }
            throw KilnError(
                .invalidRequest,
                "a number does not fit its field (an integer of 64 bits expected?): " + suspects.map { "'\($0)'" }.joined(separator: ", "))
        }
    }

    /// The paths of the numbers in a parsed JSON value that no 64-bit integer holds exactly.
    static func numbersThatFitNoInteger(_ value: Any, path: String) -> [String] {
        switch value {
        case let object as [String: Any]:
            return object.keys.sorted().flatMap { numbersThatFitNoInteger(object[$0]!, path: path.isEmpty ? $0 : "\(path).\($0)") }
        case let array as [Any]:
            return array.enumerated().flatMap { numbersThatFitNoInteger($1, path: "\(path)[\($0)]") }
        case is String, is Bool:
            return []
        case let number as NSNumber:
            let double = number.doubleValue
            return double.rounded() == double && double.magnitude < 9.2e18 ? [] : [path]
        default:
            return []
        }
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
