import Foundation
import KilnAPI
import KilnCore
import KilnModels
import KilnServer
import Logging
import OpenAPIRuntime
import ServiceLifecycle
import Testing

/// A real Kiln on this machine for end-to-end tests: the control plane in this process on a
/// loopback port, and workers as separate `kiln worker` processes running Python model runtimes.
/// Needs `swift build` to have built the `kiln` executable, and `python3` with PyAV and numpy.
final class LocalCluster: @unchecked Sendable {
    static let repository = URL(filePath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let adminKey = "e2e-admin-key"

    let data: URL
    let url: String
    let admin: KilnAPIClient
    let user: KilnAPIClient
    let workerKey: String
    private let serverTask: Task<Void, any Error>
    private var workers: [String: Process] = [:]
    private let lock = NSLock()

    private init(data: URL, url: String, serverTask: Task<Void, any Error>, user: String, workerKey: String) {
        self.data = data
        self.url = url
        self.serverTask = serverTask
        self.admin = try! KilnAPIClient(server: url, key: Self.adminKey)
        self.user = try! KilnAPIClient(server: url, key: user)
        self.workerKey = workerKey
    }

    /// - Parameter configure: changes to the server's configuration (pools, the fleet); `local`
    ///   pools start this build's `kiln worker`.
    static func start(leaseTTL: Double = 8, configure: (inout ServerConfiguration) -> Void = { _ in }) async throws -> LocalCluster {
        let binary = repository.appending(path: ".build/debug/kiln")
        try #require(FileManager.default.isExecutableFile(atPath: binary.path), "build the kiln executable first (swift build)")
        let data = FileManager.default.temporaryDirectory.appending(path: "kiln-e2e-\(UUID().uuidString)")
        var configuration = ServerConfiguration()
        configuration.leases.ttlSeconds = leaseTTL
        configuration.leases.heartbeatSeconds = 1
        configure(&configuration)
        var logger = Logger(label: "kiln-e2e")
        logger.logLevel = .warning
        let server = try await KilnServer.open(
            data: data, configuration: configuration, adminKey: adminKey, workerProgram: binary, logger: logger)
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let services = try server.services(host: "127.0.0.1", port: 0, reaperInterval: .milliseconds(250)) { continuation.yield($0) }
        let task = Task {
            try await ServiceGroup(configuration: .init(services: services, logger: logger)).run()
        }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())
        let url = "http://127.0.0.1:\(port)"
        let admin = try KilnAPIClient(server: url, key: adminKey)
        let account = try await admin { try await $0.createAccount(body: .json(.init(name: "e2e", tier: "api"))).created.body.json }
        let userKey = try await admin { try await $0.createAccountKey(path: .init(id: account.id)).created.body.json }
        let workerKey = try await admin { try await $0.createKey(body: .json(.init(scope: .worker))).created.body.json }
        return LocalCluster(data: data, url: url, serverTask: task, user: userKey.key, workerKey: workerKey.key)
    }

    /// Pushes the demo video model (its code changed by `variant` when given) and returns the
    /// version. Its Python packages come from the interpreter the workers run, so no environment
    /// layer is built here.
    func pushDemo(variant: String? = nil, promote: Bool = true) async throws -> KilnCore.Digest {
        try await push("demo-video", from: Self.repository.appending(path: "examples/models/demo-video"), variant: variant, promote: promote)
    }

    /// Pushes the test model of `Fixtures/probe` as `probe` (standard library only).
    func pushProbe() async throws -> KilnCore.Digest {
        try await push("probe", from: Self.repository.appending(path: "Tests/KilnEndToEndTests/Fixtures/probe"), variant: nil, promote: true)
    }

