import Foundation
import KilnAPI
import KilnCore
import KilnObjects
import KilnStore
import Logging

/// What every route and service of the control plane shares.
public struct KilnServices: Sendable {
    public let store: any JobStore
    public let objects: any ObjectStore
    public let dispatcher: Dispatcher
    public let signals: GenerationSignals
    /// Where every committed transition goes: this server's dispatcher and event streams.
    public let transitions: any TransitionSink
    /// Keys, workers, accounts, models, aliases and versions, as the store's change feed keeps them.
    public let cache: RecordCache
    /// Placement and autoscaling of the configured pools.
    public let fleet: FleetService
    public let clock: any WallClock
    public let configuration: ServerConfiguration
    /// What `GET /metrics` shows.
    public let metrics: ServerMetrics
    /// Whether this server leads (runs the scheduler) or forwards to the leader.
    public let replica: ReplicaState
    public let logger: Logger

    public init(
        store: any JobStore, objects: any ObjectStore, dispatcher: Dispatcher, signals: GenerationSignals, cache: RecordCache,
        clock: any WallClock, configuration: ServerConfiguration, providers: [ServerConfiguration.Pool.Provider: any CapacityProvider],
        replica: ReplicaState, logger: Logger
    ) {
        self.replica = replica
        self.store = store
        self.objects = objects
        self.dispatcher = dispatcher
        self.signals = signals
        let metrics = ServerMetrics(tiers: configuration.tiers)
        self.metrics = metrics
        store.observeCommits { metrics.committed($0) }
        let transitions = LocalTransitions(dispatcher: dispatcher, signals: signals, metrics: metrics)
        self.transitions = transitions
        self.cache = cache
        self.fleet = FleetService(
            store: store, dispatcher: dispatcher, transitions: transitions, cache: cache, clock: clock, configuration: configuration,
            providers: providers, logger: logger)
        self.clock = clock
        self.configuration = configuration
        self.logger = logger
    }

    /// The API's view of a generation, with its place in the queue while queued.
    func render(_ generation: Generation) async throws -> Components.Schemas.GenerationObject {
        try await render([generation])[0]
    }

    /// ``render(_:)`` of each, with one call to the dispatcher for all their places.
    func render(_ generations: [Generation]) async throws -> [Components.Schemas.GenerationObject] {
        let places = await dispatcher.queuePlaces(for: generations)
        return try zip(generations, places).map { try Components.Schemas.GenerationObject($0, place: $1) }
    }
}
