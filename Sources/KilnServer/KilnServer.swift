import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import KilnAPI
import KilnCore
import KilnFleet
import KilnObjects
import KilnPostgres
import KilnScheduling
import KilnStore
import Logging
import NIOCore
import OpenAPIHummingbird
import OpenAPIRuntime
import ServiceLifecycle

/// The control plane (`kiln server`, DESIGN §2): the HTTP API over the store, the dispatcher, the
/// lease reaper and the change feed, as services for one `ServiceGroup` with graceful shutdown.
public struct KilnServer: Sendable {
    public let services: KilnServices
    let authenticator: Authenticator
    /// Starts `kiln worker` processes for `local` pools; nil where this process cannot.
    let localProvider: LocalProvider?
    /// Submits `kiln worker` jobs for `slurm` pools; nil where no pool needs it.
    let slurmProvider: SlurmProvider?
    /// Where the worker key of the workers the providers start is kept between runs (mode 0600):
    /// Slurm jobs outlive a restart, and one key serves every run.
    var providerKeyFile: URL?

    /// Opens (creating when needed) the state in `data`, by default `kiln.sqlite` and `objects/`,
    /// and rebuilds the dispatcher's queues from it.
    /// - Parameters:
    ///   - database: the store, when not the embedded one: `postgres://user:password@host:port/db`
    ///     (see ``PostgresURL``), or `sqlite:PATH`.
    ///   - objects: the object store, when not `data/objects`: `s3://bucket/prefix?endpoint=URL`
    ///     (see ``S3Configuration``), or a folder.
    ///   - workerProgram: the `kiln` program that `local` pools start workers with (their folders
    ///     go in `data/workers`); nil where workers cannot be started from this process.
    public static func open(
        data: URL, database: String? = nil, objects objectsURL: String? = nil, configuration: ServerConfiguration,
        clock: any WallClock = SystemWallClock(), adminKey: String? = nil, workerProgram: URL? = nil, logger: Logger = Logger(label: "kiln")
    ) async throws -> KilnServer {
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        let store = try await openStore(database, data: data, logger: logger)
        let objects = try openObjects(objectsURL, data: data)
        let local = workerProgram.map {
            LocalProvider(settings: .init(executable: $0, folder: data.appending(path: "workers")), logger: logger)
        }
        var slurm: SlurmProvider?
        if configuration.pools.contains(where: { $0.provider == .slurm }) {
            guard let program = configuration.slurm.program ?? workerProgram?.path else {
                throw KilnError(.invalidInput, "slurm.program: the kiln program the cluster's nodes run is needed for slurm pools")
            }
            let folder = configuration.slurm.folder.map { URL(filePath: $0, directoryHint: .isDirectory) } ?? data.appending(path: "slurm")
            slurm = SlurmProvider(
                settings: .init(program: program, folder: folder, serverURL: configuration.slurm.serverURL), logger: logger)
        }
        var extra: [ServerConfiguration.Pool.Provider: any CapacityProvider] = [:]
        let kubernetesPools = configuration.pools.filter { $0.provider == .kubernetes }
        if !kubernetesPools.isEmpty {
            let access = configuration.kubernetes
            let kubernetes = try KubernetesProvider(
                settings: .inCluster(
                    apiServer: access.apiServer, namespace: access.namespace, tokenFile: access.tokenFile, caFile: access.caFile),
                logger: logger)
            await kubernetes.follow(kubernetesPools)
            extra[.kubernetes] = kubernetes
        }
        var server = try await KilnServer(
            store: store, objects: objects, configuration: configuration, clock: clock, adminKey: adminKey, localProvider: local,
            slurmProvider: slurm, extraProviders: extra, logger: logger)
        server.providerKeyFile = data.appending(path: "provider-worker.key")
        return server
    }

    /// The store `database` names (see ``open(data:database:objects:configuration:clock:adminKey:workerProgram:logger:)``).
    static func openStore(_ database: String?, data: URL, logger: Logger) async throws -> any JobStore {
        guard let database else { return try SQLiteJobStore(path: data.appending(path: "kiln.sqlite").path) }
        if database.hasPrefix("postgres://") || database.hasPrefix("postgresql://") {
            return try await PostgresJobStore.connect(url: database, logger: logger)
        }
        if database.hasPrefix("sqlite:") {
            let path = String(database.dropFirst("sqlite:".count))
            guard !path.isEmpty else { throw KilnError(.invalidInput, "--database: 'sqlite:' needs a path, as in sqlite:/srv/kiln/kiln.sqlite") }
            return try SQLiteJobStore(path: path.hasPrefix("//") ? String(path.dropFirst(2)) : path)
        }
        throw KilnError(.invalidInput, "--database: '\(database.prefix(32))…' is neither postgres://user:password@host:port/database nor sqlite:PATH")
    }

