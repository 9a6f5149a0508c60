import Foundation
import KilnAPI
import KilnCore
import Testing

/// `kiln up` as a newcomer runs it: the real program, its default local pool of workers.
@Suite("kiln up: the local pool grows and shrinks", .serialized)
struct UpTests {
    @Test("queued work grows kiln up's local workers beyond the one it starts with; a minute after, the pool is back to one")
    func localPoolUnderKilnUp() async throws {
        let folder = FileManager.default.temporaryDirectory.appending(path: "kiln-up-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let log = folder.appending(path: "up.log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let up = Process()
        up.executableURL = LocalCluster.repository.appending(path: ".build/debug/kiln")
        up.currentDirectoryURL = folder
        // Its default pool (1 to 3 workers here, a minute's cool-down); only the tick is quicker.
        try Data("fleet: {tick_seconds: 1}\n".utf8).write(to: folder.appending(path: "kiln.yaml"))
        up.arguments = ["up", "--data", folder.appending(path: ".kiln").path, "--port", "0", "--workers", "3", "--config", "kiln.yaml"]
        var environment = ProcessInfo.processInfo.environment
        environment["KILN_ADMIN_KEY"] = nil
        up.environment = environment
        let handle = try FileHandle(forWritingTo: log)
        up.standardOutput = handle
        up.standardError = handle
        try up.run()
        defer {
            if up.isRunning { kill(up.processIdentifier, SIGKILL) }
        }
        func output() -> String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
        try await until("kiln up is up", seconds: 300) { output().contains("Kiln is up at") }
        let state = try JSONDecoder().decode(UpState.self, from: Data(contentsOf: folder.appending(path: ".kiln/up.json")))
        #expect(output().contains("dashboard   \(state.url)/dashboard"), "kiln up names the dashboard")
        let admin = try KilnAPIClient(server: state.url, key: state.adminKey)
        let user = try KilnAPIClient(server: state.url, key: state.userKey)
        let fleet = { try await admin { try await $0.getFleet().ok.body.json } }
        #expect(try await fleet().pools.map(\.name) == ["local"])

        var ids: [String] = []
        for index in 0..<8 {
            let request = Components.Schemas.CreateGenerationRequest(
                model: "demo-video",
                input: .init(additionalProperties: try .init(["prompt": .string("up \(index)"), "num_frames": .number(24)])))
            ids.append(try await user { try await $0.createGeneration(body: .json(request)).created.body.json }.id)
        }
        var grown = 0
        try await until("the generations end", seconds: 240) {
            grown = max(grown, try await fleet().workers.count)
            for id in ids where !(try await user { try await $0.getGeneration(path: .init(id: id)).ok.body.json }).state.isFinal {
                return false
            }
            return true
        }
        let decisions = try await fleet().decisions.map(\.action)
        #expect(grown >= 2, "the pool grew: \(decisions) \(output())")
        for id in ids {
            #expect(try await user { try await $0.getGeneration(path: .init(id: id)).ok.body.json }.state == .succeeded)
        }
        try await until("the pool is back to one worker after the minute's cool-down", seconds: 240) {
            let view = try await fleet()
            return view.pools.first?.desired == 1 && view.workers.count == 1
        }
        let workers = try await admin { try await $0.listWorkers().ok.body.json.data }
        #expect(workers.filter { $0.state == .active }.count == 1)
        #expect(workers.filter { $0.state == .retired }.count == grown - 1)

        // Ctrl-C: the workers drain and kiln up ends.
        up.interrupt()
        try await until("kiln up stops", seconds: 90) { !up.isRunning }
    }

    /// The part of `up.json` this test reads.
    struct UpState: Decodable {
        var url: String
        var adminKey: String
        var userKey: String

        enum CodingKeys: String, CodingKey {
            case url
            case adminKey = "admin_key"
            case userKey = "user_key"
        }
    }

    /// Polls until `condition` holds (at most `seconds`: a bound against hanging, not a timing test).
    private func until(_ what: String, seconds: Double, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while try await !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("\(what): not after \(Int(seconds)) s")
                throw CancellationError()
            }
            try await Task.sleep(for: .milliseconds(500))
        }
    }
}
