import Foundation
import KilnAPI
import KilnCore
import KilnModels
import KilnObjects
import KilnSimulation
import KilnStore
import Logging
import NIOCore
import OpenAPIRuntime

/// The admin API (admin key): accounts, keys, models, the queue and the fleet.
extension APIHandler {
    func listAccounts(_ input: Operations.ListAccounts.Input) async throws -> Operations.ListAccounts.Output {
        .ok(.init(body: .json(.init(data: try await services.store.accounts().map(Components.Schemas.AccountObject.init)))))
    }

    func createAccount(_ input: Operations.CreateAccount.Input) async throws -> Operations.CreateAccount.Output {
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let name = body.name.trimmingCharacters(in: .whitespacesAndNewlines)
        guard (1...200).contains(name.count) else {
            throw KilnError(.invalidRequest, "name: must be 1 to 200 characters")
        }
        try checkTier(body.tier)
        let account = Account(id: .random(), name: name, tier: body.tier, createdAt: services.clock.now())
        try await services.store.createAccount(account)
        return .created(.init(body: .json(.init(account))))
    }

    func updateAccount(_ input: Operations.UpdateAccount.Input) async throws -> Operations.UpdateAccount.Output {
        let id = try PathID.parse(input.path.id, as: AccountID.self, "account")
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        try checkTier(body.tier)
        let updated = try await services.store.updateAccountTier(id, tier: body.tier)
        try await services.cache.catchUp()
        return .ok(.init(body: .json(.init(updated))))
    }

    func createAccountKey(_ input: Operations.CreateAccountKey.Input) async throws -> Operations.CreateAccountKey.Output {
        let id = try PathID.parse(input.path.id, as: AccountID.self, "account")
        guard try await services.store.account(id) != nil else { throw KilnError(.notFound, "no account '\(id)'") }
        return .created(.init(body: .json(try await createKey(scope: .user, account: id))))
    }

    // MARK: Webhooks

    func rotateWebhookSecret(_ input: Operations.RotateWebhookSecret.Input) async throws -> Operations.RotateWebhookSecret.Output {
        let id = try PathID.parse(input.path.id, as: AccountID.self, "account")
        guard try await services.store.account(id) != nil else { throw KilnError(.notFound, "no account '\(id)'") }
        var previousValid = 86_400
        if case .json(let body) = input.body, let seconds = body.previousValidSeconds { previousValid = seconds }
        let now = services.clock.now()
        let secret = WebhookSecret.random(for: id, at: now)
        try await services.store.createWebhookSecret(secret, othersValidUntil: now + Double(previousValid))
        return .created(.init(body: .json(.init(secret))))
    }

    func listAccountWebhookSecrets(_ input: Operations.ListAccountWebhookSecrets.Input) async throws
        -> Operations.ListAccountWebhookSecrets.Output
    {
        let id = try PathID.parse(input.path.id, as: AccountID.self, "account")
        guard try await services.store.account(id) != nil else { throw KilnError(.notFound, "no account '\(id)'") }
        let secrets = try await services.store.webhookSecrets(of: id, at: services.clock.now())
        return .ok(.init(body: .json(.init(data: secrets.map(Components.Schemas.WebhookSecretObject.init)))))
    }

    func deleteWebhookSecret(_ input: Operations.DeleteWebhookSecret.Input) async throws -> Operations.DeleteWebhookSecret.Output {
        let id = try PathID.parse(input.path.id, as: AccountID.self, "account")
        try await services.store.deleteWebhookSecret(input.path.secret, of: id)
        return .noContent(.init())
    }

    func redeliverWebhook(_ input: Operations.RedeliverWebhook.Input) async throws -> Operations.RedeliverWebhook.Output {
        let delivery = try await services.store.redeliver(input.path.id, at: services.clock.now())
        return .ok(.init(body: .json(.init(delivery))))
    }

    func createKey(_ input: Operations.CreateKey.Input) async throws -> Operations.CreateKey.Output {
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let scope = KeyScope(body.scope)
        guard scope != .user else {
            throw KilnError(.invalidInput, "scope: user keys belong to an account; use POST /v1/admin/accounts/{id}/keys")
        }
        return .created(.init(body: .json(try await createKey(scope: scope, account: nil))))
    }

    func revokeKey(_ input: Operations.RevokeKey.Input) async throws -> Operations.RevokeKey.Output {
        let id = try PathID.parse(input.path.id, as: KeyID.self, "key")
        try await services.store.revokeKey(id, at: services.clock.now())
        try await services.cache.catchUp()
        return .noContent(.init())
    }

    func listModelsAsAdmin(_ input: Operations.ListModelsAsAdmin.Input) async throws -> Operations.ListModelsAsAdmin.Output {
        .ok(.init(body: .json(try await modelList())))
    }

    func createModel(_ input: Operations.CreateModel.Input) async throws -> Operations.CreateModel.Output {
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        guard ModelRecord.isValidName(body.name) else {
            throw KilnError(
                .invalidRequest,
                "name: '\(body.name)' must be 1 to 64 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit")
        }
        let schema = body.inputSchema.map(JSONValue.init)
        if let schema { _ = try InputSchema(schema) }
        let model = ModelRecord(name: body.name, description: body.description ?? "", inputSchema: schema, createdAt: services.clock.now())
        try await services.store.createModel(model)
        return .created(.init(body: .json(try .init(model, inputSchema: schema, aliases: []))))
    }

