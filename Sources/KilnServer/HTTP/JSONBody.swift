import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import KilnAPI
import KilnCore

/// Reading and writing JSON bodies, with errors that name the field at fault.
enum JSONBody {
    /// Decodes a request body of type `T`.
    ///
    /// - Throws: `.payloadTooLarge` past `limit`; `.invalidRequest` for malformed JSON, a body that is
    ///   not an object, an unknown field, a missing field or a value of the wrong type, each named.
    static func decode<T: WireRequest>(_ type: T.Type, from request: Request, limit: Int) async throws -> T {
        try decode(type, from: try await collect(request, limit: limit))
    }

    /// The whole body, up to `limit` bytes.
    /// - Throws: `.payloadTooLarge` naming `what` and the limit.
    static func collect(_ request: Request, limit: Int, what: String = "the JSON body") async throws -> Data {
        do {
            return Data(try await request.body.collect(upTo: limit).readableBytesView)
        } catch is NIOTooManyBytesError {
            throw KilnError(.payloadTooLarge, "\(what) is larger than the limit of \(limit) bytes")
        }
    }

    static func decode<T: WireRequest>(_ type: T.Type, from data: Data) throws -> T {
        guard !data.isEmpty else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let object: [String: Any]
        do {
            guard let parsed = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) as? [String: Any] else {
                throw KilnError(.invalidRequest, "the body must be a JSON object")
            }
            object = parsed
        } catch let error as KilnError {
            throw error
        } catch {
            let detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
            throw KilnError(.invalidRequest, "malformed JSON: \(detail ?? "the body is not valid JSON")")
        }
        if let unknown = object.keys.sorted().first(where: { !T.fields.contains($0) }) {
            throw KilnError(
                .invalidRequest, "unknown field '\(unknown)'; expected \(T.fields.sorted().map { "'\($0)'" }.joined(separator: ", "))")
        }
        do {
            return try WireFormat.decoder().decode(T.self, from: data)
        } catch let error as DecodingError {
            throw KilnError(.invalidRequest, error.message())
        }
    }

    static func response<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try WireFormat.encoder().encode(value)
        return Response(
            status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
