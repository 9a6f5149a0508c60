import Hummingbird

/// The request context of every route: Hummingbird's core storage. The caller is in
/// ``Principal/current``, where the generated handlers can read it.
public struct KilnRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
    }
}
