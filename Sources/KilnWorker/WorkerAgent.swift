import Foundation
import KilnAPI
import KilnCore
import KilnModels
import Logging
import OpenAPIRuntime
import ServiceLifecycle

/// The worker agent (DESIGN §2, §7): registers, long-polls for leases, keeps model versions in its
/// cache, runs each job in a model-runtime process, streams progress through heartbeats, uploads the
/// outputs and completes or fails the job. On SIGTERM it drains: it finishes the jobs it runs and
/// takes no new one.
///
/// A worker with G GPUs runs up to G replicas, each with its own runtime process; a job
/// whose version needs N GPUs takes N devices (`CUDA_VISIBLE_DEVICES`), so G/N replicas of it run at
/// once. A worker without GPUs runs one.
///
/// A job's steps:
/// 1. prepare its version (cache, or fetch and unpack) and fetch its inputs, checking digests;
/// 2. make the version's runtime current: a new version is started and set up beside the old one,
///    which is stopped once the new one is ready, so switching never fails a job;
/// 3. `start`, then `predict`, heartbeating every `heartbeat_seconds` with the latest progress;
///    a heartbeat answering `cancel` cancels the prediction, killing the runtime after a second;
/// 4. upload the outputs and `complete`; a model error fails the job; a runtime that dies or hangs
///    past the time limit fails it as retryable, and is started afresh for the next job.
public final class WorkerAgent: Service, @unchecked Sendable {
    let options: WorkerOptions
    let client: KilnAPIClient
    let logger: Logger
    let devices: DeviceAllocator
    /// What `kiln worker --metrics-port` serves.
    public let metrics = WorkerMetrics()
    private var replicas: [Replica] = []
    let replicasLock = NSLock()
    /// The version of its assignment this worker has prepared (guarded by `replicasLock`).
    private var preparedVersion: String?
    /// Set once registered.
    public private(set) var id: WorkerID?

    /// - Throws: `.invalidRequest` when the server is not an http(s) URL.
    public init(options: WorkerOptions, logger: Logger) throws {
        self.options = options
        self.client = try KilnAPIClient(server: options.server, key: options.key)
        self.logger = logger
        self.devices = DeviceAllocator(count: options.gpus)
    }

    /// The metrics in the Prometheus text format, with the GPUs busy now.
    public func metricsExposition() async -> [UInt8] {
        metrics.exposition(busyGPUs: await devices.busy, totalGPUs: devices.total)
    }

    /// The version of its assignment this worker has prepared, told to the server on every lease.
    var readyVersion: String? {
        get { replicasLock.withLock { preparedVersion } }
        set { replicasLock.withLock { preparedVersion = newValue } }
    }

    /// Versions some replica's runtime serves: the cache keeps them.
    var versionsInUse: Set<KilnCore.Digest> {
        replicasLock.withLock { Set(replicas.compactMap { $0.runtime?.version }) }
    }

    public func run() async throws {
        let options = self.options
        let answer = try await client {
            try await $0.registerWorker(
                body: .json(
                    .init(
                        cluster: options.cluster, accelerator: options.accelerator, gpus: options.gpus,
                        labels: .init(additionalProperties: options.labels), pool: options.pool))
            ).created.body.json
        }
        guard let workerID = WorkerID(rawValue: answer.id) else {
            throw KilnError(.internal, "the server registered this worker as '\(answer.id)', which is not a worker id")
        }
        let registration = Registration(id: workerID, heartbeatSeconds: answer.heartbeatSeconds)
        id = workerID
        let logger = {
            var logger = self.logger
            logger[metadataKey: "worker"] = "\(registration.id)"
            return logger
        }()
        logger.info("registered", metadata: ["cluster": "\(options.cluster)", "accelerator": "\(options.accelerator)"])
        let cache = try VersionCache(
            root: options.cache, budgetBytes: options.cacheBudgetBytes, platform: options.platform, client: client, workerID: registration.id)
        let count = max(1, options.gpus)
        let replicas = (0..<count).map(Replica.init(index:))
        replicasLock.withLock { self.replicas = replicas }
        await withTaskGroup(of: Void.self) { group in
            for replica in replicas {
                group.addTask {
                    var logger = logger
                    if count > 1 { logger[metadataKey: "replica"] = "\(replica.index)" }
                    await self.poll(replica, worker: registration, cache: cache, logger: logger)
                }
            }
        }
        logger.info("drained; stopping")
    }

    /// One replica's loop. While a job runs, the next one is leased and prepared (prefetched): its
    /// version pulled, its inputs fetched, its lease kept alive by heartbeats, so the replica starts
    /// it the moment it is free. The cluster's dispatch limit bounds how many jobs are held this way.
    private func poll(_ replica: Replica, worker registration: Registration, cache: VersionCache, logger: Logger) async {
        var prefetch: Task<PreparedJob?, Never>?
        while true {
            let current: PreparedJob?
            if let prefetch {
                current = await prefetch.value
            } else {
                await devices.waitForAnyFree()
                current = await leaseAndPrepare(worker: registration, cache: cache, idle: replica, logger: logger)
            }
            prefetch = nil
            let draining = Task.isShuttingDownGracefully || Task.isCancelled
            guard let current else {
                if draining { break }
                continue
            }
            if !draining {
                prefetch = Task { await self.leaseAndPrepare(worker: registration, cache: cache, logger: logger) }
            }
            await run(current, on: replica)
        }
        await replica.runtime?.stop()
    }

    /// What registering told this worker.
    struct Registration: Sendable {
        var id: WorkerID
        var heartbeatSeconds: Double
    }
}
