import Foundation
import KilnCore
import KilnModels
import OpenAPIRuntime

// Domain → wire: the one place where a KilnCore value becomes what the document says. Every
// enumeration is mapped case by case, so renaming a domain case cannot change the wire.

extension Components.Schemas.GenerationState {
    public init(_ state: GenerationState) {
        switch state {
        case .queued: self = .queued
        case .running: self = .running
        case .succeeded: self = .succeeded
        case .failed: self = .failed
        case .canceled: self = .canceled
        }
    }
}

extension Components.Schemas.KeyScope {
    public init(_ scope: KeyScope) {
        switch scope {
        case .user: self = .user
        case .worker: self = .worker
        case .admin: self = .admin
        }
    }
}

extension Components.Schemas.WorkerState {
    public init(_ state: WorkerRecord.State) {
        switch state {
        case .active: self = .active
        case .draining: self = .draining
        case .retired: self = .retired
        }
    }
}

extension Components.Schemas.ProgressObject {
    public init(_ progress: JobProgress) {
        self.init(fraction: progress.fraction, stage: progress.stage)
    }
}

extension Components.Schemas.ErrorDetail {
    public init(_ failure: JobFailure) {
        self.init(code: failure.code, message: failure.message)
    }
}

extension Components.Schemas.FileObject {
    /// - Parameter retention: seconds a file is kept after it was written; nil when kept until deleted.
    public init(_ file: FileRecord, retention: Double?) {
        self.init(
            id: file.id.rawValue, size: file.size, sha256: file.sha256, contentType: file.contentType, createdAt: file.createdAt,
            expiresAt: retention.map { file.createdAt + $0 })
    }
}

extension Components.Schemas.QueueInfo {
    public init(_ place: QueuePlace) {
        self.init(position: place.position, etaSeconds: place.etaSeconds, deadline: place.deadline)
    }
}

extension Components.Schemas.GenerationObject {
    /// - Parameter place: where it stands in the queue, while it is queued.
    public init(_ generation: Generation, place: QueuePlace?) throws {
        self.init(
            id: generation.id.rawValue, model: generation.model, version: generation.version, alias: generation.alias,
            state: .init(generation.state), tier: generation.tier, input: .init(additionalProperties: try .init(generation.input)),
            progress: .init(generation.progress), queue: place.map(Components.Schemas.QueueInfo.init),
            output: .init(
                additionalProperties: generation.output.mapValues {
                    .init(fileId: $0.fileID.rawValue, contentType: $0.contentType, size: $0.size)
                }),
            error: generation.error.map(Components.Schemas.ErrorDetail.init), attempts: generation.attempts,
            createdAt: generation.createdAt, startedAt: generation.startedAt, completedAt: generation.completedAt)
    }
}

extension Components.Schemas.GenerationEventObject {
    public init(_ event: GenerationEvent) {
        self.init(
            sequence: event.sequence, kind: event.kind.rawValue, state: .init(event.state), progress: .init(event.progress),
            message: event.message, at: event.at)
    }
}

extension Components.Schemas.AccountObject {
    public init(_ account: Account) {
        self.init(id: account.id.rawValue, name: account.name, tier: account.tier, createdAt: account.createdAt)
    }
}

extension Components.Schemas.KeyObject {
    /// A new key, with its secret shown this once.
    public init(_ key: APIKeyRecord, secret: String) {
        self.init(id: key.id.rawValue, key: secret, scope: .init(key.scope), accountId: key.accountID?.rawValue)
    }
}

extension Components.Schemas.WorkerObject {
    public init(_ worker: WorkerRecord) {
        self.init(
            id: worker.id.rawValue, cluster: worker.cluster, accelerator: worker.accelerator, gpus: worker.gpus,
            labels: .init(additionalProperties: worker.labels), state: .init(worker.state), pool: worker.pool,
            registeredAt: worker.registeredAt,
            lastSeenAt: worker.lastSeenAt)
    }
}

extension Components.Schemas.AliasTargetObject {
    public init(_ target: AliasTarget) {
        self.init(version: target.version.description, weight: target.weight)
    }
}

extension Components.Schemas.AliasObject {
    public init(_ alias: AliasRecord) {
        self.init(name: alias.name, targets: alias.targets.map(Components.Schemas.AliasTargetObject.init), updatedAt: alias.updatedAt)
    }
}

extension Components.Schemas.AliasChangeObject {
    public init(_ change: AliasChange) {
        let action: ActionPayload =
            switch change.action {
            case .promote: .promote
            case .split: .split
            case .rollback: .rollback
            }
        self.init(action: action, targets: change.targets.map(Components.Schemas.AliasTargetObject.init), at: change.at)
    }
}

