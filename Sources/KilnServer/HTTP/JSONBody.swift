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
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw KilnError(.payloadTooLarge, "the JSON body is larger than the limit of \(limit) bytes")
        }
        let data = Data(buffer.readableBytesView)
        return try decode(type, from: data)
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
            throw KilnError(.invalidRequest, describe(error))
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ codingPath: [any CodingKey]) -> String {
            codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingPrefix(".").description
        }
        func kind(_ type: Any.Type) -> String {
            switch type {
            case is String.Type: "a string"
            case is Bool.Type: "a boolean"
            case is Int.Type, is Int64.Type, is Double.Type: "a number"
            case is [Any].Type, is [String].Type: "an array"
            default: String(describing: type).hasPrefix("Dictionary") ? "an object" : "\(type)"
            }
        }
        switch error {
        case .keyNotFound(let key, let context):
            let parent = path(context.codingPath)
            return "missing field '\(parent.isEmpty ? key.stringValue : parent + "." + key.stringValue)'"
        case .typeMismatch(let type, let context):
            return "field '\(path(context.codingPath))' must be \(kind(type))"
        case .valueNotFound(let type, let context):
            return "field '\(path(context.codingPath))' must be \(kind(type)), not null"
        case .dataCorrupted(let context):
            let field = path(context.codingPath)
            return field.isEmpty ? context.debugDescription : "field '\(field)': \(context.debugDescription)"
        @unknown default:
            return "the body does not match the expected shape"
        }
    }

    static func response<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try WireFormat.encoder().encode(value)
        return Response(
            status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
