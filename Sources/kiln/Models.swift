import ArgumentParser
import Foundation
import KilnAPI
import KilnCore
import KilnModels
import OpenAPIRuntime
import Yams

/// Where the API is and which key to use: flags, then `KILN_URL` and `KILN_KEY` (admin calls try
/// `KILN_ADMIN_KEY` first), then the `kiln up` of the current folder (`.kiln/up.json`).
struct Connection: ParsableArguments {
    enum Role { case user, admin }

    @Option(help: "The Kiln server (default: $KILN_URL, else the kiln up of this folder).")
    var server: String?

    @Option(help: "The API key (default: $KILN_KEY, else the kiln up of this folder).")
    var key: String?

    func client(_ role: Role = .admin) throws -> KilnAPIClient {
        let environment = ProcessInfo.processInfo.environment
        let local = UpState.load(from: URL(filePath: ".kiln", directoryHint: .isDirectory))
        let chosen: String? = switch role {
        case .admin: key ?? environment["KILN_ADMIN_KEY"] ?? environment["KILN_KEY"] ?? local?.adminKey
        case .user: key ?? environment["KILN_KEY"] ?? local?.userKey
        }
        guard let key = chosen else {
            throw ValidationError("no API key: pass --key, set KILN_KEY, or run kiln up in this folder")
        }
        return try KilnAPIClient(server: server ?? environment["KILN_URL"] ?? local?.url ?? "http://127.0.0.1:8080", key: key)
    }
}

/// A failure to report in one line, without the usage text that `ValidationError` adds.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Runs a client call, turning the server's errors into a one-line message.
func reporting<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as KilnError {
        throw CommandFailure(error.message)
    }
}

struct Models: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Push, inspect, promote and roll back model versions.",
        subcommands: [Push.self, List.self, Versions.self, Inspect.self, Promote.self, Split.self, Rollback.self, History.self])

    struct Push: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pack a model folder as an immutable version and upload what the server lacks.")

        @Argument(help: "The model folder (with kiln.yaml).")
        var folder: String

        @Option(help: "Platform of the environment built from the requirements (cpu, cuda12-x86_64, …).")
        var platform: String = "cpu"

        @Option(help: "Then point this alias at the new version.")
        var promote: String?

        @OptionGroup var connection: Connection

        func run() async throws {
            let pusher = ModelPusher(client: try connection.client(), platform: platform)
            _ = try await pusher.push(URL(filePath: folder, directoryHint: .isDirectory), promote: promote)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the models and their aliases.")
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client()
            let models = try await reporting { try await client { try await $0.listModelsAsAdmin().ok.body.json } }
            for model in models.data {
                let aliases = model.aliases.map { alias in
                    "\(alias.name) → " + alias.targets.map { alias.targets.count == 1 ? short($0.version) : "\(short($0.version))@\($0.weight)" }.joined(separator: ", ")
                }
                print([model.name, aliases.joined(separator: "; ")].filter { !$0.isEmpty }.joined(separator: "  "))
            }
        }
    }

    struct Versions: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a model's versions, newest first.")
        @Argument var model: String
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client()
            let versions = try await reporting {
                try await client { try await $0.listModelVersions(path: .init(name: model)).ok.body.json }
            }
            for version in versions.data {
                print("\(short(version.id))  \(RFC3339.format(version.createdAt))  \(version.id)")
            }
        }
    }

    struct Inspect: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a version's manifest.")
        @Argument var model: String
        @Argument(help: "The version id, or a unique prefix of its hex digits.") var version: String
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client()
            let id = try await VersionReference.resolve(version, of: model, client: client)
            let object = try await reporting {
                try await client {
                    try await $0.getModelVersion(path: .init(name: model, version: .init(value1: id.description))).ok.body.json
                }
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            print("version \(object.id)")
            print(String(decoding: try encoder.encode(object.manifest), as: UTF8.self))
        }
    }

    struct Promote: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Point an alias at one version.")
        @Argument var model: String
        @Argument(help: "The version id, or a unique prefix of its hex digits.") var version: String
        @Option(help: "The alias to move.") var alias: String = "production"
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client()
            let id = try await VersionReference.resolve(version, of: model, client: client)
            let moved = try await reporting { try await move(alias, of: model, to: [.init(version: id, weight: 100)], client: client) }
            print("\(model) \(moved.name) → \(id.short)")
        }
    }

    struct Split: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Split an alias's traffic between versions by weight (a canary).",
            discussion: "Example: kiln models split demo-video 3f2a9c=90 8b1d44=10")
        @Argument var model: String
        @Argument(help: "VERSION=WEIGHT pairs.") var targets: [String]
        @Option(help: "The alias to move.") var alias: String = "production"
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client()
            var split: [AliasTarget] = []
            for pair in targets {
                let parts = pair.split(separator: "=")
                guard parts.count == 2, let weight = Int(parts[1]) else { throw ValidationError("'\(pair)' is not VERSION=WEIGHT") }
                split.append(.init(version: try await VersionReference.resolve(String(parts[0]), of: model, client: client), weight: weight))
            }
            let moved = try await reporting { try await move(alias, of: model, to: split, client: client) }
            print("\(model) \(moved.name) → " + moved.targets.map { "\(short($0.version))@\($0.weight)" }.joined(separator: ", "))
        }
    }

    struct Rollback: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Move an alias back to what it pointed at before.")
        @Argument var model: String
        @Option(help: "The alias to move.") var alias: String = "production"
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client()
            let moved = try await reporting {
                try await client { try await $0.rollbackModelAlias(path: .init(name: model, alias: alias)).ok.body.json }
            }
            print("\(model) \(moved.name) → " + moved.targets.map { "\(short($0.version))@\($0.weight)" }.joined(separator: ", "))
        }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show every move of an alias, oldest first.")
        @Argument var model: String
        @Option(help: "The alias.") var alias: String = "production"
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client()
            let history = try await reporting {
                try await client { try await $0.getModelAliasHistory(path: .init(name: model, alias: alias)).ok.body.json }
            }
            for change in history.data {
                print("\(RFC3339.format(change.at))  \(change.action.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0))  " + change.targets.map { "\(short($0.version))@\($0.weight)" }.joined(separator: ", "))
            }
        }
    }
}

