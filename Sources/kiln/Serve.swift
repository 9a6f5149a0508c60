import Logging
import ServiceLifecycle
import UnixSignals

/// Runs long-lived services until SIGTERM or SIGINT, then shuts them down gracefully: the one way
/// `kiln server`, `kiln worker` and `kiln up` run theirs.
func serve(_ services: [any Service], logger: Logger) async throws {
    try await ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)).run()
}
