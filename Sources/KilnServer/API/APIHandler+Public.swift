import Crypto
import Foundation
import HTTPTypes
import KilnAPI
import KilnCore
import KilnModels
import KilnObjects
import KilnStore
import Logging
import NIOCore
import OpenAPIRuntime

/// The public API (user keys): files, generations, models.
extension APIHandler {
    // MARK: Files

    func uploadFile(_ input: Operations.UploadFile.Input) async throws -> Operations.UploadFile.Output {
        let account = try Principal.account()
        guard case .any(let body) = input.body else { throw KilnError(.invalidRequest, "the file's bytes are the request body") }
        let limits = services.configuration.limits
        let quota = limits.maxAccountFileBytes
        // Refused before a byte is read when the length says so; the quota is checked again, in
        // the same transaction as the record, once the bytes are in.
        if case .known(let length) = body.length {
            if length > limits.maxFileBytes {
                throw KilnError(.payloadTooLarge, "the file is \(length) bytes, larger than the limit of \(limits.maxFileBytes) bytes")
            }
            let held = try await services.store.uploadedBytes(of: account)
            if held + length > quota {
                throw KilnError.uploadQuota(held: held, adding: length, quota: quota)
            }
        }
        let id = FileID.random()
        let key = "files/\(id.rawValue)"
        let stored = try await services.objects.put(key, body: body.buffers, maxBytes: limits.maxFileBytes)
        let file = FileRecord(
            id: id, accountID: account, size: stored.size, sha256: stored.sha256,
            contentType: RawMedia.received ?? "application/octet-stream", objectKey: key, createdAt: services.clock.now())
        do {
            try await services.store.createFile(file, quota: quota)
        } catch {
            try? await services.objects.delete(key)
            throw error
        }
        return .created(.init(body: .json(.init(file, retention: services.configuration.fileRetention))))
    }

    func deleteFile(_ input: Operations.DeleteFile.Input) async throws -> Operations.DeleteFile.Output {
        let account = try Principal.account()
        guard let id = FileID(rawValue: input.path.id) else { throw KilnError(.notFound, "no file '\(input.path.id)'") }
        try await services.store.deleteFile(id, of: account)
        return .noContent(.init())
    }

    func downloadFile(_ input: Operations.DownloadFile.Input) async throws -> Operations.DownloadFile.Output {
        let account = try Principal.account()
        let raw = input.path.id
        guard let id = FileID(rawValue: raw), let file = try await services.store.file(id), file.accountID == account else {
            throw KilnError(.notFound, "no file '\(raw)'")
        }
        return .ok(.init(body: .any(try await stream(file))))
    }

    /// A stored file's bytes, answered with its own media type.
    func stream(_ file: FileRecord) async throws -> HTTPBody {
        RawMedia.answer(with: file.contentType)
        return .object(try await services.objects.get(file.objectKey), size: file.size)
    }

    // MARK: Generations

    func createGeneration(_ input: Operations.CreateGeneration.Input) async throws -> Operations.CreateGeneration.Output {
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        var claim: IdempotencyClaim?
        if let key = input.headers.idempotencyKey {
            guard (1...255).contains(key.count) else {
                throw KilnError(.invalidRequest, "the Idempotency-Key header must be 1 to 255 characters")
            }
            claim = IdempotencyClaim(key: key, requestHash: try Self.requestHash(body))
        }
        let submitter = try await submitter()
        let generation = try await prepare(body, for: submitter)
        let submission = try await submit([SubmissionRequest(generation, idempotency: claim)], for: submitter)[0].get()
        let object = try await services.render(submission.generation)
        return submission.created ? .created(.init(body: .json(object))) : .ok(.init(body: .json(object)))
    }