    /// The object store `objects` names.
    static func openObjects(_ objects: String?, data: URL) throws -> any ObjectStore {
        guard let objects else { return try FileSystemObjectStore(root: data.appending(path: "objects")) }
        if objects.hasPrefix("s3://") { return try S3ObjectStore(configuration: S3Configuration(url: objects)) }
        guard !objects.contains("://") else {
            throw KilnError(.invalidInput, "--objects: '\(objects)' is neither s3://bucket/prefix?endpoint=URL nor a folder")
        }
        return try FileSystemObjectStore(root: URL(filePath: objects, directoryHint: .isDirectory))
    }

    public init(
        store: any JobStore, objects: any ObjectStore, configuration: ServerConfiguration, clock: any WallClock,
        adminKey: String?, localProvider: LocalProvider? = nil, slurmProvider: SlurmProvider? = nil,
        extraProviders: [ServerConfiguration.Pool.Provider: any CapacityProvider] = [:], logger: Logger
    ) async throws {
        for pool in configuration.pools where pool.provider == .local && localProvider == nil && extraProviders[.local] == nil {
            throw KilnError(.invalidInput, "pool '\(pool.spec.name)': the local provider cannot start workers from this process")
        }
        for pool in configuration.pools where pool.provider == .slurm && slurmProvider == nil && extraProviders[.slurm] == nil {
            throw KilnError(.invalidInput, "pool '\(pool.spec.name)': no Slurm access is configured for this server")
        }
        for pool in configuration.pools where pool.provider == .kubernetes && extraProviders[.kubernetes] == nil {
            throw KilnError(.invalidInput, "pool '\(pool.spec.name)': no Kubernetes access is configured for this server")
        }
        let dispatcher = try Dispatcher(store: store, clock: clock, configuration: configuration)
        let replica: ReplicaState
        if configuration.replicas.enabled {
            guard store is any LeaderElection else {
                throw KilnError(.invalidInput, "replicas.enabled: this store cannot elect a leader among servers")
            }
            replica = ReplicaState(role: .follower(leaderURL: nil))  // until elected: see `LeaderElector`
        } else {
            replica = ReplicaState(role: .leader(epoch: 0))
            try await Self.prepareToLead(store: store, dispatcher: dispatcher, clock: clock, configuration: configuration, logger: logger)
        }
        let cache = try await RecordCache.following(store)
        var providers: [ServerConfiguration.Pool.Provider: any CapacityProvider] = [.static: StaticProvider()]
        if let localProvider { providers[.local] = localProvider }
        if let slurmProvider { providers[.slurm] = slurmProvider }
        providers.merge(extraProviders) { _, extra in extra }
        self.localProvider = localProvider
        self.slurmProvider = slurmProvider
        self.services = KilnServices(
            store: store, objects: objects, dispatcher: dispatcher, signals: GenerationSignals(), cache: cache, clock: clock,
            configuration: configuration, providers: providers, replica: replica, logger: logger)
        self.authenticator = Authenticator(cache: cache, bootstrapAdminKey: adminKey.flatMap { $0.isEmpty ? nil : $0 })
        self.webhooks = WebhookSender(services: services)
    }

    /// What a server does before it leads: leases held through the absence of a leader run one
    /// more TTL (their workers, which kept working, re-attach with their tokens at their next
    /// heartbeat), and the queue is rebuilt from the store.
    static func prepareToLead(
        store: any JobStore, dispatcher: Dispatcher, clock: any WallClock, configuration: ServerConfiguration, logger: Logger
    ) async throws {
        let renewed = try await store.renewLeases(until: clock.now().addingTimeInterval(configuration.leases.ttlSeconds))
        if renewed > 0 { logger.info("renewed the leases held while no server led", metadata: ["leases": "\(renewed)"]) }
        try await dispatcher.reset()
        let skipped = try await dispatcher.load()
        for tier in Set(skipped.map(\.tier)).sorted() {
            logger.error(
                "generations of tier '\(tier)' are kept but not scheduled: the configuration no longer has that tier",
                metadata: ["count": "\(skipped.filter { $0.tier == tier }.count)"])
        }
    }

