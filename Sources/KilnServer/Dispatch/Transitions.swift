import KilnCore

/// Where the server sends each committed transition of a generation: the one place its in-memory
/// state (the scheduler's queues, the event streams) follows the store's lifecycle.
///
/// On a server that dispatches, ``LocalTransitions`` applies them to its own dispatcher. A replica
/// that does not dispatch (several servers on one store, one leader) implements this by forwarding
/// each transition to the leader, or by leaving the leader to learn it from the store's change feed.
public protocol TransitionSink: Sendable {
    /// Applies a transition the store has committed; `generation` is as the store now holds it.
    ///
    /// Several generations that took the same transition (a batch of submissions, the completions
    /// of one worker call) go together, in order.
    func apply(_ effect: Transition.Effect, _ generations: [Generation]) async throws
}

extension TransitionSink {
    /// Applies one generation's transition.
    public func apply(_ effect: Transition.Effect, _ generation: Generation) async throws {
        try await apply(effect, [generation])
    }
}

extension Transition.Effect {
    /// The effect of an attempt that ended (a failure, an expired lease): back in the queue, or over.
    public static func settled(_ generation: Generation) -> Self {
        generation.state == .queued ? .requeued : .ended
    }
}

/// The transitions of this server's own generations, applied to its dispatcher, event streams and
/// metrics.
public struct LocalTransitions: TransitionSink {
    let dispatcher: Dispatcher
    let signals: GenerationSignals
    let metrics: ServerMetrics

    public init(dispatcher: Dispatcher, signals: GenerationSignals, metrics: ServerMetrics) {
        self.dispatcher = dispatcher
        self.signals = signals
        self.metrics = metrics
    }

    /// One hop to the dispatcher, and one to the event streams, for them all.
    public func apply(_ effect: Transition.Effect, _ generations: [Generation]) async throws {
        guard !generations.isEmpty else { return }
        var refused: (any Error)?
        do {
            try await dispatcher.apply(effect, generations)
        } catch {
            refused = error
        }
        for generation in generations { metrics.observe(effect, generation) }
        await signals.signal(generations.map(\.id))
        if let refused { throw refused }
    }
}