    /// Submits each item as ``createGeneration(_:)`` would, in one store transaction, and answers
    /// each in order.
    func createGenerations(_ input: Operations.CreateGenerations.Input) async throws -> Operations.CreateGenerations.Output {
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let items = body.generations
        guard (1...100).contains(items.count) else {
            throw KilnError(.invalidRequest, "generations: 1 to 100 items in one call, not \(items.count)")
        }
        let key = input.headers.idempotencyKey
        if let key, !(1...250).contains(key.count) {
            throw KilnError(.invalidRequest, "the Idempotency-Key header must be 1 to 250 characters")
        }
        let submitter = try await submitter()
        // Each item is checked on its own; those that pass go to the store together.
        var outcomes = [Result<Submission, KilnError>?](repeating: nil, count: items.count)
        var requests: [SubmissionRequest] = []
        var positions: [Int] = []
        for (index, item) in items.enumerated() {
            do {
                let claim = try key.map { IdempotencyClaim(key: "\($0)/\(index)", requestHash: try Self.requestHash(item)) }
                requests.append(SubmissionRequest(try await prepare(item, for: submitter), idempotency: claim))
                positions.append(index)
            } catch let error as KilnError where Self.itemStatuses.contains(ErrorMiddleware.status(of: error.code).code) {
                outcomes[index] = .failure(error)
            }
        }
        for (position, outcome) in zip(positions, try await submit(requests, for: submitter)) { outcomes[position] = outcome }
        var rendered = try await services.render(outcomes.compactMap { outcome in (try? outcome?.get())?.generation }).makeIterator()
        var results: [Components.Schemas.SubmissionResult] = []
        results.reserveCapacity(items.count)
        for outcome in outcomes {
            switch outcome! {
            case .success(let submission):
                results.append(
                    .init(
                        status: submission.created ? ._201 : ._200,
                        generation: rendered.next()!))
            case .failure(let error):
                let status = Components.Schemas.SubmissionResult.StatusPayload(rawValue: ErrorMiddleware.status(of: error.code).code)!
                results.append(
                    .init(status: status, error: .init(code: error.code.rawValue, message: error.message), retryAfterSeconds: error.retryAfter))
            }
        }
        return .ok(.init(body: .json(.init(results: results))))
    }

    /// The statuses an item of a batch may have failed with; any other error fails the whole call.
    private static let itemStatuses: Set<Int> = [400, 409, 422, 429]

    /// Who submits: the caller's account and its tier.
    private func submitter() async throws -> (account: AccountID, tier: Tier) {
        let account = try Principal.account()
        guard let owner = try await services.cache.account(account) else {
            throw KilnError(.unauthorized, "the key's account no longer exists")
        }
        guard let tier = services.configuration.tiers[owner.tier] else {
            throw KilnError(.internal, "the account's tier '\(owner.tier)' is not configured")
        }
        return (account, tier)
    }

    /// A new generation for `body`, checked (model, callback, version, input and its files) but not
    /// yet stored.
    private func prepare(_ body: Components.Schemas.CreateGenerationRequest, for submitter: (account: AccountID, tier: Tier))
        async throws -> Generation
    {
        guard let model = try await services.cache.model(named: body.model) else {
            throw KilnError(.invalidInput, "model: no model named '\(body.model)'")
        }
        if let callback = body.callbackUrl {
            try CallbackURL.check(callback, allowPrivate: services.configuration.webhooks.allowPrivateURLs)
        }
        let callbackEvents = (body.callbackEvents ?? []).map(\.rawValue)
        if !callbackEvents.isEmpty, body.callbackUrl == nil {
            throw KilnError(.invalidInput, "callback_events: needs a callback_url to send them to")
        }
        let id = GenerationID.random()
        let target = try await resolveVersion(of: model, version: body.version, alias: body.alias, for: id)
        var generationInput = try [String: JSONValue](exactly: body.input.additionalProperties, field: "input")
        var fileFields: Set<String> = []
        if let schemaValue = target.manifest?.inputs ?? model.inputSchema {
            let schema = try InputSchema(schemaValue)
            let violations = schema.validate(generationInput)
            guard violations.isEmpty else { throw KilnError(.invalidInput, InputSchema.message(for: violations)) }
            generationInput = schema.applyingDefaults(to: generationInput)
            fileFields = Set(schema.fileFields)
        }
        var inputFiles: [String: FileID] = [:]
        for (name, value) in generationInput {
            // Declared file fields when the version has a schema; otherwise any string that is a file id.
            guard let text = value.stringValue,
                fileFields.isEmpty ? FileID.isValid(text) : fileFields.contains(name)
            else { continue }
            guard let fileID = FileID(rawValue: text), let file = try await services.store.file(fileID),
                file.accountID == submitter.account
            else {
                throw KilnError(.invalidInput, "input.\(name): no file '\(text)'")
            }
            inputFiles[name] = file.id
        }
        var generation = Generation(
            id: id, accountID: submitter.account, model: body.model, version: target.pinned?.description, alias: target.alias,
            tier: submitter.tier.name, accelerators: target.manifest?.accelerators ?? [], gpus: target.manifest?.gpus ?? 0,
            input: generationInput, inputFiles: inputFiles, maxAttempts: services.configuration.leases.maxAttempts,
            callbackURL: body.callbackUrl, createdAt: services.clock.now())
        generation.callbackEvents = callbackEvents
        return generation
    }

