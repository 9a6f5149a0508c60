import Foundation
import Hummingbird
import KilnAPI
import KilnCore
import KilnObjects
import KilnStore
import Logging

/// The worker protocol of DESIGN §3: pull-based, so any process that speaks it can be a worker.
/// Every call about a job carries the lease's fencing token; a stale one gets 409 and changes nothing.
struct WorkerRoutes {
    let services: KilnServices

    func register(on v1: RouterGroup<KilnRequestContext>, authenticator: Authenticator) {
        let workers = v1.group("workers").add(middleware: RequireScope(scope: .worker, authenticator: authenticator))
        let limit = services.configuration.limits.maxJSONBytes
        let leases = services.configuration.leases

        workers.post { request, context in
            guard case .worker(let keyID) = context.principal else { throw KilnError(.forbidden, "this call needs a worker key") }
            let body = try await JSONBody.decode(RegisterWorkerRequest.self, from: request, limit: limit)
            guard !body.cluster.isEmpty, body.cluster.count <= 64 else {
                throw KilnError(.invalidRequest, "cluster: must be 1 to 64 characters")
            }
            guard !body.accelerator.isEmpty, body.accelerator.count <= 64 else {
                throw KilnError(.invalidRequest, "accelerator: must be 1 to 64 characters")
            }
            guard (0...1024).contains(body.gpus) else { throw KilnError(.invalidRequest, "gpus: must be from 0 to 1024") }
            let now = services.clock.now()
            let worker = WorkerRecord(
                id: .random(), cluster: body.cluster, accelerator: body.accelerator, gpus: body.gpus, labels: body.labels ?? [:],
                keyID: keyID, registeredAt: now, lastSeenAt: now)
            try await services.store.registerWorker(worker)
            services.logger.info("worker registered", metadata: ["worker": "\(worker.id)", "cluster": "\(worker.cluster)"])
            return try JSONBody.response(
                RegisterWorkerResponse(
                    id: worker.id, leaseTTLSeconds: leases.ttlSeconds, heartbeatSeconds: leases.effectiveHeartbeatSeconds),
                status: .created)
        }

        workers.post(":worker/lease") { request, context in
            let worker = try await registeredWorker(context)
            let body = try await JSONBody.decode(LeaseRequest.self, from: request, limit: limit)
            let wait = body.waitSeconds ?? 0
            let maxWait = services.configuration.limits.maxLeaseWaitSeconds
            guard wait >= 0, wait <= maxWait else {
                throw KilnError(.invalidRequest, "wait_seconds: must be from 0 to \(Int(maxWait))")
            }
            try await services.store.touchWorker(worker.id, at: services.clock.now())
            guard worker.state == .active else {
                // A draining worker gets nothing, after the wait it asked for, so it does not spin.
                try? await Task.sleep(for: .milliseconds(Int(wait * 1000)))
                return Response(status: .noContent)
            }
            guard let generation = try await services.dispatcher.lease(for: worker, wait: wait), let lease = generation.lease
            else {
                return Response(status: .noContent)
            }
            await services.signals.signal(generation.id)
            var inputFiles: [String: InputFileObject] = [:]
            for (name, id) in generation.inputFiles {
                if let file = try await services.store.file(id) {
                    inputFiles[name] = InputFileObject(size: file.size, sha256: file.sha256, contentType: file.contentType)
                }
            }
            let maxWaitOfTier = services.configuration.tiers[generation.tier]?.maxWait ?? 0
            let job = LeasedJob(
                id: generation.id, model: generation.model, version: generation.version, input: generation.input,
                inputFiles: inputFiles, attempt: generation.attempts, deadline: generation.queuedAt + maxWaitOfTier)
            return try JSONBody.response(
                LeaseResponse(job: job, lease: LeaseObject(token: lease.token.description, expiresAt: lease.expiresAt)))
        }

        workers.get(":worker/jobs/:job/inputs/:name") { request, context in
            let (worker, job) = try await ids(context)
            let token = try queryToken(request)
            let generation = try await services.store.generation(job)
            guard let generation, let lease = generation.lease, generation.state == .running else {
                throw KilnError(.staleLease, "generation '\(job)' is not running under a lease")
            }
            guard lease.workerID == worker, lease.token == token else {
                throw KilnError(.staleLease, "the lease token \(token) of worker \(worker) no longer holds generation '\(job)'")
            }
            let name = try context.parameters.require("name")
            guard let id = generation.inputFiles[name], let file = try await services.store.file(id) else {
                throw KilnError(.notFound, "generation '\(job)' has no input file '\(name)'")
            }
            return try await PublicRoutes.stream(file, from: services)
        }

        workers.get(":worker/blobs/:digest") { _, context in
            _ = try await registeredWorker(context)
            let digest = try ModelRoutes.digest(try context.parameters.require("digest"))
            let key = ModelRoutes.blobKey(digest)
            guard let size = try await services.objects.size(of: key) else { throw KilnError(.notFound, "no blob \(digest)") }
            return Response(
                status: .ok, headers: [.contentType: "application/octet-stream", .contentLength: String(size)],
                body: ResponseBody(asyncSequence: try await services.objects.get(key)))
        }

        workers.get(":worker/versions/:version") { _, context in
            _ = try await registeredWorker(context)
            let id = try ModelRoutes.digest(try context.parameters.require("version"))
            guard let version = try await services.store.version(id) else { throw KilnError(.notFound, "no version \(id)") }
            return try JSONBody.response(try ModelRoutes.render(version))
        }

        workers.put(":worker/jobs/:job/outputs/:name") { request, context in
            let (worker, job) = try await ids(context)
            let token = try queryToken(request)
            let name = try context.parameters.require("name")
            guard Self.isValidOutputName(name) else {
                throw KilnError(.invalidRequest, "output name '\(name)' must be 1 to 64 letters, digits, '-', '_' or '.'")
            }
            guard let generation = try await services.store.generation(job) else {
                throw KilnError(.notFound, "no generation '\(job)'")
            }
            let fileID = FileID.random()
            let key = "files/\(fileID.rawValue)"
            let stored = try await services.objects.put(key, body: request.body, maxBytes: services.configuration.limits.maxFileBytes)
            let file = FileRecord(
                id: fileID, accountID: generation.accountID, size: stored.size, sha256: stored.sha256,
                contentType: request.headers[.contentType] ?? "application/octet-stream", objectKey: key,
                createdAt: services.clock.now())
            do {
                try await services.store.attachOutput(job, worker: worker, token: token, name: name, file: file)
            } catch {
                try? await services.objects.delete(key)
                throw error
            }
            return try JSONBody.response(KilnServices.render(file), status: .created)
        }

        workers.post(":worker/jobs/:job/start") { request, context in
            let (worker, job) = try await ids(context)
            let body = try await JSONBody.decode(TokenRequest.self, from: request, limit: limit)
            let generation = try await services.store.start(
                job, worker: worker, token: try token(body.token), at: services.clock.now(), ttl: leases.ttlSeconds)
            await services.dispatcher.started(generation)
            await services.signals.signal(job)
            return try JSONBody.response(HeartbeatResponse(cancel: false, leaseExpiresAt: generation.lease?.expiresAt ?? services.clock.now()))
        }

        workers.post(":worker/jobs/:job/heartbeat") { request, context in
            let (worker, job) = try await ids(context)
            let body = try await JSONBody.decode(HeartbeatRequest.self, from: request, limit: limit)
            var progress: JobProgress?
            if let value = body.progress {
                guard (0...1).contains(value.fraction) else {
                    throw KilnError(.invalidRequest, "progress.fraction: must be from 0 to 1")
                }
                progress = JobProgress(fraction: value.fraction, stage: String(value.stage.prefix(200)))
            }
            let generation = try await services.store.heartbeat(
                job, worker: worker, token: try token(body.token), progress: progress, at: services.clock.now(),
                ttl: leases.ttlSeconds)
            if progress != nil { await services.signals.signal(job) }
            return try JSONBody.response(
                HeartbeatResponse(
                    cancel: generation.state == .canceled, leaseExpiresAt: generation.lease?.expiresAt ?? services.clock.now()))
        }

        workers.post(":worker/jobs/:job/complete") { request, context in
            let (worker, job) = try await ids(context)
            let body = try await JSONBody.decode(CompleteRequest.self, from: request, limit: limit)
            let generation = try await services.store.complete(
                job, worker: worker, token: try token(body.token), outputs: body.outputs, at: services.clock.now())
            await services.dispatcher.ended(generation)
            await services.signals.signal(job)
            return Response(status: .noContent)
        }

        workers.post(":worker/jobs/:job/fail") { request, context in
            let (worker, job) = try await ids(context)
            let body = try await JSONBody.decode(FailRequest.self, from: request, limit: limit)
            let failure = JobFailure(code: String(body.error.code.prefix(64)), message: String(body.error.message.prefix(4000)))
            let generation = try await services.store.fail(
                job, worker: worker, token: try token(body.token), error: failure, retryable: body.retryable,
                at: services.clock.now())
            if generation.state == .queued {
                await services.dispatcher.requeued(generation)
            } else {
                await services.dispatcher.ended(generation)
            }
            await services.signals.signal(job)
            return Response(status: .noContent)
        }
    }

