import Crypto
import Foundation
import KilnCore

/// `kiln.yaml`: what a model folder declares about itself (`docs/model-format.md`).
public struct ModelFolderSpec: Codable, Sendable, Hashable {
    public var name: String
    public var description: String?
    /// `file.py:ClassName`.
    public var entrypoint: String
    /// A pip requirements file, relative to the folder; installed into a clean environment layer.
    public var requirements: String?
    /// A folder of prebuilt environments, one sub-folder per platform (`env/cpu`, `env/cuda12-x86_64`).
    public var environments: String?
    public var accelerators: [String]
    public var gpus: Int
    /// The checkpoint folder, relative to the model folder.
    public var weights: String
    /// JSON Schema of the generation input.
    public var inputs: JSONValue?

    public init(
        name: String, description: String? = nil, entrypoint: String, requirements: String? = nil, environments: String? = nil,
        accelerators: [String] = ["cpu"], gpus: Int = 0, weights: String = "weights", inputs: JSONValue? = nil
    ) {
        self.name = name
        self.description = description
        self.entrypoint = entrypoint
        self.requirements = requirements
        self.environments = environments
        self.accelerators = accelerators
        self.gpus = gpus
        self.weights = weights
        self.inputs = inputs
    }

    enum CodingKeys: String, CodingKey {
        case name, description, entrypoint, requirements, environments, accelerators, gpus, weights, inputs
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        description = try c.decodeIfPresent(String.self, forKey: .description)
        entrypoint = try c.decode(String.self, forKey: .entrypoint)
        requirements = try c.decodeIfPresent(String.self, forKey: .requirements)
        environments = try c.decodeIfPresent(String.self, forKey: .environments)
        accelerators = try c.decodeIfPresent([String].self, forKey: .accelerators) ?? ["cpu"]
        gpus = try c.decodeIfPresent(Int.self, forKey: .gpus) ?? 0
        weights = try c.decodeIfPresent(String.self, forKey: .weights) ?? "weights"
        inputs = try c.decodeIfPresent(JSONValue.self, forKey: .inputs)
    }
}

/// A version packed on disk, ready to push: its manifest and where each blob's bytes are.
public struct PackedVersion: Sendable {
    public var manifest: ModelManifest
    public var id: Digest
    public var files: [Digest: URL]
}

/// Turns a model folder into the layers of a version (DESIGN §6): the code as one reproducible tar,
/// each environment as one tar per platform, each checkpoint file as its own blob.
public enum ModelPackager {
    /// Packs `folder` into `workspace` (a scratch folder the caller owns).
    ///
    /// - Parameter environments: platform → a folder holding the full Python environment for it
    ///   (built by the caller from `requirements`, or found under `spec.environments`).
    /// - Throws: ``KilnError`` naming what is wrong with the folder.
    public static func pack(folder: URL, spec: ModelFolderSpec, environments: [String: URL], workspace: URL) throws -> PackedVersion {
        guard RelativePath.isSafe(spec.weights) else {
            throw KilnError(.invalidInput, "kiln.yaml: weights '\(spec.weights)' must be a relative path inside the folder")
        }
        if let environmentsFolder = spec.environments, !RelativePath.isSafe(environmentsFolder) {
            throw KilnError(.invalidInput, "kiln.yaml: environments '\(environmentsFolder)' must be a relative path inside the folder")
        }
        try FileManager.default.createDirectory(at: workspace, withIntermediateDirectories: true)
        var files: [Digest: URL] = [:]
        var layers: [ModelManifest.Layer] = []

        // 1. Code: the folder without weights, environments, hidden files and Python caches.
        let excluded = Set([spec.weights, spec.environments].compactMap { $0 }.map { $0.hasSuffix("/") ? $0 : $0 + "/" })
        let codeArchive = workspace.appending(path: "code.tar")
        let code = try ReproducibleTar.write(folder: folder, to: codeArchive) { path in
            let name = path.split(separator: "/").last.map(String.init) ?? path
            if name.hasPrefix(".") || name == "__pycache__" || name.hasSuffix(".pyc") { return false }
            return !excluded.contains(path)
        }
        files[code.digest] = codeArchive
        layers.append(.init(kind: .code, digest: code.digest, size: code.size))

        // 2. Environments, one per platform.
        for (platform, environment) in environments.sorted(by: { $0.key < $1.key }) {
            guard platform.range(of: "^[a-z0-9][a-z0-9._-]*$", options: .regularExpression) != nil else {
                throw KilnError(.invalidInput, "environment platform '\(platform)' must be lowercase letters, digits, '.', '_' or '-'")
            }
            let archive = workspace.appending(path: "env-\(platform).tar")
            let packed = try ReproducibleTar.write(folder: environment, to: archive) { path in
                !path.hasSuffix(".pyc") && !path.hasSuffix("__pycache__/")
            }
            files[packed.digest] = archive
            layers.append(.init(kind: .environment, digest: packed.digest, size: packed.size, platform: platform))
        }

        // 3. Weights: every file, as it is.
        let weightsFolder = folder.appending(path: spec.weights)
        if FileManager.default.fileExists(atPath: weightsFolder.path) {
            for entry in try ReproducibleTar.collect(folder: weightsFolder, include: { _ in true }) where entry.kind == .file {
                let (digest, size) = try BlobDigest.of(file: entry.url)
                files[digest] = entry.url
                layers.append(.init(kind: .weights, digest: digest, size: size, path: entry.path))
            }
        }

        let manifest = ModelManifest(
            model: spec.name, entrypoint: spec.entrypoint, accelerators: spec.accelerators, gpus: spec.gpus, inputs: spec.inputs,
            layers: layers)
        try manifest.validate()
        let entry = String(spec.entrypoint.split(separator: ":").first ?? "")
        guard FileManager.default.fileExists(atPath: folder.appending(path: entry).path) else {
            throw KilnError(.invalidInput, "kiln.yaml: entrypoint file '\(entry)' is not in the folder")
        }
        return PackedVersion(manifest: manifest, id: try manifest.versionID(), files: files)
    }
}

public enum BlobDigest {
    /// The SHA-256 and size of a file, read in chunks.
    public static func of(file: URL) throws -> (Digest, Int64) {
        let handle = try FileHandle(forReadingFrom: file)
        defer { try? handle.close() }
        var hasher = SHA256()
        var size: Int64 = 0
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
            size += Int64(chunk.count)
        }
        return (Digest(hex: hasher.finalize().hexString)!, size)
    }
}