    /// Stores the submissions in one transaction and hands the new ones to the dispatcher: those a
    /// waiting worker can take are leased to it in that same transaction. A refusal by an admission
    /// cap carries when to retry.
    private func submit(_ requests: [SubmissionRequest], for submitter: (account: AccountID, tier: Tier)) async throws
        -> [Result<Submission, KilnError>]
    {
        guard !requests.isEmpty else { return [] }
        let tier = submitter.tier
        var requests = requests
        let handoffs = await services.dispatcher.reserveHandoffs(for: requests.map(\.generation))
        for index in requests.indices { requests[index].handoff = handoffs[index] }
        // Each reservation ends here: its job leased (the dispatcher gives it to the waiter as it
        // applies the submission), or its waiter sent to look again (the submission failed, or was
        // refused or replayed). Releasing a reservation whose job was leased does nothing.
        let reserved = zip(requests, handoffs).compactMap { $1 == nil ? nil : $0.generation.id }
        var results: [Result<Submission, KilnError>]
        do {
            results = try await services.store.submit(
                requests, admission: Admission(maxQueuedPerAccount: tier.maxQueuedPerAccount, maxQueuedInTier: tier.maxQueued))
            // What is committed goes to the dispatcher first: nothing after this may strand it.
            let created = results.compactMap { result in (try? result.get()).flatMap { $0.created ? $0.generation : nil } }
            try await services.transitions.apply(.submitted, created)
            if created.lazy.filter({ $0.lease != nil }).count < reserved.count {
                await services.dispatcher.releaseHandoffs(of: reserved)
            }
        } catch {
            if !reserved.isEmpty { await services.dispatcher.releaseHandoffs(of: reserved) }
            throw error
        }
        if results.contains(where: { if case .failure(let error) = $0 { error.code == .rateLimited } else { false } }) {
            // Only an estimate: without the account's oldest job, the tier's rate alone gives it.
            let oldest = try? await services.store.oldestQueuedGeneration(of: submitter.account)
            let retryAfter = await services.dispatcher.retryAfter(oldestQueued: oldest ?? nil, tier: tier.name)
            for index in results.indices {
                guard case .failure(var error) = results[index], error.code == .rateLimited else { continue }
                services.metrics.refused(tier: tier.name)
                error.retryAfter = retryAfter
                results[index] = .failure(error)
            }
        }
        return results
    }

