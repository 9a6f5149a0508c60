import Foundation

/// A pushed model version: immutable, named by the digest of its manifest.
public struct ModelVersionRecord: Hashable, Sendable {
    public var id: Digest
    public var model: String
    /// The manifest's canonical JSON: the bytes `id` is the digest of.
    public var manifest: Data
    public var createdAt: Date

    public init(id: Digest, model: String, manifest: Data, createdAt: Date) {
        self.id = id
        self.model = model
        self.manifest = manifest
        self.createdAt = createdAt
    }
}

/// One version an alias points at, with its share of new generations.
public struct AliasTarget: Hashable, Sendable, Codable {
    public var version: Digest
    /// Relative weight (a canary at 10 beside production at 90 gets a tenth of the traffic).
    public var weight: Int

    public init(version: Digest, weight: Int = 100) {
        self.version = version
        self.weight = weight
    }
}

/// A mutable name (`production`, `canary`, …) for one version, or several split by weight.
public struct AliasRecord: Hashable, Sendable {
    public var model: String
    public var name: String
    public var targets: [AliasTarget]
    public var updatedAt: Date

    public init(model: String, name: String, targets: [AliasTarget], updatedAt: Date) {
        self.model = model
        self.name = name
        self.targets = targets
        self.updatedAt = updatedAt
    }

    /// The version a generation gets: a weighted choice that depends only on the generation's id,
    /// so a generation resolves to the same version however often it is retried (sticky canaries).
    public func resolve(for generation: GenerationID) -> Digest? {
        let total = targets.reduce(0) { $0 + max($1.weight, 0) }
        guard total > 0 else { return targets.first?.version }
        var point = Int(StableHash.fnv1a(generation.rawValue) % UInt64(total))
        for target in targets where target.weight > 0 {
            if point < target.weight { return target.version }
            point -= target.weight
        }
        return targets.last?.version
    }

    /// Alias names: lowercase letters, digits, `-` and `_`, 1…64 characters.
    public static func isValidName(_ name: String) -> Bool {
        (1...64).contains(name.count) && name.unicodeScalars.allSatisfy { "abcdefghijklmnopqrstuvwxyz0123456789-_".unicodeScalars.contains($0) }
    }

    /// Checks targets: at least one, versions distinct, weights from 0 to 1000 with a positive sum.
    public static func validate(_ targets: [AliasTarget]) throws {
        guard !targets.isEmpty else { throw KilnError(.invalidRequest, "targets: at least one version is needed") }
        guard Set(targets.map(\.version)).count == targets.count else {
            throw KilnError(.invalidRequest, "targets: a version is named twice")
        }
        guard targets.allSatisfy({ (0...1000).contains($0.weight) }), targets.contains(where: { $0.weight > 0 }) else {
            throw KilnError(.invalidRequest, "targets: weights must be from 0 to 1000, at least one above 0")
        }
    }
}

/// One move of an alias, kept forever.
public struct AliasChange: Hashable, Sendable {
    public enum Action: String, Hashable, Sendable, Codable {
        /// Pointed at one version.
        case promote
        /// Split between versions by weight.
        case split
        /// Went back to what it pointed at before the last promote or split.
        case rollback
    }

    public var sequence: Int64
    public var model: String
    public var alias: String
    public var action: Action
    public var targets: [AliasTarget]
    public var at: Date

    public init(sequence: Int64, model: String, alias: String, action: Action, targets: [AliasTarget], at: Date) {
        self.sequence = sequence
        self.model = model
        self.alias = alias
        self.action = action
        self.targets = targets
        self.at = at
    }

    /// What a rollback goes back to, given an alias's history oldest first: moves form a stack
    /// (a promote or split pushes, a rollback pops), and a rollback returns to the entry below the top.
    /// - Returns: nil when there is nothing to go back to.
    public static func rollbackTarget(history: [AliasChange]) -> [AliasTarget]? {
        var stack: [[AliasTarget]] = []
        for change in history {
            switch change.action {
            case .promote, .split: stack.append(change.targets)
            case .rollback: if !stack.isEmpty { stack.removeLast() }
            }
        }
        guard stack.count >= 2 else { return nil }
        return stack[stack.count - 2]
    }
}

/// FNV-1a: a hash that is the same in every process and on every machine (Swift's `Hasher` is not).
public enum StableHash {
    public static func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        return hash
    }
}
