import ArgumentParser
import Foundation
import KilnAPI
import KilnCore
import KilnModels
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
        return KilnAPIClient(server: server ?? environment["KILN_URL"] ?? local?.url ?? "http://127.0.0.1:8080", key: key)
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
            let models: ModelList = try await reporting { try await connection.client().call(.GET, "/v1/admin/models") }
            for model in models.data {
                let aliases = model.aliases.map { alias in
                    "\(alias.name) → " + alias.targets.map { $0.weight == 100 && alias.targets.count == 1 ? $0.version.short : "\($0.version.short)@\($0.weight)" }.joined(separator: ", ")
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
            let versions: VersionList = try await reporting { try await connection.client().call(.GET, "/v1/admin/models/\(model)/versions") }
            for version in versions.data {
                print("\(version.id.short)  \(RFC3339.format(version.createdAt))  \(version.id)")
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
            let object: VersionObject = try await reporting { try await client.call(.GET, "/v1/admin/models/\(model)/versions/\(id)") }
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
            let moved: AliasObject = try await reporting {
                try await client.call(
                    .PUT, "/v1/admin/models/\(model)/aliases/\(alias)",
                    body: MoveAliasRequest(targets: [AliasTargetObject(version: id, weight: 100)]))
            }
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
            var objects: [AliasTargetObject] = []
            for pair in targets {
                let parts = pair.split(separator: "=")
                guard parts.count == 2, let weight = Int(parts[1]) else { throw ValidationError("'\(pair)' is not VERSION=WEIGHT") }
                objects.append(AliasTargetObject(version: try await VersionReference.resolve(String(parts[0]), of: model, client: client), weight: weight))
            }
            let moved: AliasObject = try await reporting {
                try await client.call(.PUT, "/v1/admin/models/\(model)/aliases/\(alias)", body: MoveAliasRequest(targets: objects))
            }
            print("\(model) \(moved.name) → " + moved.targets.map { "\($0.version.short)@\($0.weight)" }.joined(separator: ", "))
        }
    }

    struct Rollback: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Move an alias back to what it pointed at before.")
        @Argument var model: String
        @Option(help: "The alias to move.") var alias: String = "production"
        @OptionGroup var connection: Connection

        func run() async throws {
            let moved: AliasObject = try await reporting {
                try await connection.client().call(.POST, "/v1/admin/models/\(model)/aliases/\(alias)/rollback")
            }
            print("\(model) \(moved.name) → " + moved.targets.map { "\($0.version.short)@\($0.weight)" }.joined(separator: ", "))
        }
    }

    struct History: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show every move of an alias, oldest first.")
        @Argument var model: String
        @Option(help: "The alias.") var alias: String = "production"
        @OptionGroup var connection: Connection

        func run() async throws {
            let history: AliasHistory = try await reporting {
                try await connection.client().call(.GET, "/v1/admin/models/\(model)/aliases/\(alias)/history")
            }
            for change in history.data {
                print("\(RFC3339.format(change.at))  \(change.action.padding(toLength: 8, withPad: " ", startingAt: 0))  " + change.targets.map { "\($0.version.short)@\($0.weight)" }.joined(separator: ", "))
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
        return try await reporting {
            let check: BlobCheckResponse = try await client.call(.POST, "/v1/admin/blobs/check", body: BlobCheckRequest(digests: packed.manifest.blobs))
            let sizes = Dictionary(packed.manifest.layers.map { ($0.digest, $0.size) }, uniquingKeysWith: { a, _ in a })
            for digest in check.missing {
                guard let file = packed.files[digest] else { continue }
                say("  uploading \(digest.short) (\(format(bytes: sizes[digest] ?? 0)))")
                let _: BlobObject = try await client.upload(file, to: "/v1/admin/blobs/\(digest)")
            }
            say("  \(check.missing.count) of \(packed.manifest.blobs.count) blobs uploaded; the server had the rest")
            let version: VersionObject = try await client.call(.POST, "/v1/admin/models/\(spec.name)/versions", body: packed.manifest)
            say("\(version.created == false ? "unchanged" : "pushed") \(spec.name) version \(version.id)")
            if let alias {
                let _: AliasObject = try await client.call(
                    .PUT, "/v1/admin/models/\(spec.name)/aliases/\(alias)",
                    body: MoveAliasRequest(targets: [AliasTargetObject(version: version.id, weight: 100)]))
                say("\(alias) → \(version.id.short)")
            }
            return version.id
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
        let versions: VersionList = try await reporting { try await client.call(.GET, "/v1/admin/models/\(model)/versions") }
        let matches = versions.data.filter { $0.id.hex.hasPrefix(prefix) }
        guard matches.count == 1, let match = matches.first else {
            throw CommandFailure(matches.isEmpty ? "model '\(model)' has no version \(text)" : "'\(text)' names \(matches.count) versions; give more digits")
        }
        return match.id
    }
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
