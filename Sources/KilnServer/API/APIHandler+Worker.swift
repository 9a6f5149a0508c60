import Foundation
import KilnAPI
import KilnCore
import KilnFleet
import KilnModels
import KilnObjects
import KilnStore
import Logging
import NIOCore
import OpenAPIRuntime

/// The worker protocol (worker keys): pull-based, so any process that speaks it can be a worker.
/// Every call about a job carries the lease's fencing token; a stale one gets 409 and changes
/// nothing.
extension APIHandler {
    func registerWorker(_ input: Operations.RegisterWorker.Input) async throws -> Operations.RegisterWorker.Output {
        let keyID = try Principal.workerKey()
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        guard !body.cluster.isEmpty, body.cluster.count <= 64 else {
            throw KilnError(.invalidRequest, "cluster: must be 1 to 64 characters")
        }
        guard !body.accelerator.isEmpty, body.accelerator.count <= 64 else {
            throw KilnError(.invalidRequest, "accelerator: must be 1 to 64 characters")
        }
        guard (0...1024).contains(body.gpus) else { throw KilnError(.invalidRequest, "gpus: must be from 0 to 1024") }
        let pools = services.configuration.pools
        if let pool = body.pool {
            guard let configured = pools.first(where: { $0.spec.name == pool }) else {
                let names = pools.map(\.spec.name)
                throw KilnError(
                    .invalidRequest,
                    "pool: '\(pool)' is not a pool of this server"
                        + (names.isEmpty ? " (it has none)" : " (\(names.joined(separator: ", ")))"))
            }
            guard configured.spec.cluster == body.cluster else {
                throw KilnError(
                    .invalidRequest, "pool: '\(pool)' belongs to cluster '\(configured.spec.cluster)', not '\(body.cluster)'")
            }
        }
        let now = services.clock.now()
        let worker = WorkerRecord(
            id: .random(), cluster: body.cluster, accelerator: body.accelerator, gpus: body.gpus,
            labels: body.labels?.additionalProperties ?? [:], pool: body.pool, keyID: keyID, registeredAt: now, lastSeenAt: now)
        try await services.store.registerWorker(worker)
        services.logger.info("worker registered", metadata: ["worker": "\(worker.id)", "cluster": "\(worker.cluster)"])
        let leases = services.configuration.leases
        return .created(
            .init(
                body: .json(
                    .init(
                        id: worker.id.rawValue, leaseTtlSeconds: leases.ttlSeconds, heartbeatSeconds: leases.effectiveHeartbeatSeconds))
            ))
    }

    func leaseJob(_ input: Operations.LeaseJob.Input) async throws -> Operations.LeaseJob.Output {
        let worker = try await registeredWorker(input.path.id)
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let wait = body.waitSeconds ?? 0
        let maxWait = services.configuration.limits.maxLeaseWaitSeconds
        guard wait >= 0, wait <= maxWait else {
            throw KilnError(.invalidRequest, "wait_seconds: must be from 0 to \(Int(maxWait))")
        }
        try await touch(worker)
        guard worker.state == .active else {
            // A draining worker gets nothing, after the wait it asked for, so it does not spin.
            try? await Task.sleep(for: .milliseconds(Int(wait * 1000)))
            return .noContent(.init())
        }
        // A placed worker prepares its version before it takes that model's jobs, then only those.
        let model: String?
        switch await services.fleet.placement(for: worker.id, readyVersion: body.readyVersion) {
        case .prepare(let assignment):
            return .accepted(
                .init(body: .json(.init(model: assignment.model, version: assignment.version ?? "", reason: assignment.reason))))
        case .serve(let serving):
            model = serving
        }
        guard let generation = try await services.dispatcher.lease(for: worker, wait: wait, model: model),
            let lease = generation.lease
        else {
            return .noContent(.init())
        }
        try await services.transitions.apply(.leased, generation)
        return .ok(.init(body: .json(try await leaseResponse(generation, lease))))
    }