/// Packs a model folder and pushes it: only the blobs the server lacks, then the manifest.
struct ModelPusher {
    let client: KilnAPIClient
    let platform: String
    var quiet = false

    /// - Returns: the version id.
    func push(_ root: URL, promote alias: String?) async throws -> Digest {
        let spec = try readSpec(root)
        let workspace = FileManager.default.temporaryDirectory.appending(path: "kiln-push-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: workspace) }
        let environments = try buildEnvironments(root, spec, workspace: workspace)
        let packed = try reportingSync { try ModelPackager.pack(folder: root, spec: spec, environments: environments, workspace: workspace) }
        say("packed \(spec.name) \(packed.id.short): \(packed.manifest.layers.count) layers, \(format(bytes: packed.manifest.layers.reduce(0) { $0 + $1.size }))")
        let (client, blobs) = (self.client, packed.manifest.blobs.map(\.description))
        return try await reporting {
            let check = try await client { try await $0.checkBlobs(body: .json(.init(digests: blobs))).ok.body.json }
            let sizes = Dictionary(packed.manifest.layers.map { ($0.digest, $0.size) }, uniquingKeysWith: { a, _ in a })
            for text in check.missing {
                guard let digest = Digest(text), let file = packed.files[digest] else { continue }
                say("  uploading \(digest.short) (\(format(bytes: sizes[digest] ?? 0)))")
                _ = try await client.transfer(contentType: "application/octet-stream") {
                    try await $0.uploadBlob(path: .init(digest: .init(value1: text)), body: .any(try HTTPBody.file(file)))
                }
            }
            say("  \(check.missing.count) of \(packed.manifest.blobs.count) blobs uploaded; the server had the rest")
            let manifest = try Components.Schemas.ModelManifest(packed.manifest)
            let pushed = try await client {
                switch try await $0.pushModelVersion(path: .init(name: spec.name), body: .json(manifest)) {
                case .created(let created): return try created.body.json
                case .ok(let known): return try known.body.json
                default: throw KilnError(.internal, "the push answered with a status the API does not have")
                }
            }
            let version = try Digest(wire: pushed.id, field: "id")
            say("\(pushed.created == false ? "unchanged" : "pushed") \(spec.name) version \(version)")
            if let alias {
                _ = try await move(alias, of: spec.name, to: [.init(version: version, weight: 100)], client: client)
                say("\(alias) → \(version.short)")
            }
            return version
        }
    }

    private func say(_ line: String) {
        if !quiet { print(line) }
    }

    private func readSpec(_ root: URL) throws -> ModelFolderSpec {
        let path = root.appending(path: "kiln.yaml")
        guard let text = try? String(contentsOf: path, encoding: .utf8) else {
            throw ValidationError("\(root.path) has no kiln.yaml")
        }
        let keys = [
            "name", "description", "entrypoint", "requirements", "environments", "accelerators", "gpus", "weights", "inputs",
        ]
        try ScenarioFile.checkKeys(
            try Yams.load(yaml: text), schema: .object(Dictionary(uniqueKeysWithValues: keys.map { ($0, .value) })), path: "kiln.yaml")
        do {
            return try YAMLDecoder().decode(ModelFolderSpec.self, from: text)
        } catch let error as DecodingError {
            throw ValidationError("kiln.yaml: \(error.message(noun: "key"))")
        }
    }

    /// The prebuilt environments of `spec.environments`, or one built from `spec.requirements`
    /// with pip into a clean folder.
    private func buildEnvironments(_ root: URL, _ spec: ModelFolderSpec, workspace: URL) throws -> [String: URL] {
        if let folder = spec.environments {
            let base = root.appending(path: folder)
            let platforms = try FileManager.default.contentsOfDirectory(atPath: base.path).filter { !$0.hasPrefix(".") }.sorted()
            return Dictionary(uniqueKeysWithValues: platforms.map { ($0, base.appending(path: $0)) })
        }
        guard let requirements = spec.requirements else { return [:] }
        let target = workspace.appending(path: "env-\(platform)")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: true)
        say("building the \(platform) environment from \(requirements) …")
        let pip = Process()
        pip.executableURL = URL(filePath: "/usr/bin/env")
        pip.arguments = [
            "python3", "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check", "--root-user-action=ignore",
            "--target", target.path, "-r", root.appending(path: requirements).path,
        ]
        try pip.run()
        pip.waitUntilExit()
        guard pip.terminationStatus == 0 else {
            throw CommandFailure("pip could not install \(requirements) (exit \(pip.terminationStatus))")
        }
        return [platform: target]
    }
}

