import Logging
import ServiceLifecycle
import UnixSignals

/// Runs long-lived services until SIGTERM or SIGINT, then shuts them down gracefully: the one way
/// `kiln server`, `kiln worker` and `kiln up` run theirs.
/// - Parameter bound: how long the graceful shutdown may take before the services are cancelled;
///   nil waits for them (a worker drains its jobs, however long they run).
func serve(_ services: [any Service], bound: Duration? = nil, logger: Logger) async throws {
    var configuration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
    configuration.maximumGracefulShutdownDuration = bound
    try await ServiceGroup(configuration: configuration).run()
}