    /// Settles the reported jobs, each on its own, then leases (and starts) up to `lease.max`.
    func exchangeJobs(_ input: Operations.ExchangeJobs.Input) async throws -> Operations.ExchangeJobs.Output {
        let worker = try await registeredWorker(input.path.id)
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let (completed, failed) = (body.completed ?? [], body.failed ?? [])
        guard completed.count + failed.count <= 64 else {
            throw KilnError(.invalidRequest, "completed, failed: at most 64 reports in one call, not \(completed.count + failed.count)")
        }
        let maxWait = services.configuration.limits.maxLeaseWaitSeconds
        if let lease = body.lease {
            guard (0...64).contains(lease.max) else { throw KilnError(.invalidRequest, "lease.max: must be from 0 to 64") }
            guard (0...maxWait).contains(lease.waitSeconds ?? 0) else {
                throw KilnError(.invalidRequest, "lease.wait_seconds: must be from 0 to \(Int(maxWait))")
            }
        }
        // Every report names a generation: a malformed id refuses the whole call, before any
        // report is applied.
        func id(_ raw: String, _ field: String) throws -> GenerationID {
            guard let id = GenerationID(rawValue: raw) else {
                throw KilnError(.invalidRequest, "\(field).job: '\(raw)' is not a generation id")
            }
            return id
        }
        let completedIDs = try completed.enumerated().map { try id($1.job, "completed[\($0)]") }
        let failedIDs = try failed.enumerated().map { try id($1.job, "failed[\($0)]") }
        var reports: [Components.Schemas.ReportOutcome] = []
        // The completions in one store transaction, then to the dispatcher together.
        var completions: [CompletionReport] = []
        var positions: [Int] = []
        for (report, job) in zip(completed, completedIDs) {
            do {
                completions.append(CompletionReport(job, token: try token(report.token), outputs: report.outputs))
                positions.append(reports.count)
                reports.append(.init(job: job.rawValue))
            } catch let error as KilnError {
                reports.append(.init(job: job.rawValue, error: .init(code: error.code.description, message: error.message)))
            }
        }
        // What the worker may take: nothing unless it asked and is active.
        var lease = body.lease.flatMap { $0.max > 0 ? $0 : nil }
        if lease != nil {
            try await touch(worker)
            if worker.state != .active { lease = nil }
        }
        let model = lease == nil ? nil : await services.fleet.assignment(for: worker.id)?.model
        var generations: [Generation] = []
        if !completions.isEmpty {
            // The completions and the jobs it may take now, in one commit; with failures to report
            // too, those settle between the two (a retryable one may be leased again at once).
            let results: [Result<Generation, KilnError>]
            if let lease, failed.isEmpty {
                (results, generations) = try await services.dispatcher.exchange(
                    completing: completions, for: worker, max: lease.max, start: lease.start ?? false, model: model)
            } else {
                results = try await services.store.complete(completions, worker: worker.id, at: services.clock.now())
            }
            var ended: [Generation] = []
            for (position, result) in zip(positions, results) {
                switch result {
                case .success(let generation): ended.append(generation)
                case .failure(let error):
                    reports[position].error = .init(code: error.code.description, message: error.message)
                }
            }
            try await services.transitions.apply(.ended, ended)
        }
        for (report, job) in zip(failed, failedIDs) {
            reports.append(
                await outcome(of: job) {
                    try await self.fail(job, worker: worker.id, token: try self.token(report.token), report.error, retryable: report.retryable)
                })
        }
        if let lease, generations.isEmpty {
            generations = try await services.dispatcher.lease(
                for: worker, wait: lease.waitSeconds ?? 0, max: lease.max, start: lease.start ?? false, model: model)
        }
        var jobs: [Components.Schemas.LeaseResponse] = []
        for generation in generations {
            guard let held = generation.lease else { continue }
            try await services.transitions.apply(.leased, generation)
            jobs.append(try await leaseResponse(generation, held))
        }
        return .ok(.init(body: .json(.init(reports: reports, jobs: jobs))))
    }

    /// A report's outcome: applied, or the error that left it unapplied.
    private func outcome(of job: GenerationID, _ settle: () async throws -> Void) async -> Components.Schemas.ReportOutcome {
        do {
            try await settle()
            return .init(job: job.rawValue)
        } catch let error as KilnError {
            return .init(job: job.rawValue, error: .init(code: error.code.description, message: error.message))
        } catch {
            return .init(job: job.rawValue, error: .init(code: KilnError.Code.internal.description, message: "\(error)"))
        }
    }

    /// What a worker receives for a lease: the job, its input files' descriptions, the lease.
    private func leaseResponse(_ generation: Generation, _ lease: LeaseInfo) async throws -> Components.Schemas.LeaseResponse {
        var inputFiles: [String: Components.Schemas.InputFileObject] = [:]
        for (name, id) in generation.inputFiles {
            if let file = try await services.store.file(id) {
                inputFiles[name] = .init(size: file.size, sha256: file.sha256, contentType: file.contentType)
            }
        }
        let maxWaitOfTier = services.configuration.tiers[generation.tier]?.maxWait ?? 0
        let job = Components.Schemas.LeasedJob(
            id: generation.id.rawValue, model: generation.model, version: generation.version,
            input: .init(additionalProperties: try .init(generation.input)), inputFiles: .init(additionalProperties: inputFiles),
            attempt: generation.attempts, deadline: generation.queuedAt + maxWaitOfTier)
        return .init(job: job, lease: .init(token: lease.token.description, expiresAt: lease.expiresAt))
    }

