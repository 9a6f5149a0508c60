import Foundation
import HTTPTypes
import KilnAPI
import KilnCore
import KilnModels
import KilnObjects
import KilnStore
import Logging
import NIOCore
import OpenAPIRuntime

/// The HTTP API of DESIGN §3, as the OpenAPI document declares it: every operation of the
/// generated `APIProtocol`, one facet per tag (`+Public`, `+Admin`, `+Repository`, `+Worker`).
///
/// Handlers see only the decoded input: the caller is ``Principal/current`` (set by
/// ``RequireScope`` from the path), a raw body's media type is ``RawMedia/received``, and every
/// failure is a thrown ``KilnError`` that ``ErrorMiddleware`` answers with the documented error
/// body and status.
struct APIHandler: APIProtocol {
    let services: KilnServices

    func getHealth(_ input: Operations.GetHealth.Input) async throws -> Operations.GetHealth.Output {
        .ok(.init(body: .json(.init(status: .ok, role: services.replica.isLeader ? .leader : .follower))))
    }

    func getOpenAPIDocument(_ input: Operations.GetOpenAPIDocument.Input) async throws -> Operations.GetOpenAPIDocument.Output {
        .ok(.init(body: .yaml(HTTPBody(OpenAPIDocument.text))))
    }
}

/// Parsing the ids in a path: an id that is not even of the right form names no resource, so it
/// gets the same 404 as an unknown one.
enum PathID {
    static func parse<ID: PrefixedID>(_ raw: String, as type: ID.Type, _ noun: String) throws -> ID {
        guard let id = ID(rawValue: raw) else { throw KilnError(.notFound, "no \(noun) '\(raw)'") }
        return id
    }
}

/// The media type of a raw body, which the document declares as `*/*`: the generated code neither
/// passes the one received nor lets a handler choose the one sent, so ``RawMediaTypes`` carries
/// both around the handler. Likewise a redirect's `Location`, which the generated code would
/// percent-encode whole (as a header's string value) and so break.
enum RawMedia {
    /// The `Content-Type` of the request being handled.
    @TaskLocal static var received: String?
    /// Where a handler that answers with a raw body puts its `Content-Type`.
    @TaskLocal static var answer: Box?

    final class Box: @unchecked Sendable {
        private let lock = NSLock()
        private var value: String?
        private var redirect: String?
        var contentType: String? {
            get { lock.withLock { value } }
            set { lock.withLock { value = newValue } }
        }
        var location: String? {
            get { lock.withLock { redirect } }
            set { lock.withLock { redirect = newValue } }
        }
    }

    /// Sets the `Location` of the redirect this handler answers with, as it is.
    static func redirect(to url: URL) { answer?.location = url.absoluteString }

    /// Sets the `Content-Type` of the raw body this handler answers with.
    static func answer(with contentType: String) { answer?.contentType = contentType }
}

/// Times every API call, by operation and status class, for ``ServerMetrics``.
struct RequestMetrics: ServerMiddleware {
    let metrics: ServerMetrics

    func intercept(
        _ request: HTTPRequest, body: HTTPBody?, metadata: ServerRequestMetadata, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        let start = ContinuousClock.now
        func seconds() -> Double { start.duration(to: .now).seconds }
        do {
            let answer = try await next(request, body, metadata)
            metrics.request(operation: operationID, status: answer.0.status.code, seconds: seconds())
            return answer
        } catch {
            let kiln = (error as? KilnError) ?? ((error as? ServerError)?.underlyingError as? KilnError)
            metrics.request(operation: operationID, status: kiln.map { ErrorMiddleware.status(of: $0.code).code } ?? 500, seconds: seconds())
            throw error
        }
    }
}

/// Runs each operation with ``RawMedia`` set up, and answers a raw body with the media type its
/// handler chose instead of the document's `*/*`, and a redirect with its `Location` as it is.
struct RawMediaTypes: ServerMiddleware {
    func intercept(
        _ request: HTTPRequest, body: HTTPBody?, metadata: ServerRequestMetadata, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        let box = RawMedia.Box()
        var (response, responseBody) = try await RawMedia.$received.withValue(request.headerFields[.contentType]) {
            try await RawMedia.$answer.withValue(box) { try await next(request, body, metadata) }
        }
        if let contentType = box.contentType {
            response.headerFields[.contentType] = contentType
            // The type is the uploader's word: a browser must not sniff a stored file into HTML.
            response.headerFields[.xContentTypeOptions] = "nosniff"
        }
        if let location = box.location { response.headerFields[.location] = location }
        return (response, responseBody)
    }
}

extension HTTPBody {
    /// An object of the store, streamed, with its length.
    static func object(_ chunks: AsyncThrowingStream<ByteBuffer, any Error>, size: Int64) -> HTTPBody {
        HTTPBody(chunks.map { ArraySlice($0.readableBytesView) }, length: .known(size), iterationBehavior: .single)
    }

    /// The body as the object store takes it.
    var buffers: AsyncMapSequence<HTTPBody, ByteBuffer> { map { ByteBuffer(bytes: $0) } }
}