    func getQueue(_ input: Operations.GetQueue.Input) async throws -> Operations.GetQueue.Output {
        let count = input.query.limit ?? 50
        guard (1...1000).contains(count) else {
            throw KilnError(.invalidRequest, "limit: '\(count)' must be a whole number from 1 to 1000")
        }
        return .ok(.init(body: .json(.init(await services.dispatcher.view(limit: count), tiers: services.configuration.tiers))))
    }

    func listGenerationsAsAdmin(_ input: Operations.ListGenerationsAsAdmin.Input) async throws
        -> Operations.ListGenerationsAsAdmin.Output
    {
        let page = try await generationPage(
            of: nil, state: input.query.state.map(GenerationState.init), limit: input.query.limit, cursor: input.query.cursor)
        return .ok(.init(body: .json(page)))
    }

    func forecast(_ input: Operations.Forecast.Input) async throws -> Operations.Forecast.Output {
        guard case .json(let body) = input.body else { throw KilnError(.invalidRequest, "the request needs a JSON body") }
        let hours = body.hours ?? 1
        guard (0...WhatIf.maxAddedGPUs).contains(body.addGpus) else {
            throw KilnError(.invalidRequest, "add_gpus: '\(body.addGpus)' must be a whole number from 0 to \(WhatIf.maxAddedGPUs)")
        }
        guard hours > 0, hours <= 24 else { throw KilnError(.invalidRequest, "hours: '\(hours)' must be above 0 and at most 24") }
        let state = Forecast.liveState(
            await services.dispatcher.forecastDemand(), workers: try await services.store.workers(), configuration: services.configuration)
        if let pool = body.pool, !state.workers.contains(where: { $0.pool == pool }) {
            throw KilnError(.invalidRequest, "pool: no pool named '\(pool)' has active workers")
        }
        let runs = try await WhatIf.compare(
            state, hours: hours, addedGPUs: body.addGpus, pool: body.pool, policy: await services.dispatcher.policy)
        let inputs = Components.Schemas.Forecast.InputsPayload(
            queued: state.queued.count, arrivalsPerHour: state.arrivalsPerHour, arrivalWindowSeconds: state.arrivalSeconds,
            runSeconds: .init(
                additionalProperties: Dictionary(
                    uniqueKeysWithValues: Set(state.queued.map(\.model)).union(state.arrivalsByModel.keys).map {
                        ($0, state.runSeconds[$0] ?? state.defaultRunSeconds)
                    })),
            gpus: state.gpus)
        return .ok(.init(body: .json(.init(hours: hours, inputs: inputs, now: .init(runs.now), added: .init(runs.added)))))
    }

    func getQueueHistory(_ input: Operations.GetQueueHistory.Input) async throws -> Operations.GetQueueHistory.Output {
        let samples = await services.dispatcher.recentHistory.map { sample in
            Components.Schemas.QueueHistory.SamplesPayloadPayload(
                at: sample.at,
                tiers: sample.tiers.map { .init(name: $0.name, queued: $0.queued, oldestShare: $0.oldestShare) })
        }
        return .ok(.init(body: .json(.init(intervalSeconds: Dispatcher.sampleInterval.seconds, samples: samples))))
    }

    func listWorkers(_ input: Operations.ListWorkers.Input) async throws -> Operations.ListWorkers.Output {
        .ok(.init(body: .json(.init(data: try await services.store.workers().map(Components.Schemas.WorkerObject.init)))))
    }

    func drainWorker(_ input: Operations.DrainWorker.Input) async throws -> Operations.DrainWorker.Output {
        let id = try PathID.parse(input.path.id, as: WorkerID.self, "worker")
        let drained = try await services.store.setWorkerState(id, .draining)
        try await services.cache.catchUp()
        return .ok(.init(body: .json(.init(drained))))
    }

    private func checkTier(_ tier: String) throws {
        guard services.configuration.tiers[tier] != nil else {
            throw KilnError(
                .invalidInput, "tier: '\(tier)' is not one of \(services.configuration.tiers.names.joined(separator: ", "))")
        }
    }

    private func createKey(scope: KeyScope, account: AccountID?) async throws -> Components.Schemas.KeyObject {
        let secret = KeySecret.generate(scope: scope)
        let record = APIKeyRecord(
            id: .random(), scope: scope, accountID: account, secretHash: KeySecret.hash(secret), createdAt: services.clock.now())
        try await services.store.createKey(record)
        return .init(record, secret: secret)
    }
}

extension Components.Schemas.ForecastRun {
    init(_ outcome: WhatIf.Outcome) {
        self.init(
            gpus: outcome.gpus, gpuUtilisation: outcome.gpuUtilisation,
            tiers: outcome.tiers.map { tier in
                .init(
                    name: tier.name, maxWaitSeconds: tier.maxWaitSeconds, jobs: tier.jobs, attainment: tier.attainment,
                    waitP95Seconds: tier.waitP95Seconds, waitP95Promise: tier.waitP95Promise, queuedAtEnd: tier.queuedAtEnd)
            })
    }
}
