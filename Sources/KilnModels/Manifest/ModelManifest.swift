import Crypto
import Foundation
import KilnCore

/// The immutable description of one model version (DESIGN §6, `docs/model-format.md`).
///
/// Every layer is named by the SHA-256 of its bytes, and the version's id is the SHA-256 of the
/// manifest's canonical JSON: the same folder always gives the same id, and no two different
/// versions can share one.
public struct ModelManifest: Codable, Sendable, Hashable {
    public static let currentSchema = "kiln.model.v1"

    public struct Layer: Codable, Sendable, Hashable {
        public enum Kind: String, Codable, Sendable, Hashable, Comparable {
            /// A tar of the model's code (everything in the folder but weights and environments).
            case code
            /// A tar of a full Python environment for one platform (`cpu`, `cuda12-x86_64`, …).
            case environment
            /// One checkpoint file, as it is (not archived), so versions sharing weights store them once.
            case weights

            var order: Int {
                switch self {
                case .code: 0
                case .environment: 1
                case .weights: 2
                }
            }

            public static func < (lhs: Kind, rhs: Kind) -> Bool { lhs.order < rhs.order }
        }

        public var kind: Kind
        public var digest: Digest
        public var size: Int64
        /// For environments: the platform it was built for.
        public var platform: String?
        /// For weights: the file's path under the weights folder.
        public var path: String?

        public init(kind: Kind, digest: Digest, size: Int64, platform: String? = nil, path: String? = nil) {
            self.kind = kind
            self.digest = digest
            self.size = size
            self.platform = platform
            self.path = path
        }
    }

    public var schema: String
    public var model: String
    /// `file.py:ClassName`: the predictor the runtime loads.
    public var entrypoint: String
    /// Accelerator kinds it runs on (`cpu`, `h100`, `mi300x`, …), sorted.
    public var accelerators: [String]
    /// GPUs one replica needs (0 for CPU models).
    public var gpus: Int
    /// JSON Schema of a generation's `input`.
    public var inputs: JSONValue?
    public var layers: [Layer]

    public init(
        model: String, entrypoint: String, accelerators: [String], gpus: Int, inputs: JSONValue?, layers: [Layer]
    ) {
        self.schema = Self.currentSchema
        self.model = model
        self.entrypoint = entrypoint
        self.accelerators = accelerators.sorted()
        self.gpus = gpus
        self.inputs = inputs
        self.layers = layers.sorted(by: Self.layerOrder)
    }

    /// Code first, then environments by platform, then weights by path.
    static func layerOrder(_ a: Layer, _ b: Layer) -> Bool {
        if a.kind != b.kind { return a.kind < b.kind }
        if a.platform != b.platform { return (a.platform ?? "") < (b.platform ?? "") }
        return (a.path ?? "") < (b.path ?? "")
    }

    /// The bytes the version id is the digest of: sorted keys, no whitespace, layers in canonical order.
    public func canonicalJSON() throws -> Data {
        var copy = self
        copy.accelerators.sort()
        copy.layers.sort(by: Self.layerOrder)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(copy)
    }

    /// The version id: the SHA-256 of the canonical JSON.
    public func versionID() throws -> Digest {
        Digest(hex: SHA256.hash(data: try canonicalJSON()).hexString)!
    }

    /// The blobs the version needs, once each.
    public var blobs: [Digest] { Array(Set(layers.map(\.digest))).sorted() }

    /// The environment layer for a platform, if the version has one.
    public func environment(for platform: String) -> Layer? {
        layers.first { $0.kind == .environment && $0.platform == platform }
    }

    /// Checks the manifest's own consistency.
    ///
    /// - Throws: ``KilnError`` (`.invalidInput`) naming the field at fault.
    public func validate() throws {
        func fail(_ message: String) -> KilnError { KilnError(.invalidInput, "manifest: \(message)") }
        guard schema == Self.currentSchema else { throw fail("schema '\(schema)' is not '\(Self.currentSchema)'") }
        guard ModelRecord.isValidName(model) else { throw fail("model '\(model)' is not a valid model name") }
        let parts = entrypoint.split(separator: ":")
        guard parts.count == 2, parts[0].hasSuffix(".py"), !parts[1].isEmpty, !parts[0].hasPrefix("/"), !parts[0].contains("..")
        else {
            throw fail("entrypoint '\(entrypoint)' must be 'file.py:ClassName', relative to the code folder")
        }
        guard !accelerators.isEmpty else { throw fail("accelerators: at least one kind is needed (e.g. cpu)") }
        guard (0...64).contains(gpus) else { throw fail("gpus must be from 0 to 64") }
        guard layers.filter({ $0.kind == .code }).count == 1 else { throw fail("layers: exactly one code layer is needed") }
        var platforms = Set<String>()
        var paths = Set<String>()
        for layer in layers {
            guard layer.size >= 0 else { throw fail("layers: a size is negative") }
            switch layer.kind {
            case .code:
                guard layer.platform == nil, layer.path == nil else { throw fail("layers: the code layer has no platform or path") }
            case .environment:
                guard let platform = layer.platform, !platform.isEmpty else { throw fail("layers: an environment needs a platform") }
                guard platforms.insert(platform).inserted else { throw fail("layers: two environments for platform '\(platform)'") }
            case .weights:
                guard let path = layer.path, RelativePath.isSafe(path) else {
                    throw fail("layers: a weights layer needs a relative path without '..'")
                }
                guard paths.insert(path).inserted else { throw fail("layers: two weights files at '\(path)'") }
            }
        }
    }
}

extension SHA256.Digest {
    var hexString: String { Array(self).hexString }
}

/// Relative paths inside a model folder or archive.
public enum RelativePath {
    /// Relative, `/`-separated, no empty, `.` or `..` component, no NUL.
    public static func isSafe(_ path: String) -> Bool {
        guard !path.isEmpty, !path.hasPrefix("/"), !path.utf8.contains(0), path.utf8.count <= 4096 else { return false }
        return path.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { !$0.isEmpty && $0 != "." && $0 != ".." }
    }
}
