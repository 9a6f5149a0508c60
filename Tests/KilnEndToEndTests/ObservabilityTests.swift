import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import KilnAPI
import KilnCore
import Testing

@Suite("Observability: structured logs, worker metrics")
struct ObservabilityTests {
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

    @Test("kiln worker --metrics-port serves what ran on it, by model, version and outcome")
    func workerMetrics() async throws {
        let cluster = try await LocalCluster.start()
        do {
            let version = try await cluster.pushProbe()
            let port = try Self.freePort()
            try cluster.startWorker("a", arguments: ["--metrics-port", "\(port)", "--metrics-host", "127.0.0.1"])
            for seconds in [0.0, 0.2] {
                let job = try await cluster.submit(["seconds": .number(seconds)], model: "probe")
                let done = try await cluster.waitFor(job.id) { $0.state.isFinal }
                #expect(done.state == .succeeded, "\(cluster.workerLogs())")
            }
            let text = try LocalCluster.run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(port)/metrics"])
            let samples = Dictionary(
                text.split(separator: "\n").filter { !$0.hasPrefix("#") }.compactMap { line -> (String, Double)? in
                    guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { return nil }
                    return (String(line[..<space]), value)
                }, uniquingKeysWith: { $1 })
            let short = version.short
            #expect(samples[#"kiln_worker_runs_total{model="probe",version="\#(short)",outcome="succeeded"}"#] == 2, "\(text)")
            #expect(samples[#"kiln_worker_run_seconds_count{model="probe"}"#] == 2)
            #expect((samples[#"kiln_worker_run_seconds_sum{model="probe"}"#] ?? 0) >= 0.2, "the second job ran 0.2 s")
            #expect(samples[#"kiln_worker_setup_seconds_count{model="probe"}"#] == 1, "one runtime set up, then kept")
            #expect((samples[#"kiln_worker_prepare_seconds_count{model="probe"}"#] ?? 0) >= 2)
            #expect(samples[#"kiln_worker_gpus{state="busy"}"#] == 0)
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    /// A port nothing listens on now (the kernel's pick, released).
    static func freePort() throws -> Int {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    @Test("kiln top under a pseudo-terminal shows every tier with its queue and share of promise, refreshing in place")
    func top() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushProbe()
            for _ in 0..<3 { _ = try await cluster.submit([:], model: "probe") }  // no worker: they stay queued
            let kiln = LocalCluster.repository.appending(path: ".build/debug/kiln").path
            let command = "\(kiln) top --interval 0.5 --server \(cluster.url) --key \(LocalCluster.adminKey)"
            // `script` gives the command a pseudo-terminal; `timeout` ends it after a few refreshes
            // (12 s: a debug build started beside the rest of the suite on two cores can take most of
            // 5 s to show its first view). Its input must stay open (at end of input `script` ends at
            // once): a pipe never written.
            let process = Process()
            process.executableURL = URL(filePath: "/usr/bin/timeout")
            process.arguments = ["12", "/usr/bin/script", "-qfc", command, "/dev/null"]
            let input = Pipe()
            let output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            try process.run()
            let screen = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            try? input.fileHandleForWriting.close()
            for tier in ["enterprise", "api", "unlimited", "light", "free"] { #expect(screen.contains(tier), "\(screen)") }
            #expect(screen.contains("\u{1B}[2J"), "a terminal gets the view in place")
            #expect(screen.components(separatedBy: "kiln top ").count > 2, "it refreshed")
            let line = try #require(screen.split(whereSeparator: \.isNewline).first { $0.hasPrefix("api ") }, "\(screen)")
            #expect(line.split(separator: " ").contains("3"), "three api jobs queued: \(line)")

            let once = try LocalCluster.run(kiln, ["top", "--once", "--server", cluster.url, "--key", LocalCluster.adminKey])
            #expect(!once.contains("\u{1B}[") && once.contains("enterprise"), "a pipe gets plain lines, once")
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }
}