    func getWorkerModelVersion(_ input: Operations.GetWorkerModelVersion.Input) async throws -> Operations.GetWorkerModelVersion.Output {
        _ = try await registeredWorker(input.path.id)
        let id = try KilnCore.Digest(wire: input.path.version.text, field: "version")
        guard let version = try await services.store.version(id) else { throw KilnError(.notFound, "no version \(id)") }
        return .ok(.init(body: .json(try .init(version))))
    }

    func downloadBlob(_ input: Operations.DownloadBlob.Input) async throws -> Operations.DownloadBlob.Output {
        _ = try await registeredWorker(input.path.id)
        let digest = try KilnCore.Digest(wire: input.path.digest.text, field: "digest")
        let key = Self.blobKey(digest)
        guard let size = try await services.objects.size(of: key) else { throw KilnError(.notFound, "no blob \(digest)") }
        if let url = try await services.objects.presignedGetURL(for: key, expiresIn: 900) {
            RawMedia.redirect(to: url)  // the generated code would percent-encode it
            return .temporaryRedirect(.init(headers: .init(location: url.absoluteString)))
        }
        return .ok(.init(body: .binary(.object(try await services.objects.get(key), size: size))))
    }

    func downloadJobInput(_ input: Operations.DownloadJobInput.Input) async throws -> Operations.DownloadJobInput.Output {
        let (worker, job) = try await ids(input.path.id, input.path.job)
        let token = try token(input.query.token)
        let generation = try await services.store.generation(job)
        guard let generation, let lease = generation.lease, generation.state == .running else {
            throw KilnError(.staleLease, "generation '\(job)' is not running under a lease")
        }
        guard lease.workerID == worker, lease.token == token else {
            throw KilnError(.staleLease, "the lease token \(token) of worker \(worker) no longer holds generation '\(job)'")
        }
        let name = input.path.name
        guard let id = generation.inputFiles[name], let file = try await services.store.file(id) else {
            throw KilnError(.notFound, "generation '\(job)' has no input file '\(name)'")
        }
        if let url = try await services.objects.presignedGetURL(for: file.objectKey, expiresIn: 900) {
            RawMedia.redirect(to: url)  // the generated code would percent-encode it
            return .temporaryRedirect(.init(headers: .init(location: url.absoluteString)))
        }
        return .ok(.init(body: .any(try await stream(file))))
    }

    func uploadJobOutput(_ input: Operations.UploadJobOutput.Input) async throws -> Operations.UploadJobOutput.Output {
        let (worker, job) = try await ids(input.path.id, input.path.job)
        let token = try token(input.query.token)
        let name = input.path.name
        guard Self.isValidOutputName(name) else {
            throw KilnError(.invalidRequest, "output name '\(name)' must be 1 to 64 letters, digits, '-', '_' or '.'")
        }
        guard case .any(let body) = input.body else { throw KilnError(.invalidRequest, "the output's bytes are the request body") }
        guard let generation = try await services.store.generation(job) else {
            throw KilnError(.notFound, "no generation '\(job)'")
        }
        // The lease before the bytes: a stale or forged upload stores nothing. (Attaching checks it
        // again, in the same transaction as the attachment.)
        try Lifecycle.holding(generation, worker: worker, token: token, allowCanceled: false)
        let fileID = FileID.random()
        let key = "files/\(fileID.rawValue)"
        let stored = try await services.objects.put(key, body: body.buffers, maxBytes: services.configuration.limits.maxFileBytes)
        let file = FileRecord(
            id: fileID, accountID: generation.accountID, size: stored.size, sha256: stored.sha256,
            contentType: RawMedia.received ?? "application/octet-stream", objectKey: key, createdAt: services.clock.now(), kind: .output)
        do {
            try await services.store.attachOutput(job, worker: worker, token: token, name: name, file: file)
        } catch {
            try? await services.objects.delete(key)
            throw error
        }
        return .created(.init(body: .json(.init(file, retention: services.configuration.fileRetention))))
    }