extension Components.Schemas.ModelObject {
    /// - Parameters:
    ///   - inputSchema: the schema generations are checked against (the `production` version's, or the model's own).
    public init(_ model: ModelRecord, inputSchema: JSONValue?, aliases: [AliasRecord]) throws {
        self.init(
            name: model.name, description: model.description, inputSchema: try inputSchema.map(OpenAPIValueContainer.init),
            aliases: aliases.map(Components.Schemas.AliasObject.init), createdAt: model.createdAt)
    }
}

extension Components.Schemas.ManifestLayer {
    public init(_ layer: ModelManifest.Layer) {
        let kind: KindPayload =
            switch layer.kind {
            case .code: .code
            case .environment: .environment
            case .weights: .weights
            }
        self.init(kind: kind, digest: layer.digest.description, size: layer.size, platform: layer.platform, path: layer.path)
    }
}

extension Components.Schemas.ModelManifest {
    public init(_ manifest: ModelManifest) throws {
        guard let schema = SchemaPayload(rawValue: manifest.schema) else {
            throw KilnError(.internal, "manifest schema '\(manifest.schema)' has no wire form")
        }
        self.init(
            schema: schema, model: manifest.model, entrypoint: manifest.entrypoint, accelerators: manifest.accelerators,
            gpus: manifest.gpus, inputs: try manifest.inputs.map(OpenAPIValueContainer.init),
            layers: manifest.layers.map(Components.Schemas.ManifestLayer.init))
    }
}

extension Components.Schemas.VersionObject {
    /// - Parameter created: only in a push's answer: whether this push created the version.
    public init(_ version: ModelVersionRecord, created: Bool? = nil) throws {
        let manifest = try JSONDecoder().decode(ModelManifest.self, from: version.manifest)
        self.init(
            id: version.id.description, model: version.model, manifest: try .init(manifest), createdAt: version.createdAt,
            created: created)
    }
}

extension Components.Schemas.QueueView {
    public init(_ snapshot: QueueSnapshot, tiers: TierTable) {
        self.init(
            policy: snapshot.policy, tiers: tiers.tiers.map { .init(name: $0.name, maxWaitSeconds: $0.maxWait) },
            queued: snapshot.queued, dispatched: snapshot.dispatched,
            rows: snapshot.rows.map {
                .init(
                    tier: $0.tier, model: $0.model, queued: $0.queued, parked: $0.parked, oldestQueuedAt: $0.oldestQueuedAt,
                    maxUrgency: $0.maxUrgency)
            },
            next: snapshot.next.map {
                .init(id: $0.id.rawValue, tier: $0.tier, model: $0.model, queuedAt: $0.queuedAt, urgency: $0.urgency)
            })
    }
}

// MARK: - Free-form JSON

extension OpenAPIObjectContainer {
    public init(_ object: [String: JSONValue]) throws {
        try self.init(unvalidatedValue: object.mapValues(\.openAPIValue))
    }
}

extension OpenAPIValueContainer {
    public init(_ value: JSONValue) throws {
        try self.init(unvalidatedValue: value.openAPIValue)
    }
}

extension JSONValue {
    /// The value as the OpenAPI runtime's containers hold it: whole numbers as `Int`.
    var openAPIValue: (any Sendable)? {
        switch self {
        case .null: nil
        case .bool(let value): value
        case .number(let value): value.rounded() == value && abs(value) < 1e15 ? Int(value) : value
        case .string(let value): value
        case .array(let values): values.map(\.openAPIValue)
        case .object(let values): values.mapValues(\.openAPIValue)
        }
    }
}

extension Components.Schemas.DeliveryObject {
    public init(_ delivery: WebhookDelivery) {
        self.init(
            id: delivery.id, generationId: delivery.generationID.rawValue, _type: .init(rawValue: delivery.type) ?? .generation_succeeded,
            url: delivery.url, state: .init(rawValue: delivery.state.rawValue) ?? .failed, createdAt: delivery.createdAt,
            nextAttemptAt: delivery.state == .pending ? delivery.nextAttemptAt : nil,
            attempts: delivery.attempts.map {
                .init(at: $0.at, status: $0.status, error: $0.error, durationMs: $0.durationSeconds * 1_000)
            })
    }
}

extension Components.Schemas.WebhookSecretObject {
    public init(_ secret: WebhookSecret) {
        self.init(id: secret.id, secret: secret.secret, createdAt: secret.createdAt, expiresAt: secret.expiresAt)
    }
}
