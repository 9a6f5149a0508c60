import Foundation
import Hummingbird
import KilnAPI
import KilnCore
import KilnStore

/// The admin API of DESIGN §3: accounts, keys, models, the queue and the fleet.
struct AdminRoutes {
    let services: KilnServices

    func register(on v1: RouterGroup<KilnRequestContext>, authenticator: Authenticator) {
        let admin = v1.group("admin").add(middleware: RequireScope(scope: .admin, authenticator: authenticator))
        let limit = services.configuration.limits.maxJSONBytes

        admin.post("accounts") { request, _ in
            let body = try await JSONBody.decode(CreateAccountRequest.self, from: request, limit: limit)
            let name = body.name.trimmingCharacters(in: .whitespacesAndNewlines)
            guard (1...200).contains(name.count) else {
                throw KilnError(.invalidRequest, "name: must be 1 to 200 characters")
            }
            try checkTier(body.tier)
            let account = Account(id: .random(), name: name, tier: body.tier, createdAt: services.clock.now())
            try await services.store.createAccount(account)
            return try JSONBody.response(Self.render(account), status: .created)
        }
        admin.get("accounts") { _, _ in
            try JSONBody.response(AccountList(data: try await services.store.accounts().map(Self.render)))
        }
        admin.patch("accounts/:id") { request, context in
            let id = try accountID(context)
            let body = try await JSONBody.decode(UpdateAccountRequest.self, from: request, limit: limit)
            try checkTier(body.tier)
            return try JSONBody.response(Self.render(try await services.store.updateAccountTier(id, tier: body.tier)))
        }
        admin.post("accounts/:id/keys") { _, context in
            let id = try accountID(context)
            guard try await services.store.account(id) != nil else { throw KilnError(.notFound, "no account '\(id)'") }
            return try JSONBody.response(try await createKey(scope: .user, account: id), status: .created)
        }
        admin.post("keys") { request, _ in
            let body = try await JSONBody.decode(CreateKeyRequest.self, from: request, limit: limit)
            guard body.scope != .user else {
                throw KilnError(.invalidInput, "scope: user keys belong to an account; use POST /v1/admin/accounts/{id}/keys")
            }
            return try JSONBody.response(try await createKey(scope: body.scope, account: nil), status: .created)
        }
        admin.delete("keys/:id") { _, context in
            let raw = try context.parameters.require("id")
            guard let id = KeyID(rawValue: raw) else { throw KilnError(.notFound, "no key '\(raw)'") }
            try await services.store.revokeKey(id, at: services.clock.now())
            return Response(status: .noContent)
        }
        admin.post("models") { request, _ in
            let body = try await JSONBody.decode(CreateModelRequest.self, from: request, limit: limit)
            guard ModelRecord.isValidName(body.name) else {
                throw KilnError(
                    .invalidRequest,
                    "name: '\(body.name)' must be 1 to 64 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit")
            }
            if let schema = body.inputSchema { _ = try InputSchema(schema) }
            let model = ModelRecord(
                name: body.name, description: body.description ?? "", inputSchema: body.inputSchema, createdAt: services.clock.now())
            try await services.store.createModel(model)
            return try JSONBody.response(PublicRoutes.render(model), status: .created)
        }
        admin.get("models") { _, _ in
            try JSONBody.response(try await PublicRoutes.modelList(services))
        }
        admin.get("queue") { request, _ in
            var count = 50
            if let raw = request.uri.queryParameters["limit"] {
                guard let parsed = Int(raw), (1...1000).contains(parsed) else {
                    throw KilnError(.invalidRequest, "limit: '\(raw)' must be a whole number from 1 to 1000")
                }
                count = parsed
            }
            return try JSONBody.response(await services.dispatcher.view(limit: count))
        }
        admin.get("workers") { _, _ in
            try JSONBody.response(WorkerList(data: try await services.store.workers().map(Self.render)))
        }
        admin.post("workers/:id/drain") { _, context in
            let raw = try context.parameters.require("id")
            guard let id = WorkerID(rawValue: raw) else { throw KilnError(.notFound, "no worker '\(raw)'") }
            return try JSONBody.response(Self.render(try await services.store.setWorkerState(id, .draining)))
        }
    }

    private func checkTier(_ tier: String) throws {
        guard services.configuration.tiers[tier] != nil else {
            throw KilnError(
                .invalidInput, "tier: '\(tier)' is not one of \(services.configuration.tiers.names.joined(separator: ", "))")
        }
    }

    private func accountID(_ context: KilnRequestContext) throws -> AccountID {
        let raw = try context.parameters.require("id")
        guard let id = AccountID(rawValue: raw) else { throw KilnError(.notFound, "no account '\(raw)'") }
        return id
    }

    private func createKey(scope: KeyScope, account: AccountID?) async throws -> KeyObject {
        let secret = KeySecret.generate(scope: scope)
        let record = APIKeyRecord(
            id: .random(), scope: scope, accountID: account, secretHash: KeySecret.hash(secret), createdAt: services.clock.now())
        try await services.store.createKey(record)
        return KeyObject(id: record.id, key: secret, scope: scope, accountID: account)
    }

    static func render(_ account: Account) -> AccountObject {
        AccountObject(id: account.id, name: account.name, tier: account.tier, createdAt: account.createdAt)
    }

    static func render(_ worker: WorkerRecord) -> WorkerObject {
        WorkerObject(
            id: worker.id, cluster: worker.cluster, accelerator: worker.accelerator, gpus: worker.gpus, labels: worker.labels,
            state: worker.state, registeredAt: worker.registeredAt, lastSeenAt: worker.lastSeenAt)
    }
}