    func startJob(_ input: Operations.StartJob.Input) async throws -> Operations.StartJob.Output {
        let (worker, job) = try await ids(input.path.id, input.path.job)
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let now = services.clock.now()
        let generation = try await services.store.start(
            job, worker: worker, token: try token(body.token), at: now, ttl: services.configuration.leases.ttlSeconds)
        try await services.transitions.apply(.started, generation)
        return .ok(.init(body: .json(.init(cancel: false, leaseExpiresAt: generation.lease?.expiresAt ?? now))))
    }

    func heartbeatJob(_ input: Operations.HeartbeatJob.Input) async throws -> Operations.HeartbeatJob.Output {
        let (worker, job) = try await ids(input.path.id, input.path.job)
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        var progress: JobProgress?
        if let value = body.progress {
            guard (0...1).contains(value.fraction) else {
                throw KilnError(.invalidRequest, "progress.fraction: must be from 0 to 1")
            }
            progress = JobProgress(fraction: value.fraction, stage: String(value.stage.prefix(200)))
        }
        let now = services.clock.now()
        let generation = try await services.store.heartbeat(
            job, worker: worker, token: try token(body.token), progress: progress, at: now,
            ttl: services.configuration.leases.ttlSeconds)
        if progress != nil { try await services.transitions.apply(.progressed, generation) }
        return .ok(.init(body: .json(.init(cancel: generation.state == .canceled, leaseExpiresAt: generation.lease?.expiresAt ?? now))))
    }

    func completeJob(_ input: Operations.CompleteJob.Input) async throws -> Operations.CompleteJob.Output {
        let (worker, job) = try await ids(input.path.id, input.path.job)
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        try await complete(job, worker: worker, token: try token(body.token), outputs: body.outputs)
        return .noContent(.init())
    }

    func failJob(_ input: Operations.FailJob.Input) async throws -> Operations.FailJob.Output {
        let (worker, job) = try await ids(input.path.id, input.path.job)
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        try await fail(job, worker: worker, token: try token(body.token), body.error, retryable: body.retryable)
        return .noContent(.init())
    }

    private func complete(_ job: GenerationID, worker: WorkerID, token: FencingToken, outputs: [String]) async throws {
        let generation = try await services.store.complete(job, worker: worker, token: token, outputs: outputs, at: services.clock.now())
        try await services.transitions.apply(.ended, generation)
    }

    private func fail(
        _ job: GenerationID, worker: WorkerID, token: FencingToken, _ error: Components.Schemas.ErrorDetail, retryable: Bool
    ) async throws {
        let failure = JobFailure(code: String(error.code.prefix(64)), message: String(error.message.prefix(4000)))
        let generation = try await services.store.fail(
            job, worker: worker, token: token, error: failure, retryable: retryable, at: services.clock.now())
        try await services.transitions.apply(.settled(generation), generation)
    }

    /// Records that the worker is alive: at most every `touchInterval`, so that an empty poll writes
    /// nothing.
    private func touch(_ worker: WorkerRecord) async throws {
        let now = services.clock.now()
        if now.timeIntervalSince(worker.lastSeenAt) >= Self.touchInterval {
            try await services.store.touchWorker(worker.id, at: now)
            services.cache.touched(worker.id, at: now)
        }
    }

    /// The worker `raw` names, if the caller's key is the one that registered it: a worker key can
    /// act only as its own workers.
    private func registeredWorker(_ raw: String) async throws -> WorkerRecord {
        guard let id = WorkerID(rawValue: raw), let worker = try await services.cache.worker(id),
            case .worker(let keyID) = Principal.current, worker.keyID == keyID
        else {
            throw KilnError(.notFound, "no worker '\(raw)' registered with this key; register with POST /v1/workers")
        }
        return worker
    }

    private func ids(_ rawWorker: String, _ rawJob: String) async throws -> (WorkerID, GenerationID) {
        let worker = try await registeredWorker(rawWorker)
        return (worker.id, try PathID.parse(rawJob, as: GenerationID.self, "generation"))
    }

    /// A token this server never issued holds no lease: `409 stale_lease`, as for an old one.
    private func token(_ raw: String) throws -> FencingToken {
        guard let token = FencingToken(raw) else {
            throw KilnError(.staleLease, "token: '\(raw)' holds no lease; it is not a token this server issued")
        }
        return token
    }

    /// How stale a worker's `last_seen_at` may be: its polls write it no more often.
    static let touchInterval: TimeInterval = 10

    static func isValidOutputName(_ name: String) -> Bool {
        (1...64).contains(name.count)
            && name.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0) }
            && name != "." && name != ".."
    }
}