/// A version named by its full id or a unique prefix of its hex digits.
enum VersionReference {
    static func resolve(_ text: String, of model: String, client: KilnAPIClient) async throws -> Digest {
        if let digest = Digest(text) ?? Digest(hex: text) { return digest }
        let prefix = text.hasPrefix("sha256:") ? String(text.dropFirst(7)) : text
        let versions = try await reporting {
            try await client { try await $0.listModelVersions(path: .init(name: model)).ok.body.json }
        }
        let matches = versions.data.compactMap { Digest($0.id) }.filter { $0.hex.hasPrefix(prefix) }
        guard matches.count == 1, let match = matches.first else {
            throw CommandFailure(matches.isEmpty ? "model '\(model)' has no version \(text)" : "'\(text)' names \(matches.count) versions; give more digits")
        }
        return match
    }
}

/// Points `alias` of `model` at `targets`: one promotes, several split.
func move(_ alias: String, of model: String, to targets: [AliasTarget], client: KilnAPIClient) async throws
    -> Components.Schemas.AliasObject
{
    let request = Components.Schemas.MoveAliasRequest(targets: targets.map(Components.Schemas.AliasTargetObject.init))
    return try await client { try await $0.moveModelAlias(path: .init(name: model, alias: alias), body: .json(request)).ok.body.json }
}

/// The first hex digits of a digest, as the command line shows versions.
func short(_ digest: String) -> String {
    Digest(digest)?.short ?? digest
}

func reportingSync<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as KilnError {
        throw CommandFailure(error.message)
    }
}

func format(bytes: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024, unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}