    private func push(_ name: String, from source: URL, variant: String?, promote: Bool) async throws -> KilnCore.Digest {
        let folder = data.appending(path: "model-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: source, to: folder)
        if let variant {
            let handle = try FileHandle(forWritingTo: folder.appending(path: "predict.py"))
            try handle.seekToEnd()
            try handle.write(contentsOf: Data("\n# variant: \(variant)\n".utf8))
            try handle.close()
        }
        let spec = ModelFolderSpec(
            name: name, entrypoint: "predict.py:Predictor", accelerators: ["cpu"],
            inputs: try demoInputs(folder))
        let packed = try ModelPackager.pack(folder: folder, spec: spec, environments: [:], workspace: data.appending(path: "pack-\(UUID())"))
        let digests = packed.manifest.blobs.map(\.description)
        let check = try await admin { try await $0.checkBlobs(body: .json(.init(digests: digests))).ok.body.json }
        for text in check.missing {
            let parsed: KilnCore.Digest? = KilnCore.Digest(text)
            let digest = try #require(parsed)
            let file = try #require(packed.files[digest])
            _ = try await admin.transfer { try await $0.uploadBlob(path: .init(digest: .init(value1: text)), body: .any(try HTTPBody.file(file))).created }
        }
        let manifest = try Components.Schemas.ModelManifest(packed.manifest)
        let pushed = try await admin { try await $0.pushModelVersion(path: .init(name: name), body: .json(manifest)).created.body.json }
        let version = try KilnCore.Digest(wire: pushed.id, field: "id")
        if promote { try await promoteVersion(version, of: name) }
        return version
    }

    func promoteVersion(_ id: KilnCore.Digest, of model: String = "demo-video") async throws {
        let request = Components.Schemas.MoveAliasRequest(targets: [.init(version: id.description, weight: 100)])
        _ = try await admin {
            try await $0.moveModelAlias(path: .init(name: model, alias: "production"), body: .json(request)).ok
        }
    }

    /// The input schema of the demo's kiln.yaml, read with the runtime's interpreter (no YAML parser here).
    private func demoInputs(_ folder: URL) throws -> JSONValue {
        let script = "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))['inputs']))"
        let output = try Self.python(["-c", script, folder.appending(path: "kiln.yaml").path])
        return try JSONValue.parse(output)
    }

    /// Starts a `kiln worker` process.
    /// - Parameters:
    ///   - cache: its cache folder; default one of its own.
    ///   - server: the URL it is given; default the cluster's.
    @discardableResult
    func startWorker(
        _ name: String, arguments extra: [String] = [], environment: [String: String] = [:], cache: URL? = nil, server: String? = nil
    ) throws -> Process {
        let process = Process()
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        process.executableURL = Self.repository.appending(path: ".build/debug/kiln")
        process.arguments = [
            "worker", "--server", server ?? url, "--key", workerKey, "--cache", (cache ?? data.appending(path: "cache-\(name)")).path,
            "--runtime-path", Self.repository.appending(path: "python").path, "--label", "name=\(name)",
        ] + extra
        let log = data.appending(path: "worker-\(name).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        lock.withLock { workers[name] = process }
        return process
    }

    /// Sends `signal` to a worker process.
    func signalWorker(_ name: String, _ signal: Int32) {
        lock.withLock { workers[name] }.map { _ = kill($0.processIdentifier, signal) }
    }

    /// The pids of the model runtimes a worker started (its cache folder is on their command line).
    func runtimePIDs(of name: String) throws -> [Int32] {
        let output = try Self.run("/usr/bin/pgrep", ["-f", "kiln_runtime --code \(data.appending(path: "cache-\(name)").path)"])
        return output.split(separator: "\n").compactMap { Int32($0) }
    }

    func submit(_ input: [String: JSONValue], model: String = "demo-video") async throws -> Components.Schemas.GenerationObject {
        let request = Components.Schemas.CreateGenerationRequest(model: model, input: .init(additionalProperties: try .init(input)))
        return try await user { try await $0.createGeneration(body: .json(request)).created.body.json }
    }

    func generation(_ id: String) async throws -> Components.Schemas.GenerationObject {
        try await user { try await $0.getGeneration(path: .init(id: id)).ok.body.json }
    }

    /// Polls until `condition` holds (at most `seconds`, a bound against hanging, not a timing test).
    func waitFor(
        _ id: String, seconds: Double = 120, _ condition: (Components.Schemas.GenerationObject) -> Bool
    ) async throws -> Components.Schemas.GenerationObject {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while true {
            let generation = try await generation(id)
            if condition(generation) { return generation }
            guard ContinuousClock.now < deadline else {
                Issue.record("generation \(id) still \(generation.state.rawValue) after \(Int(seconds)) s: \(workerLogs())")
                return generation
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    func workerLogs() -> String {
        let logs = (try? FileManager.default.contentsOfDirectory(atPath: data.path).filter { $0.hasPrefix("worker-") }) ?? []
        return logs.map { name in
            "\n--- \(name)\n" + ((try? String(contentsOf: data.appending(path: name), encoding: .utf8)) ?? "").suffix(3000)
        }.joined()
    }

    func stop() async {
        for process in lock.withLock({ Array(workers.values) }) where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        for name in lock.withLock({ Array(workers.keys) }) {
            for pid in (try? runtimePIDs(of: name)) ?? [] { kill(pid, SIGKILL) }
        }
        serverTask.cancel()
        _ = try? await serverTask.value
        try? FileManager.default.removeItem(at: data)
    }

    // MARK: Processes

    @discardableResult
    static func python(_ arguments: [String]) throws -> String {
        try run("/usr/bin/env", ["python3"] + arguments)
    }

    @discardableResult
    static func run(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(filePath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Frame count, width and height of an MP4, read with PyAV.
    static func probe(_ file: URL) throws -> (frames: Int, width: Int, height: Int, codec: String) {
        let script = """
            import av, sys
            with av.open(sys.argv[1]) as c:
                s = c.streams.video[0]
                frames = [f for f in c.decode(s)]
                print(len(frames), frames[0].width, frames[0].height, s.codec_context.name)
            """
        let parts = try python(["-c", script, file.path]).split(separator: " ")
        guard parts.count == 4, let frames = Int(parts[0]), let width = Int(parts[1]), let height = Int(parts[2]) else {
            throw KilnError(.invalidInput, "\(file.lastPathComponent) is not a readable video")
        }
        return (frames, width, height, String(parts[3]))
    }
}

/// Polls until `condition` holds, recording an issue after `seconds` (a bound against hanging, not a
/// timing test).
func until(_ what: String, seconds: Double = 180, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while try await !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("\(what): not after \(Int(seconds)) s")
            return
        }
        try await Task.sleep(for: .milliseconds(250))
    }
}
