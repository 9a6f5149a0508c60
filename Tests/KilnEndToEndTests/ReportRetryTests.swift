import Foundation
import KilnAPI
import KilnCore
import Testing

/// A worker whose server cannot be reached when its job ends (a restart, a change of leader)
/// keeps the job's report until a server takes it, rather than losing the finished work.
@Suite("Worker reports across an outage", .serialized)
struct ReportRetryTests {
    @Test("a job that ends while the worker cannot reach the server succeeds on its first attempt once it can again")
    func completionOutlivesAnOutage() async throws {
        let cluster = try await LocalCluster.start(leaseTTL: 20)
        let proxy = try TCPProxy(to: cluster.url)
        do {
            _ = try await cluster.pushProbe()
            try cluster.startWorker("a", server: proxy.url)
            let job = try await cluster.submit(["seconds": .number(3)], model: "probe")
            _ = try await cluster.waitFor(job.id) { $0.state == .running && $0.progress.fraction > 0 }
            // The worker's one way to the server fails every request while the job runs, and well
            // after it ended (its completion cut off, as by a server killed under it), for less
            // than the lease's 20 s.
            try proxy.cut()
            try await Task.sleep(for: .seconds(7))
            #expect(try await cluster.generation(job.id).state == .running)
            try proxy.restore()
            let done = try await cluster.waitFor(job.id) { $0.state.isFinal }
            #expect(done.state == .succeeded, "\(done.error?.message ?? "") \(cluster.workerLogs())")
            #expect(done.attempts == 1, "the finished job was reported, not run again: \(cluster.workerLogs())")
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        proxy.stop()
        await cluster.stop()
    }
}

extension ReportRetryTests {
    @Test("a client given a dead server and a live one: the call to the dead one fails at once, the next reaches the live one")
    func failoverToTheNextServer() async throws {
        let cluster = try await LocalCluster.start()
        let dead = "http://127.0.0.1:\(try ObservabilityTests.freePort())"
        let client = try KilnAPIClient(server: "\(dead),\(cluster.url)", key: cluster.workerKey)
        do {
            // Refused at once: a client that waited out its connection retries would hit this
            // call's own limit first and say so instead.
            _ = try await client(timeout: .seconds(5)) { try await $0.getHealth().ok }
            Issue.record("a server nothing listens for answered")
        } catch let error as KilnError {
            #expect(error.code == .unavailable)
            #expect(error.message.contains("cannot reach the Kiln server"), "\(error.message)")
        }
        let health = try await client { try await $0.getHealth().ok.body.json }
        #expect(health.role == .leader)
        await cluster.stop()
    }
}

/// A TCP proxy on loopback in a Python process of its own. `cut()` makes it close every connection
/// once the request is in (the client sees the connection closed under its request, as when a
/// server is killed mid-call, at once rather than after its connection retries); `restore()`
/// makes it pass bytes through again.
final class TCPProxy: @unchecked Sendable {
    let port: Int
    let target: Int
    private var process: Process?

    var url: String { "http://127.0.0.1:\(port)" }

    init(to url: String) throws {
        guard let target = URLComponents(string: url)?.port else { throw KilnError(.invalidInput, "no port in \(url)") }
        self.target = target
        port = try ObservabilityTests.freePort()
        try start(mode: "pass")
    }

    static let script = """
        import asyncio, sys
        async def pipe(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()
        async def serve(reader, writer):
            if sys.argv[3] == "cut":
                await reader.read(65536)
                writer.close()
                return
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)
        async def main():
            server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), reuse_address=True)
            print("ready", flush=True)
            await server.serve_forever()
        asyncio.run(main())
        """

    func cut() throws { try start(mode: "cut") }

    func restore() throws { try start(mode: "pass") }

    private func start(mode: String) throws {
        stop()
        let process = Process()
        process.executableURL = URL(filePath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.script, String(port), String(target), mode]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        // Listening once it says so.
        _ = try output.fileHandleForReading.read(upToCount: 6)
        self.process = process
    }

    func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
