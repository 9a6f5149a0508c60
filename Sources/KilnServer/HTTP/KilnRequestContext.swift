import Hummingbird
import NIOCore

/// The request context of every route: Hummingbird's core storage and the request's connection.
/// The caller is in ``Principal/current``, where the generated handlers can read it.
public struct KilnRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The connection the request came on: an answer that refuses the rest of a body closes it.
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }
}