    /// Closes what the server opened that outlives its services: the PostgreSQL store's pool.
    public func close() async {
        await (services.store as? PostgresJobStore)?.shutdown()
    }

    /// The worker key of the workers the providers start: the one kept in `file` while the store
    /// still honours it, else a new one (kept there when there is a file).
    public static func providerKey(file: URL?, store: any JobStore, clock: any WallClock, logger: Logger) async -> String {
        if let file, let text = try? String(contentsOf: file, encoding: .utf8) {
            let secret = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if let record = try? await store.key(secretHash: KeySecret.hash(secret)), record.scope == .worker, record.revokedAt == nil {
                return secret
            }
        }
        let secret = KeySecret.generate(scope: .worker)
        do {
            try await store.createKey(
                APIKeyRecord(id: .random(), scope: .worker, accountID: nil, secretHash: KeySecret.hash(secret), createdAt: clock.now()))
            if let file {
                FileManager.default.createFile(atPath: file.path, contents: nil, attributes: [.posixPermissions: 0o600])
                try Data(secret.utf8).write(to: file)
            }
        } catch {
            logger.error("fleet: cannot keep the providers' worker key: \(error)")
        }
        return secret
    }

    /// The HTTP/1.1 server of `kiln server`: a connection idle for `idleTimeout` is closed, and each
    /// connection's client is watched (``ConnectionWatch``), so that a long poll whose client went
    /// away is handed no job.
    public static func http1(idleTimeout: TimeAmount? = nil) -> HTTPServerBuilder {
        .http1(configuration: .init(additionalChannelHandlers: [ConnectionWatch()], idleTimeout: idleTimeout))
    }

    /// Every operation of the API, as the OpenAPI document declares it.
    public func router() throws -> Router<KilnRequestContext> {
        let router = Router(context: KilnRequestContext.self)
        router.add(middleware: ErrorMiddleware(logger: services.logger))
        router.add(middleware: ClientConnectionScope())
        if services.configuration.replicas.enabled {
            router.add(middleware: LeaderForwarding(state: services.replica))
        }
        router.add(middleware: RequireScope(authenticator: authenticator))
        router.add(middleware: JSONBodyLimit(limit: services.configuration.limits.maxJSONBytes))
        try APIHandler(services: services).registerHandlers(
            on: router, configuration: .kiln, middlewares: [RequestMetrics(metrics: services.metrics), RawMediaTypes()])
        let services = services
        router.get("/dashboard") { _, _ -> Response in
            // No data in the page itself: it asks for an admin key and reads the admin API with it.
            Response(
                status: .ok,
                headers: [
                    .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                    .contentSecurityPolicy:
                        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; form-action 'none'",
                    .xContentTypeOptions: "nosniff", HTTPField.Name("Referrer-Policy")!: "no-referrer",
                ],
                body: .init(byteBuffer: ByteBuffer(string: DashboardPage.html)))
        }
        router.get("/metrics") { request, _ -> Response in
            if let token = services.configuration.metricsToken, request.headers[.authorization] != "Bearer \(token)" {
                throw KilnError(.unauthorized, "the metrics need the scrape token (metrics.token) as a bearer token")
            }
            return try await Self.metricsResponse(services)
        }
        return router
    }

