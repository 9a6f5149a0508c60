import Foundation
import KilnAPI
import KilnCore
import KilnModels
import Logging
import OpenAPIRuntime
import ServiceLifecycle

/// One job on a replica: lease, prepare, run, report.
extension WorkerAgent {
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
        /// Input files by name: their paths on disk.
        var files: [String: String]
        var version: PreparedVersion
        var progress: LeaseKeeper

        var outputs: URL { folder.appending(path: "outputs") }

        func release() {
            progress.stop()
            try? FileManager.default.removeItem(at: folder)
        }
    }

    /// What a lease call answered.
    enum LeaseAnswer {
        case job(Components.Schemas.LeaseResponse)
        case assignment(Components.Schemas.AssignmentObject)
        case nothing
    }

    /// Leases a job (long poll) and prepares it. Nil when nothing came, when the job could not be
    /// prepared (it has then been reported), or when the server placed this worker on a version to
    /// prepare first: it is then pulled and, on `idle` (a replica running nothing), set up, and
    /// the next lease says it is ready.
    func leaseAndPrepare(worker registration: Registration, cache: VersionCache, idle: Replica? = nil, logger: Logger) async
        -> PreparedJob?
    {
        guard !Task.isShuttingDownGracefully, !Task.isCancelled else { return nil }
        let leased: LeaseAnswer
        let asked = ContinuousClock.now
        let (worker, wait, ready) = (registration.id.rawValue, options.leaseWaitSeconds, readyVersion)
        do {
            leased = try await cancelWhenGracefulShutdown {
                try await self.client(timeout: .seconds(wait + 30)) {
                    switch try await $0.leaseJob(path: .init(id: worker), body: .json(.init(waitSeconds: wait, readyVersion: ready))) {
                    case .ok(let leased): return .job(try leased.body.json)
                    case .accepted(let assigned): return .assignment(try assigned.body.json)
                    case .noContent: return .nothing
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
        let answer: Components.Schemas.LeaseResponse
        switch leased {
        case .job(let job):
            answer = job
        case .assignment(let assignment):
            await prepare(assignment, cache: cache, on: idle, logger: logger)
            return nil
        case .nothing:
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
        let progress = LeaseKeeper(JobProgress(fraction: 0, stage: "preparing"))
        progress.keep(lease, client: client, every: registration.heartbeatSeconds, timeout: options.jobTimeoutSeconds, logger: logger)
        do {
            guard let text = job.version, let versionID = KilnCore.Digest(text) else {
                throw KilnError(.invalidInput, "model '\(job.model)' has no version to run")
            }
            let preparing = ContinuousClock.now
            let version = try await cache.prepare(versionID, keeping: versionsInUse)
            metrics.prepared(model: job.model, seconds: preparing.duration(to: .now).seconds)
            var files: [String: String] = [:]
            for (name, meta) in job.inputFiles.additionalProperties.sorted(by: { $0.key < $1.key }) {
                let path = folder.appending(path: "inputs/\(name)")
                try FileManager.default.createDirectory(at: path.deletingLastPathComponent(), withIntermediateDirectories: true)
                let digest = try await client.transfer {
                    try await $0.downloadJobInput(
                        path: .init(id: lease.worker, job: lease.job.rawValue, name: name), query: .init(token: lease.token)
                    ).ok.body.any.write(to: path)
                }
                guard digest == meta.sha256 else { throw KilnError(.invalidInput, "input '\(name)' arrived with another digest") }
                files[name] = path.path
            }
            try FileManager.default.createDirectory(at: folder.appending(path: "outputs"), withIntermediateDirectories: true)
            // The one folder of the worker's a runtime of another user may write.
            try options.runtimeUser?.own(folder.appending(path: "outputs"))
            progress.update(JobProgress(fraction: 0, stage: "ready"))
            return PreparedJob(
                lease: lease, input: [String: JSONValue](job.input.additionalProperties), logger: logger, folder: folder, files: files,
                version: version, progress: progress)
        } catch {
            progress.stop()
            try? FileManager.default.removeItem(at: folder)
            await report(error, lease, logger: logger)
            return nil
        }
    }

    /// Prepares the version placement assigned: pulled into the cache, and set up on `replica` when
    /// one is free, so that its first job starts at once. A version that cannot be prepared is
    /// not reported ready: the server keeps asking, and the worker tries again a little later.
    private func prepare(_ assignment: Components.Schemas.AssignmentObject, cache: VersionCache, on replica: Replica?, logger: Logger)
        async
    {
        do {
            guard let id = KilnCore.Digest(assignment.version) else {
                throw KilnError(.invalidInput, "the assigned version '\(assignment.version)' is not a version id")
            }
            logger.info(
                "placed on \(assignment.model); preparing \(id.short)", metadata: ["reason": "\(assignment.reason)"])
            let preparing = ContinuousClock.now
            let version = try await cache.prepare(id, keeping: versionsInUse)
            metrics.prepared(model: assignment.model, seconds: preparing.duration(to: .now).seconds)
            if let replica, version.manifest.gpus <= devices.total {
                let held = await devices.acquire(version.manifest.gpus, prefer: replica.devices)
                defer { Task { await self.devices.release(held) } }
                try await makeCurrent(version, on: replica, devices: held, logger: logger)
            }
            readyVersion = assignment.version
        } catch {
            logger.error("could not prepare the assigned version: \(error)")
            try? await Task.sleep(for: .seconds(5))
        }
    }

    /// Runs a prepared job on a replica and reports how it ended.
    func run(_ prepared: PreparedJob, on replica: Replica) async {
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
            let held = await devices.acquire(needed, prefer: replica.devices)
            defer { Task { await self.devices.release(held) } }
            try await makeCurrent(prepared.version, on: replica, devices: held, logger: logger)
            guard !progress.isCanceled else {
                logger.info(progress.isLost ? "the lease was lost while preparing" : "canceled while preparing")
                return
            }
            // 2. Run.
            _ = try await client { try await $0.startJob(path: .init(id: lease.worker, job: lease.job.rawValue), body: .json(.init(token: lease.token))).ok }
            progress.update(JobProgress(fraction: 0, stage: "started"))
            progress.attach(replica.runtime)
            replica.runtime?.send(
                .predict(id: lease.job.rawValue, inputs: prepared.input, files: prepared.files, outputDirectory: prepared.outputs.path))
            let running = ContinuousClock.now
            let outcome = await follow(lease.job.rawValue, on: replica, progress: progress)
            progress.attach(nil)
            metrics.ran(
                model: prepared.version.manifest.model, version: prepared.version.id.short, outcome: outcome.name,
                seconds: running.duration(to: .now).seconds)
            // 3. Report.
            switch outcome {
            case .done(let produced):
                var names: [String] = []
                for (name, path) in produced.sorted(by: { $0.key < $1.key }) {
                    _ = try await reporting {
                        try await self.client.transfer(contentType: Self.contentType(of: path)) {
                            try await $0.uploadJobOutput(
                                path: .init(id: lease.worker, job: lease.job.rawValue, name: name), query: .init(token: lease.token),
                                body: .any(try HTTPBody.file(URL(filePath: path)))
                            ).created
                        }
                    }
                    names.append(name)
                }
                let published = names
                _ = try await reporting {
                    try await self.client {
                        try await $0.completeJob(
                            path: .init(id: lease.worker, job: lease.job.rawValue), body: .json(.init(token: lease.token, outputs: published))
                        ).noContent
                    }
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

    enum Outcome {
        case done([String: String])
        case failed(code: String, message: String)
        case crashed(String)
        case canceled

        /// The `outcome` label of the run metrics.
        var name: String {
            switch self {
            case .done: "succeeded"
            case .failed: "failed"
            case .crashed: "crashed"
            case .canceled: "canceled"
            }
        }
    }

    /// Reads runtime events until this job ends.
    private func follow(_ job: String, on replica: Replica, progress: LeaseKeeper) async -> Outcome {
        while var iterator = replica.runtimeEvents, let event = await iterator.next() {
            replica.runtimeEvents = iterator
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
                replica.runtime = nil
                replica.runtimeEvents = nil
                return progress.isCanceled ? .canceled : .crashed("the model runtime exited (status \(status)) during the job")
            default:
                continue
            }
        }
        replica.runtime = nil
        return progress.isCanceled ? .canceled : .crashed("the model runtime stopped answering")
    }

    /// Makes `version`'s runtime on `devices` the replica's current one: started and set up beside the
    /// old, which then stops.
    private func makeCurrent(_ version: PreparedVersion, on replica: Replica, devices: [Int], logger: Logger) async throws {
        if let runtime = replica.runtime, runtime.version == version.id, replica.devices == devices, runtime.isRunning { return }
        var user: (RuntimeProcess.RuntimeUser, home: URL)?
        if let account = options.runtimeUser {
            let home = options.cache.appending(path: "scratch/\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
            try account.own(home)
            user = (account, home)
        }
        let fresh = try RuntimeProcess(
            version: version, python: options.python, runtimePath: options.runtimePath, devices: devices, user: user,
            passing: options.runtimeEnvironment, logger: logger)
        var events = fresh.events.makeAsyncIterator()
        let settingUp = ContinuousClock.now
        fresh.send(.setup)
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
        metrics.setUp(model: version.manifest.model, seconds: settingUp.duration(to: .now).seconds)
        let old = replica.runtime
        replicasLock.withLock {
            replica.runtime = fresh
            replica.runtimeEvents = events
            replica.devices = devices
        }
        if let old {
            if old.version != version.id { metrics.switched(model: version.manifest.model) }
            logger.info("switched version", metadata: ["from": "\(old.version.short)", "to": "\(version.id.short)"])
            await old.stop()
        }
    }

    private func fail(_ lease: JobLease, code: String, message: String, retryable: Bool) async throws {
        _ = try await reporting {
            try await self.client {
                try await $0.failJob(
                    path: .init(id: lease.worker, job: lease.job.rawValue),
                    body: .json(.init(token: lease.token, error: .init(code: code, message: message), retryable: retryable))
                ).noContent
            }
        }
    }

    /// Makes one call of a job's report (an output's upload, its completion, its failure) until a
    /// server takes it: while none can be reached, or the one reached has no leader for the moment
    /// (`503`, a change of leader under way), it is made again every half second, to the next of
    /// several servers first, for up to ``reportPatience``. The lease survives a server's restart
    /// and a change of leader; without this, a job that ended during one would be run again.
    ///
    /// An upload made again replaces the first (same name, same lease); a completion or failure
    /// applied though its answer was lost is refused when made again (the lease has ended), which
    /// the caller takes as the job being no longer its own: each is applied once.
    func reporting<T: Sendable>(_ call: () async throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + Self.reportPatience
        while true {
            do {
                return try await call()
            } catch let error as KilnError where error.code == .unavailable && ContinuousClock.now < deadline && !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    /// How long a job's report is retried while no server takes it.
    static let reportPatience: Duration = .seconds(120)

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
