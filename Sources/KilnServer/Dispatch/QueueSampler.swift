import ServiceLifecycle

/// Samples the queue into its last hour of history every ``Dispatcher/sampleInterval``, on the
/// leader: what the dashboard's chart starts from when it opens.
struct QueueSampler: Service {
    let dispatcher: Dispatcher

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            await dispatcher.sample()
            // Not past a graceful shutdown: the server must not wait out the interval to exit.
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: Dispatcher.sampleInterval) }
        }
    }
}
