import Foundation
import HTTPTypes
import Hummingbird
import KilnAPI
import KilnCore
import Logging
import NIOCore
import OpenAPIRuntime

/// Turns every error into `{"error": {"code", "message"}}` with its status (DESIGN §3): the one
/// place where domain errors meet HTTP.
///
/// The generated server wraps what a handler throws in a `ServerError`; one thrown before the
/// handler ran (its input did not decode) is the caller's fault, `400 invalid_request`, and its
/// message names the field.
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = KilnRequestContext
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch is CancellationError {
            throw CancellationError()
        } catch let error as ServerError where error.underlyingError is CancellationError {
            // The request was abandoned (shutdown, or the client went away): nothing to answer.
            throw CancellationError()
        } catch {
            let kiln = kilnError(error, request: request)
            if kiln.code == .internal {
                logger.error("unexpected error", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            }
            var response = Self.response(for: kiln)
            if kiln.code == .payloadTooLarge {
                // The rest of the body is refused: say so, and close the connection once the client
                // had time to read the answer, instead of reading whatever it still sends.
                response.headers[.connection] = "close"
                let channel = context.channel
                channel.eventLoop.scheduleTask(in: .seconds(Self.lingerSeconds)) { channel.close(promise: nil) }
            }
            return response
        }
    }

    /// How long a connection whose body was refused stays open for its client to read the `413`
    /// (while the rest of the body is read and dropped), as a web server's lingering close.
    static let lingerSeconds: Int64 = 5

    private func kilnError(_ error: any Error, request: Request) -> KilnError {
        switch error {
        case let error as KilnError:
            return error
        case let error as ServerError:
            if let kiln = error.underlyingError as? KilnError { return kiln }
            guard error.operationInput == nil else { return KilnError(.internal, "internal error") }
            return KilnError(.invalidRequest, Self.message(refusing: error))
        case let error as HTTPError:
            return Self.kilnError(from: error, request: request)
        default:
            return KilnError(.internal, "internal error")
        }
    }

    /// Why a request the generated code could not decode was refused, naming the field at fault:
    /// the body's field by its path, a query parameter by the query.
    static func message(refusing error: ServerError) -> String {
        guard let decoding = error.underlyingError as? DecodingError else { return error.causeDescription }
        if error.request.headerFields[.contentLength] == "0" { return "the request needs a JSON body" }
        switch decoding {
        case .dataCorrupted(let context) where context.debugDescription.hasPrefix("Additional properties are disabled"):
            let field = context.codingPath.map(\.stringValue).joined(separator: ".")
            return "unknown field '\(field)'"
        case .dataCorrupted(let context) where context.debugDescription == "The given data was not valid JSON.":
            return "malformed JSON: the body is not valid JSON"
        case .typeMismatch(_, let context) where context.codingPath.isEmpty:
            return "the body must be a JSON object"
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            let query = error.request.path.flatMap { path in path.firstIndex(of: "?").map { String(path[path.index(after: $0)...]) } }
            return "\(query.map { "the query '\($0)'" } ?? "the request") does not match the API document: \(context.debugDescription)"
        default:
            return decoding.message()
        }
    }

    static func status(of code: KilnError.Code) -> HTTPResponse.Status {
        switch code {
        case .invalidRequest: .badRequest
        case .unauthorized: .unauthorized
        case .forbidden: .forbidden
        case .notFound: .notFound
        case .conflict, .staleLease: .conflict
        case .payloadTooLarge: .contentTooLarge
        case .invalidInput: .unprocessableContent
        case .rateLimited: .tooManyRequests
        case .unavailable: .serviceUnavailable
        default: .internalServerError
        }
    }

    static func response(for error: KilnError) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        if let retryAfter = error.retryAfter {
            headers[.retryAfter] = String(retryAfter)
        }
        let body = Components.Schemas._Error(error: .init(code: error.code.rawValue, message: error.message))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(body)) ?? Data()
        return Response(status: status(of: error.code), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func kilnError(from error: HTTPError, request: Request) -> KilnError {
        switch error.status {
        case .notFound, .methodNotAllowed:
            return KilnError(.notFound, "no route \(request.method.rawValue) \(request.uri.path)")
        case .contentTooLarge:
            return KilnError(.payloadTooLarge, error.body ?? "the request body is too large")
        case .unauthorized:
            return KilnError(.unauthorized, error.body ?? "missing or invalid key")
        case .badRequest:
            return KilnError(.invalidRequest, error.body ?? "bad request")
        default:
            return KilnError(.internal, error.body ?? error.status.reasonPhrase)
        }
    }
}