    /// What makes two submissions "the same request" for `Idempotency-Key`: the hash of the
    /// decoded body in canonical form, so that spacing and key order do not matter.
    static func requestHash(_ body: Components.Schemas.CreateGenerationRequest) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return SHA256.hash(data: try encoder.encode(body)).hexString
    }

    /// What a new generation will run: a pinned version, or an alias (default `production`) resolved
    /// now for validation and again at dispatch. A model with no versions at all runs unversioned.
    private func resolveVersion(of model: ModelRecord, version: String?, alias: String?, for id: GenerationID) async throws
        -> (pinned: KilnCore.Digest?, alias: String?, manifest: ModelManifest?)
    {
        if let raw = version {
            guard alias == nil else { throw KilnError(.invalidRequest, "give either version or alias, not both") }
            guard let digest = KilnCore.Digest(raw) ?? KilnCore.Digest(hex: raw), let record = try await services.cache.version(digest),
                record.model == model.name
            else {
                throw KilnError(.invalidInput, "version: '\(raw)' is not a version of model '\(model.name)'")
            }
            return (digest, nil, try JSONDecoder().decode(ModelManifest.self, from: record.manifest))
        }
        let aliasName = alias ?? "production"
        if let record = try await services.cache.alias(aliasName, of: model.name), let digest = record.resolve(for: id),
            let resolved = try await services.cache.version(digest)
        {
            return (nil, aliasName, try JSONDecoder().decode(ModelManifest.self, from: resolved.manifest))
        }
        let hasVersions = try await services.cache.hasVersions(model.name)
        if alias != nil || hasVersions {
            throw KilnError(
                .invalidInput, "alias: model '\(model.name)' has no alias '\(aliasName)'; promote a version to it first")
        }
        return (nil, nil, nil)
    }

    func listGenerations(_ input: Operations.ListGenerations.Input) async throws -> Operations.ListGenerations.Output {
        let page = try await generationPage(
            of: try Principal.account(), state: input.query.state.map(GenerationState.init), limit: input.query.limit,
            cursor: input.query.cursor)
        return .ok(.init(body: .json(page)))
    }

    /// A page of an account's generations (every account's when nil), newest first.
    func generationPage(of account: AccountID?, state: GenerationState?, limit: Int?, cursor: String?) async throws
        -> Components.Schemas.GenerationList
    {
        let limit = limit ?? 20
        guard (1...100).contains(limit) else {
            throw KilnError(.invalidRequest, "limit: '\(limit)' must be a whole number from 1 to 100")
        }
        var before: Int64?
        if let raw = cursor {
            guard let parsed = Int64(raw), parsed > 0 else {
                throw KilnError(.invalidRequest, "cursor: '\(raw)' is not a cursor this API returned")
            }
            before = parsed
        }
        let page = try await services.store.generations(of: account, state: state, limit: limit + 1, before: before)
        let shown = page.prefix(limit)
        var rendered: [Components.Schemas.GenerationObject] = []
        for generation in shown { rendered.append(try await services.render(generation)) }
        let next = page.count > limit ? shown.last.map { String($0.sequence) } : nil
        return .init(data: rendered, nextCursor: next)
    }

    func getGeneration(_ input: Operations.GetGeneration.Input) async throws -> Operations.GetGeneration.Output {
        .ok(.init(body: .json(try await services.render(try await ownedGeneration(input.path.id)))))
    }

    func cancelGeneration(_ input: Operations.CancelGeneration.Input) async throws -> Operations.CancelGeneration.Output {
        let generation = try await ownedGeneration(input.path.id)
        let canceled = try await services.store.cancel(generation.id, at: services.clock.now())
        try await services.transitions.apply(.ended, canceled)
        return .ok(.init(body: .json(try await services.render(canceled))))
    }

    func listGenerationDeliveries(_ input: Operations.ListGenerationDeliveries.Input) async throws
        -> Operations.ListGenerationDeliveries.Output
    {
        let generation = try await ownedGeneration(input.path.id)
        let deliveries = try await services.store.deliveries(of: generation.id)
        return .ok(.init(body: .json(.init(data: deliveries.map(Components.Schemas.DeliveryObject.init)))))
    }

    func listWebhookSecrets(_ input: Operations.ListWebhookSecrets.Input) async throws -> Operations.ListWebhookSecrets.Output {
        let account = try Principal.account()
        let now = services.clock.now()
        var secrets = try await services.store.webhookSecrets(of: account, at: now)
        if secrets.isEmpty {
            let secret = WebhookSecret.random(for: account, at: now)
            try await services.store.createWebhookSecret(secret, othersValidUntil: nil)
            secrets = [secret]
        }
        return .ok(.init(body: .json(.init(data: secrets.map(Components.Schemas.WebhookSecretObject.init)))))
    }

    /// The generation `raw` names, if the caller's account owns it (404 otherwise, so that other
    /// accounts' ids are not even confirmed to exist).
    private func ownedGeneration(_ raw: String) async throws -> Generation {
        let account = try Principal.account()
        guard let id = GenerationID(rawValue: raw), let generation = try await services.store.generation(id),
            generation.accountID == account
        else {
            throw KilnError(.notFound, "no generation '\(raw)'")
        }
        return generation
    }

    func streamGenerationEvents(_ input: Operations.StreamGenerationEvents.Input) async throws
        -> Operations.StreamGenerationEvents.Output
    {
        let generation = try await ownedGeneration(input.path.id)
        if let start = input.headers.lastEventID, start < 0 {
            throw KilnError(.invalidRequest, "Last-Event-ID: '\(start)' is not an event sequence")
        }
        let events = EventStream(services: services, generation: generation.id, after: input.headers.lastEventID ?? 0)
        return .ok(.init(body: .textEventStream(HTTPBody(events.lines(), length: .unknown, iterationBehavior: .single))))
    }

    func listModels(_ input: Operations.ListModels.Input) async throws -> Operations.ListModels.Output {
        .ok(.init(body: .json(try await modelList())))
    }

    /// Every model with its aliases and the input schema of the version `production` points at.
    func modelList() async throws -> Components.Schemas.ModelList {
        var models: [Components.Schemas.ModelObject] = []
        for model in try await services.store.models() {
            let aliases = try await services.store.aliases(of: model.name)
            var schema = model.inputSchema
            if let production = aliases.first(where: { $0.name == "production" })?.targets.first,
                let version = try await services.store.version(production.version)
            {
                schema = try JSONDecoder().decode(ModelManifest.self, from: version.manifest).inputs ?? schema
            }
            models.append(try .init(model, inputSchema: schema, aliases: aliases))
        }
        return .init(data: models)
    }
}

