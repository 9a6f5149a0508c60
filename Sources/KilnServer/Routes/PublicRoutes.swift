import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import KilnAPI
import KilnCore
import KilnModels
import KilnObjects
import KilnStore
import Logging

/// The public API of DESIGN §3, for user keys: files, generations, models.
struct PublicRoutes {
    let services: KilnServices

    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let lastEventID = HTTPField.Name("Last-Event-ID")!

    func register(on v1: RouterGroup<KilnRequestContext>, authenticator: Authenticator) {
        let files = v1.group("files").add(middleware: RequireScope(scope: .user, authenticator: authenticator))
        files.post { request, context in try await uploadFile(request, context) }
        files.get(":id") { request, context in try await downloadFile(request, context) }

        let generations = v1.group("generations").add(middleware: RequireScope(scope: .user, authenticator: authenticator))
        generations.post { request, context in try await createGeneration(request, context) }
        generations.get { request, context in try await listGenerations(request, context) }
        generations.get(":id") { request, context in
            try JSONBody.response(await services.render(try await ownedGeneration(context)))
        }
        generations.post(":id/cancel") { request, context in try await cancel(request, context) }
        generations.get(":id/events") { request, context in try await events(request, context) }

        v1.group("models").add(middleware: RequireScope(scope: .user, authenticator: authenticator)).get { _, _ in
            try JSONBody.response(try await Self.modelList(services))
        }
    }

    static func render(_ model: ModelRecord) -> ModelObject {
        ModelObject(name: model.name, description: model.description, inputSchema: model.inputSchema, createdAt: model.createdAt)
    }

    /// Every model with its aliases and the input schema of the version `production` points at.
    static func modelList(_ services: KilnServices) async throws -> ModelList {
        var models: [ModelObject] = []
        for model in try await services.store.models() {
            let aliases = try await services.store.aliases(of: model.name)
            var schema = model.inputSchema
            if let production = aliases.first(where: { $0.name == "production" })?.targets.first,
                let version = try await services.store.version(production.version)
            {
                schema = try JSONDecoder().decode(ModelManifest.self, from: version.manifest).inputs ?? schema
            }
            models.append(
                ModelObject(
                    name: model.name, description: model.description, inputSchema: schema, aliases: aliases.map(ModelRoutes.render),
                    createdAt: model.createdAt))
        }
        return ModelList(data: models)
    }

    // MARK: Files

    private func uploadFile(_ request: Request, _ context: KilnRequestContext) async throws -> Response {
        let account = try context.account()
        let limit = services.configuration.limits.maxFileBytes
        if let length = request.headers[.contentLength].flatMap({ Int64($0) }), length > limit {
            throw KilnError(.payloadTooLarge, "the file is \(length) bytes, larger than the limit of \(limit) bytes")
        }
        let id = FileID.random()
        let key = "files/\(id.rawValue)"
        let stored = try await services.objects.put(key, body: request.body, maxBytes: limit)
        let file = FileRecord(
            id: id, accountID: account, size: stored.size, sha256: stored.sha256,
            contentType: request.headers[.contentType] ?? "application/octet-stream", objectKey: key, createdAt: services.clock.now())
        do {
            try await services.store.createFile(file)
        } catch {
            try? await services.objects.delete(key)
            throw error
        }
        return try JSONBody.response(KilnServices.render(file), status: .created)
    }

    private func downloadFile(_ request: Request, _ context: KilnRequestContext) async throws -> Response {
        let account = try context.account()
        let raw = try context.parameters.require("id")
        guard let id = FileID(rawValue: raw), let file = try await services.store.file(id), file.accountID == account else {
            throw KilnError(.notFound, "no file '\(raw)'")
        }
        return try await Self.stream(file, from: services)
    }

    static func stream(_ file: FileRecord, from services: KilnServices) async throws -> Response {
        let body = try await services.objects.get(file.objectKey)
        return Response(
            status: .ok, headers: [.contentType: file.contentType, .contentLength: String(file.size)],
            body: ResponseBody(asyncSequence: body))
    }

    // MARK: Generations

