import Foundation
import KilnCore
import KilnModels
import OpenAPIRuntime

// Wire → domain: the one place where what the document says becomes a KilnCore value. A wire
// value the domain has no place for is refused with `invalid_request` naming the field.

extension GenerationState {
    public init(_ state: Components.Schemas.GenerationState) {
        switch state {
        case .queued: self = .queued
        case .running: self = .running
        case .succeeded: self = .succeeded
        case .failed: self = .failed
        case .canceled: self = .canceled
        }
    }
}

extension KeyScope {
    public init(_ scope: Components.Schemas.KeyScope) {
        switch scope {
        case .user: self = .user
        case .worker: self = .worker
        case .admin: self = .admin
        }
    }
}

extension WorkerRecord.State {
    public init(_ state: Components.Schemas.WorkerState) {
        switch state {
        case .active: self = .active
        case .draining: self = .draining
        case .retired: self = .retired
        }
    }
}

extension JobProgress {
    public init(_ progress: Components.Schemas.ProgressObject) {
        self.init(fraction: progress.fraction, stage: progress.stage)
    }
}

extension JobFailure {
    public init(_ error: Components.Schemas.ErrorDetail) {
        self.init(code: error.code, message: error.message)
    }
}

extension AliasTarget {
    /// - Throws: `.invalidRequest` when the version is not a digest.
    public init(_ target: Components.Schemas.AliasTargetObject) throws {
        self.init(version: try Digest(wire: target.version, field: "targets.version"), weight: target.weight)
    }
}

extension Digest {
    /// `sha256:<hex>`, or the bare hex where the document allows it.
    /// - Throws: `.invalidRequest` naming `field`.
    public init(wire text: String, field: String) throws {
        // In a path the `:` may come percent-encoded (`sha256%3A…`).
        let text = text.removingPercentEncoding ?? text
        guard let digest = Digest(text) ?? Digest(hex: text) else {
            throw KilnError(.invalidRequest, "\(field): '\(text)' is not a sha256 digest (sha256:<64 hex digits>)")
        }
        self = digest
    }
}

extension Components.Schemas.DigestParameter {
    /// The digest in a path, with or without its `sha256:` prefix.
    public var text: String { value1 ?? value2 ?? "" }
}

extension ModelManifest.Layer {
    public init(_ layer: Components.Schemas.ManifestLayer) throws {
        let kind: Kind =
            switch layer.kind {
            case .code: .code
            case .environment: .environment
            case .weights: .weights
            }
        self.init(
            kind: kind, digest: try Digest(wire: layer.digest, field: "layers.digest"), size: layer.size, platform: layer.platform,
            path: layer.path)
    }
}

extension ModelManifest {
    /// The manifest as it was sent, in canonical order; ``validate()`` judges it.
    public init(_ manifest: Components.Schemas.ModelManifest) throws {
        self.init(
            model: manifest.model, entrypoint: manifest.entrypoint, accelerators: manifest.accelerators, gpus: manifest.gpus,
            inputs: manifest.inputs.map(JSONValue.init), layers: try manifest.layers.map(ModelManifest.Layer.init))
        self.schema = manifest.schema.rawValue
    }
}

// MARK: - Free-form JSON

extension JSONValue {
    public init(_ container: OpenAPIValueContainer) {
        self.init(openAPIValue: container.value)
    }

    /// - Parameter value: a value of the OpenAPI runtime's containers (`Bool`, `Int`, `Double`,
    ///   `String`, arrays and dictionaries of them, or nil).
    init(openAPIValue value: (any Sendable)?) {
        switch value {
        case nil: self = .null
        case let value as Bool: self = .bool(value)
        case let value as Int: self = .number(Double(value))
        case let value as Double: self = .number(value)
        case let value as String: self = .string(value)
        case let values as [(any Sendable)?]: self = .array(values.map(JSONValue.init(openAPIValue:)))
        case let values as [String: (any Sendable)?]: self = .object(values.mapValues(JSONValue.init(openAPIValue:)))
        default: self = .null
        }
    }
}

extension Dictionary where Key == String, Value == JSONValue {
    public init(_ container: OpenAPIObjectContainer) {
        self = container.value.mapValues(JSONValue.init(openAPIValue:))
    }

    /// Converts `container` as ``init(_:)`` does, refusing integers a JSON number cannot hold
    /// exactly (beyond ±2^53: they would silently change).
    /// - Throws: `.invalidInput` naming the field under `field`.
    public init(exactly container: OpenAPIObjectContainer, field: String) throws {
        func check(_ value: (any Sendable)?, _ path: String) throws {
            switch value {
            case let number as Int where number.magnitude > 1 << 53:
                throw KilnError(
                    .invalidInput, "\(path): \(number) is beyond ±2^53 and cannot be kept exactly; send it as a string")
            case let values as [(any Sendable)?]:
                for (index, item) in values.enumerated() { try check(item, "\(path)[\(index)]") }
            case let values as [String: (any Sendable)?]:
                for (key, item) in values { try check(item, "\(path).\(key)") }
            default: return
            }
        }
        for (key, value) in container.value { try check(value, "\(field).\(key)") }
        self.init(container)
    }
}

extension Components.Schemas.GenerationState {
    /// `succeeded`, `failed` or `canceled`: nothing more will happen to the generation.
    public var isFinal: Bool { GenerationState(self).isFinal }
}
