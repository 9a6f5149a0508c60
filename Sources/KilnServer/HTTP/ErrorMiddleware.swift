import Foundation
import HTTPTypes
import Hummingbird
import KilnAPI
import KilnCore
import Logging

/// Turns every error into `{"error": {"code", "message"}}` with its status (DESIGN §3): the one
/// place where domain errors meet HTTP.
struct ErrorMiddleware: RouterMiddleware {
    typealias Context = KilnRequestContext
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as KilnError {
            return Self.response(for: error)
        } catch let error as HTTPError {
            return Self.response(for: Self.kilnError(from: error, request: request))
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            logger.error("unexpected error", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            return Self.response(for: KilnError(.internal, "internal error"))
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
        let body = ErrorBody(code: error.code.rawValue, message: error.message)
        let data = (try? WireFormat.encoder().encode(body)) ?? Data()
        return Response(status: status(of: error.code), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func kilnError(from error: HTTPError, request: Request) -> KilnError {
        switch error.status {
        case .notFound:
            return KilnError(.notFound, "no route \(request.method.rawValue) \(request.uri.path)")
        case .methodNotAllowed:
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
