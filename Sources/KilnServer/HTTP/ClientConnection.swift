import Hummingbird
import NIOCore
import Synchronization

/// Whether the client of a request is still there, for a long poll that must not be handed a job
/// nobody would receive.
///
/// The server allows a client to half-close its connection, so a client that went away leaves the
/// connection open until the server writes to it; nothing in a request's handler notices. The
/// ``ConnectionWatch`` in each connection's pipeline sees the client's end of input and marks its
/// connection gone.
final class ClientConnection: Sendable {
    private struct State {
        var gone = false
        var watchers: [Int: @Sendable () -> Void] = [:]
        var next = 0
    }

    private let state = Mutex(State())

    /// The connection of the request this task serves, on the routes that wait (see
    /// ``ClientConnectionScope``).
    @TaskLocal static var current: ClientConnection?

    var isGone: Bool { state.withLock { $0.gone } }

    /// Calls `action` once when the client goes, at once if it has gone.
    /// - Returns: what ``unwatch(_:)`` takes to cancel the call; nil when `action` ran already.
    func watch(_ action: @escaping @Sendable () -> Void) -> Int? {
        let id: Int? = state.withLock { state in
            guard !state.gone else { return nil }
            state.next += 1
            state.watchers[state.next] = action
            return state.next
        }
        if id == nil { action() }
        return id
    }

    func unwatch(_ id: Int) {
        _ = state.withLock { $0.watchers.removeValue(forKey: id) }
    }

    fileprivate func markGone() {
        let watchers = state.withLock { state -> [@Sendable () -> Void] in
            guard !state.gone else { return [] }
            state.gone = true
            defer { state.watchers.removeAll() }
            return Array(state.watchers.values)
        }
        for action in watchers { action() }
    }

    /// Every open connection's watch, by its channel.
    fileprivate static let open = Mutex<[ObjectIdentifier: ClientConnection]>([:])

    /// The connection of `channel`, when a ``ConnectionWatch`` is in its pipeline.
    static func of(_ channel: any Channel) -> ClientConnection? {
        open.withLock { $0[ObjectIdentifier(channel)] }
    }
}

/// Marks a connection's ``ClientConnection`` gone when the client ends its input or the connection
/// closes. One per connection, in the pipeline after HTTP decoding.
final class ConnectionWatch: ChannelInboundHandler, RemovableChannelHandler {
    /// Reads pass through untouched.
    typealias InboundIn = Any

    private let connection = ClientConnection()

    func handlerAdded(context: ChannelHandlerContext) {
        let (key, connection) = (ObjectIdentifier(context.channel), connection)
        ClientConnection.open.withLock { $0[key] = connection }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        let key = ObjectIdentifier(context.channel)
        _ = ClientConnection.open.withLock { $0.removeValue(forKey: key) }
        connection.markGone()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.markGone()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { connection.markGone() }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Binds ``ClientConnection/current`` for the calls that may wait in a long poll: a worker's
/// `lease` and `exchange`.
struct ClientConnectionScope: RouterMiddleware {
    typealias Context = KilnRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard path.hasSuffix("/lease") || path.hasSuffix("/exchange"), let connection = ClientConnection.of(context.channel) else {
            return try await next(request, context)
        }
        return try await ClientConnection.$current.withValue(connection) { try await next(request, context) }
    }
}