    /// The worker named in the path, if the caller's key is the one that registered it: a worker
    /// key can act only as its own workers.
    private func registeredWorker(_ context: KilnRequestContext) async throws -> WorkerRecord {
        let raw = try context.parameters.require("worker")
        guard let id = WorkerID(rawValue: raw), let worker = try await services.store.worker(id),
            case .worker(let keyID) = context.principal, worker.keyID == keyID
        else {
            throw KilnError(.notFound, "no worker '\(raw)' registered with this key; register with POST /v1/workers")
        }
        return worker
    }

    private func ids(_ context: KilnRequestContext) async throws -> (WorkerID, GenerationID) {
        let worker = try await registeredWorker(context)
        let rawJob = try context.parameters.require("job")
        guard let job = GenerationID(rawValue: rawJob) else { throw KilnError(.notFound, "no generation '\(rawJob)'") }
        return (worker.id, job)
    }

    private func token(_ raw: String) throws -> FencingToken {
        guard let token = FencingToken(raw) else {
            throw KilnError(.invalidRequest, "token: '\(raw)' is not a lease token")
        }
        return token
    }

    private func queryToken(_ request: Request) throws -> FencingToken {
        guard let raw = request.uri.queryParameters["token"] else {
            throw KilnError(.invalidRequest, "missing query parameter 'token' (the lease's fencing token)")
        }
        return try token(String(raw))
    }

    static func isValidOutputName(_ name: String) -> Bool {
        (1...64).contains(name.count)
            && name.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0) }
            && name != "." && name != ".."
    }
}