/// A generation's events as server-sent events: the stored ones after `after`, then each new one
/// as it is committed, ending after a final state; a comment line keeps an idle stream alive.
struct EventStream: Sendable {
    let services: KilnServices
    let generation: GenerationID
    let after: Int64

    func lines() -> AsyncThrowingStream<ArraySlice<UInt8>, any Error> {
        let (services, generation, start) = (services, generation, after)
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    let encoder = JSONEncoder()
                    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                    encoder.dateEncodingStrategy = .custom { date, encoder in
                        var container = encoder.singleValueContainer()
                        try container.encode(RFC3339.format(date))
                    }
                    var after = start
                    var ended = false
                    while !Task.isCancelled {
                        let events = try await services.store.events(of: generation, after: after, limit: 100)
                        for event in events {
                            let data = String(decoding: try encoder.encode(Components.Schemas.GenerationEventObject(event)), as: UTF8.self)
                            continuation.yield(ArraySlice("id: \(event.sequence)\nevent: \(event.kind.rawValue)\ndata: \(data)\n\n".utf8))
                            after = event.sequence
                            if event.state.isFinal {
                                continuation.finish()
                                return
                            }
                        }
                        if events.isEmpty {
                            // Resumed after its final event: nothing more will come. (Read once more
                            // first, in case the final event was committed after the read above.)
                            if try await services.store.generation(generation)?.state.isFinal != false {
                                if ended {
                                    continuation.finish()
                                    return
                                }
                                ended = true
                                continue
                            }
                            await services.signals.wait(generation, seconds: 15)
                            // The server is shutting down: the client reconnects with its last id.
                            if await services.signals.isClosing { break }
                            continuation.yield(ArraySlice(": keep-alive\n\n".utf8))
                        }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}
