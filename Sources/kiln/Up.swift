import ArgumentParser
import Foundation
import KilnAPI
import KilnCore
import KilnFleet
import KilnServer
import KilnWorker
import Logging
import ServiceLifecycle

/// What `kiln up` keeps in its data folder so that a second run reuses it: `up.json`.
struct UpState: Codable {
    var url: String
    var adminKey: String
    var userKey: String
    var workerKey: String
    var accountID: String

    enum CodingKeys: String, CodingKey {
        case url
        case adminKey = "admin_key"
        case userKey = "user_key"
        case workerKey = "worker_key"
        case accountID = "account_id"
    }

    static func load(from data: URL) -> UpState? {
        guard let bytes = try? Data(contentsOf: data.appending(path: "up.json")) else { return nil }
        return try? JSONDecoder().decode(UpState.self, from: bytes)
    }

    func save(to data: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let file = data.appending(path: "up.json")
        try encoder.encode(self).write(to: file)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file.path)
    }
}

struct Up: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run Kiln on this machine: the server, local CPU workers and the demo model, ready to use.")

    @Option(help: "Folder of the embedded state.") var data: String = ".kiln"
    @Option(help: "Address to listen on.") var host: String = "127.0.0.1"
    @Option(help: "Port to listen on.") var port: Int = 8080
    @Option(help: "The most local CPU workers the fleet controller may run (it starts with one and grows under load).")
    var workers: Int = 4
    @Option(help: "YAML configuration of the server.") var config: String?
    @Option(help: "The model folder to push and promote to production (default: the demo video model).") var model: String?

    func run() async throws {
        let logger = {
            var logger = Logger(label: "kiln")
            logger.logLevel = .warning
            return logger
        }()
        signal(SIGPIPE, SIG_IGN)
        let folder = URL(filePath: data, directoryHint: .isDirectory)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let previous = UpState.load(from: folder)
        let adminKey = ProcessInfo.processInfo.environment["KILN_ADMIN_KEY"] ?? previous?.adminKey ?? KeySecret.generate(scope: .admin)
        var configuration = ServerConfiguration()
        if let config { configuration = try ServerConfiguration.load(yaml: String(contentsOfFile: config, encoding: .utf8), source: config) }
        if configuration.pools.isEmpty {
            configuration.pools = [Self.localPool(max: workers)]
            configuration.clusters["default"] = configuration.clusters["default"] ?? .init(dispatchLimit: configuration.defaultDispatchLimit)
        }
        let server = try await KilnServer.open(
            data: folder, configuration: configuration, adminKey: adminKey, workerProgram: Kiln.program, logger: logger)
        let runtimePath = try RuntimeLocator.find(nil)
        let modelFolder = try model.map { URL(filePath: $0, directoryHint: .isDirectory) } ?? Self.demoModel(near: runtimePath)

        let (ports, portsContinuation) = AsyncStream.makeStream(of: Int.self)
        try await withThrowingTaskGroup(of: Void.self) { group in
            let services = try server.services(host: host, port: port) { portsContinuation.yield($0) }
            group.addTask { try await serve(services, bound: KilnServer.shutdownBound, logger: logger) }
            var iterator = ports.makeAsyncIterator()
            guard let bound = await iterator.next() else { return }
            let url = "http://\(host):\(bound)"
            let admin = try KilnAPIClient(server: url, key: adminKey)
            print("Kiln server on \(url); preparing the demo model and workers …")
            fflush(nil)
            let state = try await Self.bootstrap(admin: admin, url: url, adminKey: adminKey, previous: previous)
            try state.save(to: folder)
            let version = try await ModelPusher(client: admin, platform: "cpu", quiet: true).push(modelFolder, promote: "production")
            let pools = configuration.pools.map { pool in
                "\(pool.spec.name) (\(pool.provider.rawValue), \(pool.spec.minWorkers)–\(pool.spec.maxWorkers) workers)"
            }
            print(
                """

                Kiln is up at \(url)  (state in \(data); Ctrl-C stops it, a second run reuses it)
                  admin key   \(state.adminKey)
                  user key    \(state.userKey)  (account \(state.accountID), tier api)
                  model       \(modelFolder.lastPathComponent): production → \(version.short)
                  workers     \(pools.joined(separator: ", ")): grow under load, shrink when idle (kiln fleet shows them)
                  dashboard   \(url)/dashboard  (sign in with the admin key; kiln top shows the same in a terminal)

                Try, from this folder in another terminal:
                  kiln generate --model demo-video --prompt "a red kiln at dusk" --out kiln.mp4
                  kiln generate --model demo-video --prompt "make it snow at night" --video kiln.mp4 --out snow.mp4
                  kiln jobs list

                """)
            fflush(nil)
            try await group.waitForAll()
        }
    }

    /// The pool `kiln up` runs when its configuration names none: local CPU workers, one at least,
    /// `max` at most, shrinking after a minute without the work for them.
    static func localPool(max: Int) -> ServerConfiguration.Pool {
        ServerConfiguration.Pool(
            provider: .local,
            spec: CapacityPool(
                name: "local", cluster: "default", accelerator: "cpu", gpusPerWorker: 0, minWorkers: 1, maxWorkers: Swift.max(1, max),
                cooldownSeconds: 60, drainGraceSeconds: 600))
    }

    /// Keys and the demo account, created once and reused while they still work.
    static func bootstrap(admin: KilnAPIClient, url: String, adminKey: String, previous: UpState?) async throws -> UpState {
        if var previous {
            let user = try KilnAPIClient(server: url, key: previous.userKey)
            if (try? await user { try await $0.listGenerations(query: .init(limit: 1)).ok }) != nil {
                previous.url = url
                previous.adminKey = adminKey
                return previous
            }
        }
        let account = try await admin {
            try await $0.createAccount(body: .json(.init(name: "demo", tier: "api"))).created.body.json
        }
        let user = try await admin { try await $0.createAccountKey(path: .init(id: account.id)).created.body.json }
        let worker = try await admin { try await $0.createKey(body: .json(.init(scope: .worker))).created.body.json }
        return UpState(url: url, adminKey: adminKey, userKey: user.key, workerKey: worker.key, accountID: account.id)
    }

    /// `examples/models/demo-video` of the checkout this program was built in.
    static func demoModel(near runtimePath: URL) throws -> URL {
        let folder = runtimePath.deletingLastPathComponent().appending(path: "examples/models/demo-video")
        guard FileManager.default.fileExists(atPath: folder.appending(path: "kiln.yaml").path) else {
            throw ValidationError("cannot find examples/models/demo-video; pass --model FOLDER")
        }
        return folder
    }
}