    /// The Prometheus text of `services.metrics`, its gauges read first from the queue, the
    /// workers and the fleet.
    static func metricsResponse(_ services: KilnServices) async throws -> Response {
        if services.replica.isLeader {
            try await refreshLeaderGauges(services)
        } else {
            services.metrics.withdrawLeaderGauges()
        }
        return Response(
            status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: services.metrics.exposition())))
    }

    private static func refreshLeaderGauges(_ services: KilnServices) async throws {
        let running = try await services.store.runningGenerations()
        var leasedNotStarted: [String: Int] = [:]
        for generation in running where generation.lease?.startedAt == nil {
            leasedNotStarted[generation.lease?.cluster ?? "", default: 0] += 1
        }
        let fleet = await services.fleet.view()
        services.metrics.refresh(
            ServerMetrics.Now(
                queue: await services.dispatcher.view(limit: 1), workers: try await services.store.workers(),
                leasedNotStarted: leasedNotStarted, dispatchLimits: services.configuration.clusters.mapValues(\.dispatchLimit),
                pools: fleet.pools.compactMap { pool in
                    pool.decision.map { (pool.configured.spec.name, pool.configured.spec.cluster, $0.desired, $0.actual) }
                }))
    }

    /// The lease reaper: the background service beside the HTTP server.
    public func reaper(interval: Duration = .seconds(1)) -> LeaseReaper {
        LeaseReaper(
            store: services.store, transitions: services.transitions, clock: services.clock, metrics: services.metrics,
            interval: interval, logger: services.logger)
    }

    /// The webhook sender: delivers what the store's transitions enqueued.
    public let webhooks: WebhookSender

    /// The file janitor: retention and the deletion of objects whose records are gone.
    public func janitor(interval: Duration = .seconds(60)) -> FileJanitor {
        FileJanitor(
            store: services.store, objects: services.objects, clock: services.clock, retention: services.configuration.fileRetention,
            interval: interval, logger: services.logger)
    }

    /// The long-running parts of the control plane: the HTTP application, the lease reaper, the
    /// file janitor, the change feed and the fleet.
    /// - Parameter advertiseURL: where the other servers on the store reach this one, when they
    ///   elect a leader; by default `http://HOST:PORT` of the address it listens on.
    public func services(
        host: String, port: Int, advertiseURL: String? = nil, reaperInterval: Duration = .seconds(1),
        onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) throws -> [any Service] {
        let (local, slurm, store, clock, logger) = (localProvider, slurmProvider, services.store, services.clock, services.logger)
        let keyFile = providerKeyFile
        let bound = BoundURL()
        // A request in progress (a long poll, an event stream, an upload) is never cut by this.
        let idle = TimeAmount.nanoseconds(Int64(services.configuration.limits.idleTimeoutSeconds * 1e9))
        let application = Application(
            router: try router(), server: Self.http1(idleTimeout: idle),
            configuration: .init(address: .hostname(host, port: port), serverName: "kiln"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? port
                bound.set(advertiseURL ?? Self.url(host: host, port: port))
                if local != nil || slurm != nil {
                    // The workers the providers start reach this server with a worker key of their own.
                    let secret = await Self.providerKey(file: keyFile, store: store, clock: clock, logger: logger)
                    let url = Self.url(host: host, port: port)
                    await local?.connect(server: url, key: secret)
                    do {
                        try await slurm?.connect(server: url, key: secret)
                    } catch {
                        logger.error("slurm: cannot write the worker key: \(error)")
                    }
                }
                await onServerRunning(port)
            }, logger: services.logger)
        var leading: [any Service] = [
            reaper(interval: reaperInterval), janitor(), webhooks, services.fleet, QueueSampler(dispatcher: services.dispatcher),
        ]
        var electing: [any Service] = []
        if let election = services.store as? any LeaderElection, services.configuration.replicas.enabled {
            let (replica, dispatcher, configuration) = (services.replica, services.dispatcher, services.configuration)
            leading = leading.map { LeaderOnly(service: $0, state: replica) }
            electing = [
                LeaderElector(
                    election: election, state: replica, holder: "srv_\(UUID().uuidString.lowercased())", url: bound,
                    ttl: configuration.replicas.leaseSeconds, clock: clock, logger: logger,
                    prepare: {
                        try await Self.prepareToLead(store: store, dispatcher: dispatcher, clock: clock, configuration: configuration, logger: logger)
                    },
                    stepDown: { try? await dispatcher.reset() })
            ]
        }
        return [application] + electing + leading + [
            ChangeFeed(cache: services.cache, store: services.store, logger: services.logger),
            // Last, so shut down first: open event streams and long polls end before the HTTP
            // server waits for its connections.
            ConnectionCloser(dispatcher: services.dispatcher, signals: services.signals),
        ]
    }

    /// `http://HOST:PORT`, loopback for a server listening on every address.
    static func url(host: String, port: Int) -> String {
        let address = host == "0.0.0.0" || host == "::" ? "127.0.0.1" : host
        return "http://\(address.contains(":") ? "[\(address)]" : address):\(port)"
    }

    /// The most a graceful shutdown of the server may take before its services are cancelled: its
    /// local workers drain within half of it.
    public static let shutdownBound: Duration = .seconds(60)
}

/// On graceful shutdown, ends the requests that would hold it open: event streams close (their
/// clients reconnect with `Last-Event-ID`) and long polls answer `204` at once.
struct ConnectionCloser: Service {
    let dispatcher: Dispatcher
    let signals: GenerationSignals

    func run() async throws {
        try? await gracefulShutdown()
        await dispatcher.close()
        await signals.close()
    }
}
