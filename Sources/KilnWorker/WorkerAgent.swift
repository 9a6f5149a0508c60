import Foundation
import KilnAPI
import KilnCore
import KilnModels
import Logging
import OpenAPIRuntime
import ServiceLifecycle

/// What `kiln worker` is told.
public struct WorkerOptions: Sendable {
    public var server: String
    public var key: String
    public var cluster: String = "default"
    public var accelerator: String = "cpu"
    public var gpus: Int = 0
    public var labels: [String: String] = [:]
    /// The environment layer this worker uses (`cpu`, `cuda12-x86_64`, …).
    public var platform: String = "cpu"
    public var cache: URL
    public var cacheBudgetBytes: Int64 = 50 << 30
    public var python: String = "python3"
    /// The folder holding the `kiln_runtime` package.
    public var runtimePath: URL
    public var leaseWaitSeconds: Double = 20
    /// A job running longer than this is stopped and failed (retryable).
    public var jobTimeoutSeconds: Double = 3600

    public init(server: String, key: String, cache: URL, runtimePath: URL) {
        self.server = server
        self.key = key
        self.cache = cache
        self.runtimePath = runtimePath
    }
}

/// The worker agent (DESIGN §2, §7): registers, long-polls for leases, keeps model versions in its
/// cache, runs each job in a model-runtime process, streams progress through heartbeats, uploads the
/// outputs and completes or fails the job. On SIGTERM it drains: it finishes the jobs it runs and
/// takes no new one.
///
/// A worker with G GPUs runs up to G replicas ("lanes"), each with its own runtime process; a job
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
    private let devices: DeviceAllocator
    private var lanes: [Lane] = []
    private let lanesLock = NSLock()
    /// Set once registered.
    public private(set) var id: WorkerID?

    /// - Throws: `.invalidRequest` when the server is not an http(s) URL.
    public init(options: WorkerOptions, logger: Logger) throws {
        self.options = options
        self.client = try KilnAPIClient(server: options.server, key: options.key)
        self.logger = logger
        self.devices = DeviceAllocator(count: options.gpus)
    }

    /// One replica: its runtime process and the devices that runtime was started on.
    final class Lane: @unchecked Sendable {
        let index: Int
        var runtime: RuntimeProcess?
        var runtimeEvents: AsyncStream<RuntimeProcess.Event>.Iterator?
        var devices: [Int] = []

        init(index: Int) { self.index = index }
    }

    /// Versions some lane's runtime serves: the cache keeps them.
    private var versionsInUse: Set<KilnCore.Digest> {
        lanesLock.withLock { Set(lanes.compactMap { $0.runtime?.version }) }
    }

    public func run() async throws {
        let options = self.options
        let answer = try await client {
            try await $0.registerWorker(
                body: .json(
                    .init(
                        cluster: options.cluster, accelerator: options.accelerator, gpus: options.gpus,
                        labels: .init(additionalProperties: options.labels)))
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
        let lanes = (0..<count).map(Lane.init(index:))
        lanesLock.withLock { self.lanes = lanes }
        await withTaskGroup(of: Void.self) { group in
            for lane in lanes {
                group.addTask {
                    var logger = logger
                    if count > 1 { logger[metadataKey: "replica"] = "\(lane.index)" }
                    await self.poll(lane, worker: registration, cache: cache, logger: logger)
                }
            }
        }
        logger.info("drained; stopping")
    }

    /// One replica's loop. While a job runs, the next one is leased and prepared (prefetched): its
    /// version pulled, its inputs fetched, its lease kept alive by heartbeats, so the replica starts
    /// it the moment it is free. The cluster's dispatch limit bounds how many jobs are held this way.
    private func poll(_ lane: Lane, worker registration: Registration, cache: VersionCache, logger: Logger) async {
        var prefetch: Task<PreparedJob?, Never>?
        while true {
            let current: PreparedJob?
            if let prefetch {
                current = await prefetch.value
            } else {
                await devices.waitForAnyFree()
                current = await leaseAndPrepare(worker: registration, cache: cache, logger: logger)
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
            await run(current, on: lane)
        }
        await lane.runtime?.stop()
    }

    // MARK: - One job

    /// What registering told this worker.
    struct Registration: Sendable {
        var id: WorkerID
        var heartbeatSeconds: Double
    }

    /// A leased job, as the worker protocol names it in every call about it.
    struct JobLease: Sendable {
        var worker: String
        var job: GenerationID
        var token: String
    }

    /// A leased job made ready to run: version in the cache, inputs on disk, lease kept alive.
    struct PreparedJob {
        var lease: JobLease
        var input: [String: JSONValue]
        var logger: Logger
        var folder: URL
        var files: [String: JSONValue]
        var version: PreparedVersion
        var progress: ProgressBox
        var heartbeats: Task<Void, Never>

        var outputs: URL { folder.appending(path: "outputs") }

        func release() {
            heartbeats.cancel()
            try? FileManager.default.removeItem(at: folder)
        }
    }

    /// Leases a job (long poll) and prepares it. Nil when nothing came, or when the job could not be
    /// prepared (it has then been reported).
    private func leaseAndPrepare(worker registration: Registration, cache: VersionCache, logger: Logger) async
        -> PreparedJob?
    {
        guard !Task.isShuttingDownGracefully, !Task.isCancelled else { return nil }
        let answer: Components.Schemas.LeaseResponse?
        let asked = ContinuousClock.now
        let (worker, wait) = (registration.id.rawValue, options.leaseWaitSeconds)
        do {
            answer = try await cancelWhenGracefulShutdown {
                try await self.client(timeout: .seconds(wait + 30)) {
                    switch try await $0.leaseJob(path: .init(id: worker), body: .json(.init(waitSeconds: wait))) {
                    case .ok(let leased): return try leased.body.json
                    case .noContent: return nil
                    default: throw KilnError(.internal, "the lease call answered with a status the worker protocol does not have")
                    }
                }
            }
        } catch {
            if !Task.isShuttingDownGracefully, !Task.isCancelled {
                logger.warning("lease failed: \(error); retrying")
                try? await Task.sleep(for: .seconds(1))
            }
            return nil
        }
        guard let answer else {
            // Nothing came. An answer well before the wait (a draining worker) is no reason to ask
            // again at once.
            if ContinuousClock.now - asked < .seconds(1) { try? await Task.sleep(for: .seconds(1)) }
            return nil
        }
        let job = answer.job
        guard let jobID = GenerationID(rawValue: job.id) else {
            logger.error("the server leased '\(job.id)', which is not a generation id")
            return nil
        }
        let lease = JobLease(worker: worker, job: jobID, token: answer.lease.token)
        var logger = logger
        logger[metadataKey: "generation"] = "\(job.id)"
        let folder = options.cache.appending(path: "jobs/\(job.id)-\(job.attempt)")
        // The lease is kept alive from now until the job is reported, preparation and uploads included.
        let progress = ProgressBox(JobProgress(fraction: 0, stage: "preparing"))
        let heartbeats = heartbeats(lease, every: registration.heartbeatSeconds, progress: progress, logger: logger)
        do {
            guard let text = job.version, let versionID = KilnCore.Digest(text) else {
                throw KilnError(.invalidInput, "model '\(job.model)' has no version to run")
            }
            let version = try await cache.prepare(versionID, keeping: versionsInUse)
            var files: [String: JSONValue] = [:]
            for (name, meta) in job.inputFiles.additionalProperties.sorted(by: { $0.key < $1.key }) {
                let path = folder.appending(path: "inputs/\(name)")
                try FileManager.default.createDirectory(at: path.deletingLastPathComponent(), withIntermediateDirectories: true)
                let digest = try await client.transfer {
                    try await $0.downloadJobInput(
                        path: .init(id: lease.worker, job: lease.job.rawValue, name: name), query: .init(token: lease.token)
                    ).ok.body.any.write(to: path)
                }
                guard digest == meta.sha256 else { throw KilnError(.invalidInput, "input '\(name)' arrived with another digest") }
                files[name] = .string(path.path)
            }
            try FileManager.default.createDirectory(at: folder.appending(path: "outputs"), withIntermediateDirectories: true)
            progress.update(JobProgress(fraction: 0, stage: "ready"))
            return PreparedJob(
                lease: lease, input: [String: JSONValue](job.input.additionalProperties), logger: logger, folder: folder, files: files,
                version: version, progress: progress, heartbeats: heartbeats)
        } catch {
            heartbeats.cancel()
            try? FileManager.default.removeItem(at: folder)
            await report(error, lease, logger: logger)
            return nil
        }
    }

    /// Runs a prepared job on a replica and reports how it ended.
    private func run(_ prepared: PreparedJob, on lane: Lane) async {
        defer { prepared.release() }
        let (lease, logger, progress) = (prepared.lease, prepared.logger, prepared.progress)
        do {
            guard !progress.isCanceled else {
                logger.info(progress.isLost ? "the lease was lost before the job started" : "canceled before it started")
                return
            }
            // 1. Devices and the runtime.
            let needed = prepared.version.manifest.gpus
            guard needed <= devices.total else {
                try await fail(
                    lease, code: "not_enough_gpus", message: "version needs \(needed) GPUs; this worker has \(devices.total)",
                    retryable: true)
                return
            }
            let held = await devices.acquire(needed, prefer: lane.devices)
            defer { Task { await self.devices.release(held) } }
            try await makeCurrent(prepared.version, on: lane, devices: held, logger: logger)
            guard !progress.isCanceled else {
                logger.info(progress.isLost ? "the lease was lost while preparing" : "canceled while preparing")
                return
            }
            // 2. Run.
            _ = try await client { try await $0.startJob(path: .init(id: lease.worker, job: lease.job.rawValue), body: .json(.init(token: lease.token))).ok }
            progress.update(JobProgress(fraction: 0, stage: "started"))
            progress.attach(lane.runtime)
            var predict: [String: JSONValue] = ["op": .string("predict"), "id": .string(lease.job.rawValue)]
            predict["inputs"] = .object(prepared.input)
            predict["files"] = .object(prepared.files)
            predict["output_dir"] = .string(prepared.outputs.path)
            lane.runtime?.send(predict)
            let outcome = await follow(lease.job.rawValue, on: lane, progress: progress)
            progress.attach(nil)
            // 3. Report.
            switch outcome {
            case .done(let produced):
                var names: [String] = []
                for (name, path) in produced.sorted(by: { $0.key < $1.key }) {
                    _ = try await client.transfer(contentType: Self.contentType(of: path)) {
                        try await $0.uploadJobOutput(
                            path: .init(id: lease.worker, job: lease.job.rawValue, name: name), query: .init(token: lease.token),
                            body: .any(try HTTPBody.file(URL(filePath: path)))
                        ).created
                    }
                    names.append(name)
                }
                let published = names
                _ = try await client {
                    try await $0.completeJob(path: .init(id: lease.worker, job: lease.job.rawValue), body: .json(.init(token: lease.token, outputs: published))).noContent
                }
                logger.info("succeeded", metadata: ["outputs": "\(names)"])
            case .failed(let code, let message):
                try await fail(lease, code: code, message: message, retryable: false)
                logger.info("model failed", metadata: ["code": "\(code)"])
            case .crashed(let message):
                try await fail(lease, code: "runtime_crashed", message: message, retryable: true)
                logger.warning("runtime crashed: \(message)")
            case .canceled:
                logger.info(progress.isLost ? "the lease was lost; the job was stopped" : "canceled")
            }
        } catch {
            await report(error, lease, logger: logger)
        }
    }

    /// Reports a job this worker could not carry through.
    private func report(_ error: any Error, _ lease: JobLease, logger: Logger) async {
        switch error {
        case let error as KilnError where error.code == .staleLease || error.code == .conflict:
            logger.info("the job is no longer ours: \(error.message)")
        case let error as KilnError where [.invalidRequest, .invalidInput, .payloadTooLarge].contains(error.code):
            // Refused content (an output name, a size, a job without a version): running it again
            // would fail the same way.
            logger.error("the job cannot run: \(error.message)")
            try? await fail(lease, code: "invalid_job", message: error.message, retryable: false)
        default:
            logger.error("job failed on this worker: \(error)")
            try? await fail(lease, code: "worker_error", message: "\(error)", retryable: true)
        }
    }

    /// Heartbeats the lease every `interval` (sooner when progress moved) until cancelled; stops the
    /// runtime when the job is canceled (a second's grace) or the lease is lost, and when the job
    /// runs past its time limit.
    private func heartbeats(_ lease: JobLease, every interval: Double, progress: ProgressBox, logger: Logger) -> Task<Void, Never> {
        let client = self.client
        let timeout = options.jobTimeoutSeconds
        return Task {
            let started = ContinuousClock.now
            var stoppedAt: ContinuousClock.Instant?
            while !Task.isCancelled {
                // Checked four times an interval, so a heartbeat is never more than a quarter late.
                try? await Task.sleep(for: .milliseconds(Int(min(interval / 4, 1) * 1000)))
                if Task.isCancelled { break }
                if let stoppedAt, ContinuousClock.now - stoppedAt > .seconds(1) {
                    progress.runtime?.kill()  // did not stop within a second
                }
                if ContinuousClock.now - started > .seconds(timeout) {
                    logger.warning("job ran past its time limit of \(Int(timeout)) s; stopping its runtime")
                    progress.runtime?.kill()
                }
                guard progress.dueForHeartbeat(every: interval) else { continue }
                let stop: Bool
                do {
                    let current = Components.Schemas.ProgressObject(progress.current)
                    stop = try await client(timeout: .seconds(max(interval, 5))) {
                        try await $0.heartbeatJob(path: .init(id: lease.worker, job: lease.job.rawValue), body: .json(.init(token: lease.token, progress: current))).ok
                            .body.json.cancel
                    }
                } catch let error as KilnError where error.code == .staleLease || error.code == .conflict || error.code == .notFound {
                    // Another worker holds the job now: whatever this one produces would be refused.
                    logger.warning("lost the lease: \(error.message)")
                    progress.lose()
                    stop = true
                } catch {
                    continue  // a missed heartbeat; the next one may get through before the TTL
                }
                if stop, stoppedAt == nil {
                    progress.cancel()
                    stoppedAt = .now
                    progress.runtime?.send(["op": .string("cancel"), "id": .string(lease.job.rawValue)])
                }
            }
        }
    }

    enum Outcome {
        case done([String: String])
        case failed(code: String, message: String)
        case crashed(String)
        case canceled
    }

    /// Reads runtime events until this job ends.
    private func follow(_ job: String, on lane: Lane, progress: ProgressBox) async -> Outcome {
        while var iterator = lane.runtimeEvents, let event = await iterator.next() {
            lane.runtimeEvents = iterator
            switch event {
            case .progress(let id, let fraction, let stage) where id == job:
                progress.update(JobProgress(fraction: fraction, stage: stage))
            case .done(let id, let outputs) where id == job:
                return progress.isCanceled ? .canceled : .done(outputs)
            case .error(let id, let code, let message) where id == job:
                return progress.isCanceled ? .canceled : .failed(code: code, message: message)
            case .canceled(let id) where id == job:
                return .canceled
            case .exited(let status):
                lane.runtime = nil
                lane.runtimeEvents = nil
                return progress.isCanceled ? .canceled : .crashed("the model runtime exited (status \(status)) during the job")
            default:
                continue
            }
        }
        lane.runtime = nil
        return progress.isCanceled ? .canceled : .crashed("the model runtime stopped answering")
    }

    /// Makes `version`'s runtime on `devices` the lane's current one: started and set up beside the
    /// old, which then stops.
    private func makeCurrent(_ version: PreparedVersion, on lane: Lane, devices: [Int], logger: Logger) async throws {
        if let runtime = lane.runtime, runtime.version == version.id, lane.devices == devices, runtime.isRunning { return }
        let fresh = try RuntimeProcess(
            version: version, python: options.python, runtimePath: options.runtimePath, devices: devices, logger: logger)
        var events = fresh.events.makeAsyncIterator()
        fresh.send(["op": .string("setup")])
        // A setup that hangs is killed at the job's time limit; its exit ends the wait below.
        let limit = options.jobTimeoutSeconds
        let guardTask = Task {
            try? await Task.sleep(for: .seconds(limit))
            if !Task.isCancelled { fresh.kill() }
        }
        defer { guardTask.cancel() }
        setup: while let event = await events.next() {
            switch event {
            case .ready: break setup
            case .setupFailed(let message):
                fresh.kill()
                throw KilnError(.unavailable, "version \(version.id.short) failed to set up: \(message)")
            case .exited(let status):
                throw KilnError(.unavailable, "version \(version.id.short)'s runtime exited during setup (status \(status))")
            default: continue
            }
        }
        let old = lane.runtime
        lanesLock.withLock {
            lane.runtime = fresh
            lane.runtimeEvents = events
            lane.devices = devices
        }
        if let old {
            logger.info("switched version", metadata: ["from": "\(old.version.short)", "to": "\(version.id.short)"])
            await old.stop()
        }
    }

    private func fail(_ lease: JobLease, code: String, message: String, retryable: Bool) async throws {
        _ = try await client {
            try await $0.failJob(
                path: .init(id: lease.worker, job: lease.job.rawValue),
                body: .json(.init(token: lease.token, error: .init(code: code, message: message), retryable: retryable))
            ).noContent
        }
    }

    static func contentType(of path: String) -> String {
        switch URL(filePath: path).pathExtension.lowercased() {
        case "mp4": "video/mp4"
        case "webm": "video/webm"
        case "png": "image/png"
        case "jpg", "jpeg": "image/jpeg"
        case "gif": "image/gif"
        case "wav": "audio/wav"
        case "json": "application/json"
        case "txt": "text/plain"
        default: "application/octet-stream"
        }
    }
}

/// The latest progress of the job, and the runtime running it, shared with its heartbeat task.
final class ProgressBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: JobProgress
    private var changed = true
    private var lastBeat = ContinuousClock.now
    private var canceled = false
    private var lost = false
    private var running: RuntimeProcess?

    init(_ initial: JobProgress) { value = initial }

    var current: JobProgress { lock.withLock { value } }
    /// Canceled by its owner, or lost to another worker: stop and report nothing.
    var isCanceled: Bool { lock.withLock { canceled } }
    var isLost: Bool { lock.withLock { lost } }
    var runtime: RuntimeProcess? { lock.withLock { running } }

    func attach(_ runtime: RuntimeProcess?) { lock.withLock { running = runtime } }

    func lose() {
        lock.withLock {
            lost = true
            canceled = true
        }
    }

    func update(_ progress: JobProgress) {
        lock.withLock {
            changed = changed || progress != value
            value = progress
        }
    }

    func cancel() { lock.withLock { canceled = true } }

    /// A heartbeat is due when the interval has passed, or a second has and progress moved.
    func dueForHeartbeat(every interval: Double) -> Bool {
        lock.withLock {
            let elapsed = ContinuousClock.now - lastBeat
            guard elapsed >= .seconds(interval) || (changed && elapsed >= .seconds(1)) else { return false }
            lastBeat = .now
            changed = false
            return true
        }
    }
}
