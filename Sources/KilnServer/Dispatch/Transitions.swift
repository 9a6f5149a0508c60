import KilnCore

/// Where the server sends each committed transition of a generation: the one place its in-memory
/// state (the scheduler's queues, the event streams) follows the store's lifecycle.
///
/// On a server that dispatches, ``LocalTransitions`` applies them to its own dispatcher. A replica
/// that does not dispatch (several servers on one store, one leader) implements this by forwarding
/// each transition to the leader, or by leaving the leader to learn it from the store's change feed.
public protocol TransitionSink: Sendable {
    /// Applies a transition the store has committed; `generation` is as the store now holds it.
    func apply(_ effect: Transition.Effect, _ generation: Generation) async throws

    /// Applies the submission of several new generations, as `apply(.submitted, _)` would each.
    func submitted(_ generations: [Generation]) async throws
}

extension TransitionSink {
    public func submitted(_ generations: [Generation]) async throws {
        for generation in generations { try await apply(.submitted, generation) }
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

    public func apply(_ effect: Transition.Effect, _ generation: Generation) async throws {
        switch effect {
        case .submitted: try await dispatcher.submitted(generation)
        case .started: await dispatcher.started(generation)
        case .requeued: await dispatcher.requeued(generation)
        case .ended: await dispatcher.ended(generation)
        case .leased, .progressed: break  // the dispatcher leased it itself; progress is for the streams
        }
        metrics.observe(effect, generation)
        await signals.signal(generation.id)
    }

    /// One hop to the dispatcher for them all.
    public func submitted(_ generations: [Generation]) async throws {
        guard !generations.isEmpty else { return }
        try await dispatcher.submitted(generations)
        for generation in generations {
            metrics.observe(.submitted, generation)
            await signals.signal(generation.id)
        }
    }
}
