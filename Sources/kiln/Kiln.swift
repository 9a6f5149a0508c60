import ArgumentParser
import Foundation
import KilnCore
import KilnServer
import Logging

@main
struct Kiln: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kiln",
        abstract: "Serve generative video models on a fleet of GPU workers.",
        subcommands: [Up.self, Server.self, Worker.self, Generate.self, Jobs.self, Models.self, Fleet.self, Top.self, Simulate.self])

    /// This program, which `local` capacity pools start as `kiln worker`.
    static var program: URL { Bundle.main.executableURL ?? URL(filePath: CommandLine.arguments[0]) }
}

struct Server: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the control plane: the public, admin and worker APIs, the scheduler, the lease reaper and the fleet controller.")

    @Option(help: "Folder of the embedded state (SQLite database and objects).")
    var data: String = ".kiln"

    @Option(
        help: "The store instead of the embedded one: postgres://user:password@host:port/database, or sqlite:PATH (default: $KILN_DATABASE).")
    var database: String?

    @Option(
        help: "The object store instead of DATA/objects: s3://bucket/prefix?endpoint=URL (credentials from AWS_* variables), or a folder (default: $KILN_OBJECTS).")
    var objects: String?

    @Option(help: "Address to listen on.")
    var host: String = "127.0.0.1"

    @Option(help: "Port to listen on (0 picks a free one).")
    var port: Int = 8080

    @Option(help: "YAML configuration: tiers, clusters and their pools, fleet, leases, limits, scheduler, replicas.")
    var config: String?

    @Option(
        name: .customLong("advertise-url"),
        help: "With replicas.enabled: where the other servers on the same store reach this one (default http://HOST:PORT).")
    var advertiseURL: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "Log format: text, or json (one object per line on standard error).")
    var logFormat: LogFormat = .text

    func run() async throws {
        logFormat.bootstrap()
        var logger = Logger(label: "kiln")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var configuration = ServerConfiguration()
        if let config {
            let text: String
            do {
                text = try String(contentsOfFile: config, encoding: .utf8)
            } catch {
                throw ValidationError("cannot read --config \(config): \(error.localizedDescription)")
            }
            do {
                configuration = try ServerConfiguration.load(yaml: text, source: config)
            } catch let error as KilnError {
                throw ValidationError(error.message)
            }
        }
        let environment = ProcessInfo.processInfo.environment
        let adminKey = environment["KILN_ADMIN_KEY"]
        let server: KilnServer
        do {
            server = try await KilnServer.open(
                data: URL(filePath: data, directoryHint: .isDirectory), database: database ?? environment["KILN_DATABASE"],
                objects: objects ?? environment["KILN_OBJECTS"], configuration: configuration,
                adminKey: adminKey, workerProgram: Kiln.program, logger: logger)
        } catch let error as KilnError where error.code == .invalidInput {
            throw ValidationError(error.message)
        }
        let services = try server.services(host: host, port: port, advertiseURL: advertiseURL) { port in
            print("kiln server listening on http://\(host):\(port) (data: \(data))")
            if adminKey == nil { print("no KILN_ADMIN_KEY set: the admin API accepts admin keys only") }
            fflush(nil)  // a supervisor reading a pipe learns the port now, not at exit
        }
        do {
            try await serve(services, bound: KilnServer.shutdownBound, logger: logger)
        } catch {
            await server.close()
            throw error
        }
        await server.close()
    }
}