    private func createGeneration(_ request: Request, _ context: KilnRequestContext) async throws -> Response {
        let account = try context.account()
        let data = try await JSONBody.collect(request, limit: services.configuration.limits.maxJSONBytes)
        let body = try JSONBody.decode(CreateGenerationRequest.self, from: data)

        var claim: IdempotencyClaim?
        if let key = request.headers[Self.idempotencyKey] {
            guard (1...255).contains(key.count) else {
                throw KilnError(.invalidRequest, "the Idempotency-Key header must be 1 to 255 characters")
            }
            claim = IdempotencyClaim(key: key, requestHash: SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined())
        }
        guard let owner = try await services.store.account(account) else {
            throw KilnError(.unauthorized, "the key's account no longer exists")
        }
        guard let tier = services.configuration.tiers[owner.tier] else {
            throw KilnError(.internal, "the account's tier '\(owner.tier)' is not configured")
        }
        guard let model = try await services.store.model(named: body.model) else {
            throw KilnError(.invalidInput, "model: no model named '\(body.model)'")
        }
        if let callback = body.callbackURL {
            guard let url = URL(string: callback), ["http", "https"].contains(url.scheme?.lowercased() ?? ""), url.host != nil else {
                throw KilnError(.invalidInput, "callback_url: '\(callback)' is not an http(s) URL")
            }
        }
        let id = GenerationID.random()
        let target = try await resolveVersion(of: model, requested: body, for: id)
        var input = body.input
        var fileFields: Set<String> = []
        if let schemaValue = target.manifest?.inputs ?? model.inputSchema {
            let schema = try InputSchema(schemaValue)
            let violations = schema.validate(input)
            guard violations.isEmpty else { throw KilnError(.invalidInput, InputSchema.message(for: violations)) }
            input = schema.applyingDefaults(to: input)
            fileFields = Set(schema.fileFields)
        }
        var inputFiles: [String: FileID] = [:]
        for (name, value) in input {
            // Declared file fields when the version has a schema; otherwise any string that is a file id.
            guard let text = value.stringValue,
                fileFields.isEmpty ? FileID.isValid(text) : fileFields.contains(name)
            else { continue }
            guard let fileID = FileID(rawValue: text), let file = try await services.store.file(fileID), file.accountID == account else {
                throw KilnError(.invalidInput, "input.\(name): no file '\(text)'")
            }
            inputFiles[name] = file.id
        }
        let now = services.clock.now()
        let generation = Generation(
            id: id, accountID: account, model: body.model, version: target.pinned?.description, alias: target.alias,
            tier: tier.name, accelerators: target.manifest?.accelerators ?? [], gpus: target.manifest?.gpus ?? 0, input: input,
            inputFiles: inputFiles, maxAttempts: services.configuration.leases.maxAttempts, callbackURL: body.callbackURL,
            createdAt: now)
        let submission: Submission
        do {
            submission = try await services.store.submit(
                generation,
                admission: Admission(maxQueuedPerAccount: tier.maxQueuedPerAccount, maxQueuedInTier: tier.maxQueued),
                idempotency: claim)
        } catch var error as KilnError where error.code == .rateLimited {
            let oldest = try await services.store.oldestQueuedGeneration(of: account)
            error.retryAfter = await services.dispatcher.retryAfter(oldestQueued: oldest, tier: tier.name)
            throw error
        }
        if submission.created {
            try await services.dispatcher.submitted(submission.generation)
        }
        return try JSONBody.response(
            await services.render(submission.generation), status: submission.created ? .created : .ok)
    }

    /// What a new generation will run: a pinned version, or an alias (default `production`) resolved
    /// now for validation and again at dispatch. A model with no versions at all runs unversioned.
    private func resolveVersion(of model: ModelRecord, requested: CreateGenerationRequest, for id: GenerationID) async throws
        -> (pinned: KilnCore.Digest?, alias: String?, manifest: ModelManifest?)
    {
        if let raw = requested.version {
            guard requested.alias == nil else { throw KilnError(.invalidRequest, "give either version or alias, not both") }
            guard let digest = KilnCore.Digest(raw) ?? KilnCore.Digest(hex: raw), let version = try await services.store.version(digest),
                version.model == model.name
            else {
                throw KilnError(.invalidInput, "version: '\(raw)' is not a version of model '\(model.name)'")
            }
            return (digest, nil, try JSONDecoder().decode(ModelManifest.self, from: version.manifest))
        }
        let aliasName = requested.alias ?? "production"
        if let alias = try await services.store.alias(aliasName, of: model.name), let digest = alias.resolve(for: id),
            let version = try await services.store.version(digest)
        {
            return (nil, aliasName, try JSONDecoder().decode(ModelManifest.self, from: version.manifest))
        }
        let hasVersions = !(try await services.store.versions(of: model.name)).isEmpty
        if requested.alias != nil || hasVersions {
            throw KilnError(
                .invalidInput, "alias: model '\(model.name)' has no alias '\(aliasName)'; promote a version to it first")
        }
        return (nil, nil, nil)
    }

