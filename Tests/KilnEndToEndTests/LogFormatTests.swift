import Foundation
import KilnAPI
import KilnCore
import Testing

@Suite("Structured logs")
struct LogFormatTests {
    @Test("kiln server --log-format json writes one JSON object per line, with the ids of what it tells of")
    func jsonLines() async throws {
        let data = FileManager.default.temporaryDirectory.appending(path: "kiln-logs-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: data) }
        let process = Process()
        process.executableURL = LocalCluster.repository.appending(path: ".build/debug/kiln")
        process.arguments = ["server", "--data", data.path, "--port", "0", "--log-format", "json", "--log-level", "info"]
        process.environment = ProcessInfo.processInfo.environment.merging(["KILN_ADMIN_KEY": "logs-admin"]) { $1 }
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        var line = Data()
        while let byte = try output.fileHandleForReading.read(upToCount: 1), let first = byte.first, first != UInt8(ascii: "\n") {
            line.append(first)
        }
        let text = String(decoding: line, as: UTF8.self)
        let url = try #require(text.split(separator: " ").first { $0.hasPrefix("http://") }.map(String.init), "\(text)")

        let admin = try KilnAPIClient(server: url, key: "logs-admin")
        let key = try await admin { try await $0.createKey(body: .json(.init(scope: .worker))).created.body.json.key }
        let worker = try KilnAPIClient(server: url, key: key)
        let id = try await worker {
            try await $0.registerWorker(body: .json(.init(cluster: "logs", accelerator: "cpu", gpus: 0))).created.body.json.id
        }
        process.terminate()
        let logged = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let lines = logged.split(separator: "\n")
        #expect(!lines.isEmpty)
        var registered: [String: Any]?
        for line in lines {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(line)")
            #expect(object["time"] is String && object["level"] is String && object["logger"] is String && object["message"] is String)
            if object["message"] as? String == "worker registered" { registered = object }
        }
        #expect(registered?["worker"] as? String == id, "\(logged)")
        #expect(registered?["cluster"] as? String == "logs")
        #expect(registered?["level"] as? String == "info")
    }
}