    private func listGenerations(_ request: Request, _ context: KilnRequestContext) async throws -> Response {
        let account = try context.account()
        let query = request.uri.queryParameters
        var state: GenerationState?
        if let raw = query["state"] {
            guard let parsed = GenerationState(rawValue: String(raw)) else {
                throw KilnError(
                    .invalidRequest,
                    "state: '\(raw)' is not one of \(GenerationState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            state = parsed
        }
        var limit = 20
        if let raw = query["limit"] {
            guard let parsed = Int(raw), (1...100).contains(parsed) else {
                throw KilnError(.invalidRequest, "limit: '\(raw)' must be a whole number from 1 to 100")
            }
            limit = parsed
        }
        var before: Int64?
        if let raw = query["cursor"] {
            guard let parsed = Int64(raw), parsed > 0 else {
                throw KilnError(.invalidRequest, "cursor: '\(raw)' is not a cursor this API returned")
            }
            before = parsed
        }
        let page = try await services.store.generations(of: account, state: state, limit: limit + 1, before: before)
        let shown = page.prefix(limit)
        var rendered: [GenerationObject] = []
        for generation in shown { rendered.append(await services.render(generation)) }
        let next = page.count > limit ? shown.last.map { String($0.sequence) } : nil
        return try JSONBody.response(GenerationList(data: rendered, nextCursor: next))
    }

    /// The generation named in the path, if the caller's account owns it (404 otherwise, so that
    /// other accounts' ids are not even confirmed to exist).
    private func ownedGeneration(_ context: KilnRequestContext) async throws -> Generation {
        let account = try context.account()
        let raw = try context.parameters.require("id")
        guard let id = GenerationID(rawValue: raw), let generation = try await services.store.generation(id),
            generation.accountID == account
        else {
            throw KilnError(.notFound, "no generation '\(raw)'")
        }
        return generation
    }

    private func cancel(_ request: Request, _ context: KilnRequestContext) async throws -> Response {
        let generation = try await ownedGeneration(context)
        let canceled = try await services.store.cancel(generation.id, at: services.clock.now())
        await services.dispatcher.ended(canceled)
        await services.signals.signal(canceled.id)
        return try JSONBody.response(await services.render(canceled))
    }

    private func events(_ request: Request, _ context: KilnRequestContext) async throws -> Response {
        let generation = try await ownedGeneration(context)
        let start = request.headers[Self.lastEventID].flatMap { Int64($0) } ?? 0
        let services = self.services
        let body = ResponseBody { writer in
            var after = start
            let encoder = WireFormat.encoder()
            while !Task.isCancelled {
                let events = try await services.store.events(of: generation.id, after: after, limit: 100)
                for event in events {
                    let object = GenerationEventObject(
                        sequence: event.sequence, kind: event.kind.rawValue, state: event.state,
                        progress: ProgressObject(fraction: event.progress.fraction, stage: event.progress.stage),
                        message: event.message, at: event.at)
                    let json = String(decoding: try encoder.encode(object), as: UTF8.self)
                    try await writer.write(ByteBuffer(string: "id: \(event.sequence)\nevent: \(event.kind.rawValue)\ndata: \(json)\n\n"))
                    after = event.sequence
                    if event.state.isFinal {
                        try await writer.finish(nil)
                        return
                    }
                }
                if events.isEmpty {
                    await services.signals.wait(generation.id, seconds: 15)
                    try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                }
            }
            try await writer.finish(nil)
        }
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }
}
