import AsyncHTTPClient
import Foundation
#if canImport(Glibc)
    import Glibc
#endif
import KilnAPI
import KilnCore
import KilnServer
import NIOCore
import Testing

/// Model code fenced off from the worker, against real `kiln worker` and runtime processes, with
/// the probe model of `Fixtures/probe` reporting what it can see and do.
@Suite("Model runtimes fenced off from their worker", .serialized)
struct RuntimeIsolationTests {
    struct Report: Decodable {
        var mark: String
        var tampered: Bool
        var environment: [String]
        var uid: UInt32
        var code_writable: Bool
        var manifest_writable: Bool
    }

    /// Runs one probe job on `worker` and returns its report.
    static func probe(_ cluster: LocalCluster, input: [String: JSONValue] = [:]) async throws -> Report {
        let job = try await cluster.submit(input, model: "probe")
        let done = try await cluster.waitFor(job.id) { $0.state.isFinal }
        try #require(done.state == .succeeded, "\(done.error?.message ?? "") \(cluster.workerLogs())")
        let output = try #require(done.output.additionalProperties["report"])
        let file = cluster.data.appending(path: "report-\(job.id).json")
        try await cluster.user.transfer { try await $0.downloadFile(path: .init(id: output.fileId)).ok.body.any.write(to: file) }
        return try JSONDecoder().decode(Report.self, from: Data(contentsOf: file))
    }

    /// The processes whose command line holds `marker`.
    static func processes(marked marker: String) -> [Int32] {
        ((try? LocalCluster.run("/usr/bin/pgrep", ["-f", marker])) ?? "").split(separator: "\n").compactMap { Int32($0) }
    }

    @Test("model code sees no KILN_ variable and no other secret of the worker's environment; a variable passed by name it sees")
    func scrubbedEnvironment() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushProbe()
            try cluster.startWorker(
                "a", arguments: ["--runtime-env", "PROBE_PASSED"],
                environment: [
                    "KILN_WORKER_KEY": cluster.workerKey, "KILN_ADMIN_KEY": "not-for-models", "AWS_SECRET_ACCESS_KEY": "not-for-models",
                    "PROBE_PASSED": "1",
                ])
            let report = try await Self.probe(cluster)
            #expect(!report.environment.contains { $0.hasPrefix("KILN_") }, "\(report.environment)")
            #expect(!report.environment.contains("AWS_SECRET_ACCESS_KEY"))
            #expect(report.environment.contains("PROBE_PASSED"))
            #expect(report.environment.contains("PATH"))
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test(
        "with --runtime-user, model code runs unprivileged and can write neither its code nor its version's manifest",
        .enabled(if: geteuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs root and a system python3"))
    func unprivilegedRuntime() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushProbe()
            // The system interpreter: one an unprivileged user can run wherever root's own lives.
            try cluster.startWorker("a", arguments: ["--runtime-user", "nobody", "--python", "/usr/bin/python3"])
            let report = try await Self.probe(cluster)
            let nobody = try #require(getpwnam("nobody")).pointee.pw_uid
            #expect(report.uid == nobody)
            #expect(!report.code_writable, "the cached version is the worker's, read-only to the runtime")
            #expect(!report.manifest_writable)
            #expect(!report.environment.contains { $0.hasPrefix("KILN_") })
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("a job that rewrites its cached code does not change what later runtimes of its version run: the version is fetched again")
    func tamperedCacheIsFetchedAgain() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushProbe()
            let cache = cluster.data.appending(path: "shared-cache")
            try cluster.startWorker("a", cache: cache)
            let tampering = try await Self.probe(cluster, input: ["tamper": .bool(true)])
            #expect(tampering.mark == "original")
            #expect(tampering.tampered, "the worker's own user can rewrite its cache: what the seal is for")
            // A new runtime of the version: a restarted worker on the same cache.
            cluster.signalWorker("a", SIGKILL)
            try cluster.startWorker("b", cache: cache)
            let later = try await Self.probe(cluster)
            #expect(later.mark == "original", "the version runs as it was pushed, not as the job left it")
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("a canceled job takes what the model started with it; one past its time limit too")
    func childrenEndWithTheJob() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushProbe()
            try cluster.startWorker("a", arguments: ["--job-timeout", "4"])
            // Canceled: the runtime ends the job and what the job started.
            let canceledMarker = UUID().uuidString
            let canceled = try await cluster.submit(["seconds": .number(120), "spawn": .string(canceledMarker)], model: "probe")
            _ = try await cluster.waitFor(canceled.id) { $0.state == .running && $0.progress.fraction > 0 }
            #expect(!Self.processes(marked: "kiln-probe-\(canceledMarker)").isEmpty, "the model started its process")
            _ = try await cluster.user { try await $0.cancelGeneration(path: .init(id: canceled.id)).ok }
            try await until("the canceled job's process is gone") { Self.processes(marked: "kiln-probe-\(canceledMarker)").isEmpty }

            // Past its time limit: the worker kills the runtime's whole process group.
            let slowMarker = UUID().uuidString
            let slow = try await cluster.submit(["seconds": .number(120), "spawn": .string(slowMarker)], model: "probe")
            _ = try await cluster.waitFor(slow.id) { $0.state == .running && $0.progress.fraction > 0 }
            let first = Self.processes(marked: "kiln-probe-\(slowMarker)")
            #expect(!first.isEmpty)
            // Cut at 4 s and retried: the first attempt's process went with its runtime.
            _ = try await cluster.waitFor(slow.id, seconds: 60) { $0.attempts >= 2 || $0.state.isFinal }
            try await until("the timed-out attempt's process is gone") {
                Set(Self.processes(marked: "kiln-probe-\(slowMarker)")).isDisjoint(with: first)
            }
            _ = try? await cluster.user { try await $0.cancelGeneration(path: .init(id: slow.id)).ok }
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("the time limit counts from a job's start: a prefetched job that waited behind another is not cut short")
    func timeLimitFromStart() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushProbe()
            // Two jobs of 4 s under a 6 s limit on one worker: the second is leased at once and waits
            // about 4 s behind the first, 8 s from its lease to its end.
            try cluster.startWorker("single", arguments: ["--job-timeout", "6"])
            let first = try await cluster.submit(["seconds": .number(4)], model: "probe")
            let second = try await cluster.submit(["seconds": .number(4)], model: "probe")
            for id in [first.id, second.id] {
                let done = try await cluster.waitFor(id, seconds: 120) { $0.state.isFinal }
                #expect(done.state == .succeeded, "\(done.error?.message ?? "") \(cluster.workerLogs())")
                #expect(done.attempts == 1, "not cut short and retried")
            }
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

}

@Suite("Connections")
struct ConnectionTests {
    /// A TCP connection to `port` on loopback that sent `text`; a read waits at most `seconds`.
    static func connect(port: Int, sending text: String, readTimeout seconds: Int) throws -> Int32 {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw KilnError(.unavailable, "cannot connect to port \(port)") }
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        _ = text.withCString { send(socket, $0, strlen($0), 0) }
        return socket
    }

    @Test("a JSON body past the limit is answered 413 with Connection: close, and the connection closed though the client still sends")
    func oversizedBodyClosesTheConnection() async throws {
        let cluster = try await LocalCluster.start()
        do {
            let port = try #require(URL(string: cluster.url)?.port)
            // 64 MiB announced, 2 MiB sent, and the client would go on sending: it never reads the
            // body's end, so only the server can end this connection before the 90 s idle timeout.
            let head =
                "POST /v1/admin/accounts HTTP/1.1\r\nHost: kiln\r\nAuthorization: Bearer \(LocalCluster.adminKey)\r\n"
                + "Content-Type: application/json\r\nContent-Length: \(64 << 20)\r\n\r\n"
            let socket = try Self.connect(port: port, sending: head, readTimeout: 30)
            defer { close(socket) }
            let chunk = [UInt8](repeating: UInt8(ascii: " "), count: 2 << 20)
            #expect(chunk.withUnsafeBytes { send(socket, $0.baseAddress, $0.count, 0) } == chunk.count)
            var answer = [UInt8](repeating: 0, count: 4096)
            let read = recv(socket, &answer, answer.count, 0)
            let text = String(decoding: answer.prefix(max(read, 0)), as: UTF8.self).lowercased()
            #expect(text.hasPrefix("http/1.1 413"), "\(text)")
            #expect(text.contains("connection: close"), "\(text)")
            // Then the server closes it: a read returns 0 (or the reset of a close with unread bytes),
            // not the 30 s read timeout.
            var rest = [UInt8](repeating: 0, count: 4096)
            var ended: Int = 1
            while ended > 0 { ended = recv(socket, &rest, rest.count, 0) }
            #expect(ended == 0 || errno == ECONNRESET, "closed by the server (recv: \(ended), errno \(errno))")
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }

    @Test("a connection holding a request head it never finishes is closed after the idle timeout; a long poll is not cut by it")
    func idleConnectionsClose() async throws {
        let cluster = try await LocalCluster.start { $0.limits.idleTimeoutSeconds = 2 }
        do {
            let port = try #require(URL(string: cluster.url)?.port)
            // Half a header, and then nothing: the server closes it (a read returns 0) well before
            // the read's own 15 s bound.
            let socket = try Self.connect(port: port, sending: "GET /v1/models HTTP/1.1\r\nHost: kiln\r\n", readTimeout: 15)
            defer { close(socket) }
            var byte: UInt8 = 0
            let read = recv(socket, &byte, 1, 0)
            #expect(read == 0, "closed by the server (recv: \(read), errno \(errno))")
            // A long poll of 6 s, three idle timeouts long, is answered, not cut.
            // A client whose pool drops idle connections before the server's 2 s timeout.
            let http = HTTPClient(
                eventLoopGroupProvider: .singleton, configuration: .init(connectionPool: .init(idleTimeout: .milliseconds(300))))
            defer { _ = http.shutdown() }
            let worker = try KilnAPIClient(server: cluster.url, key: cluster.workerKey, http: http)
            /// Runs `call`, up to twice more when it was refused sooner than the idle timeout after
            /// being sent: that is a connection the server closed for idleness as a stalled machine
            /// (two cores running the whole suite) sent the request on it, not a request cut by the
            /// timeout, which cannot come sooner. A long poll cut at or past the timeout still fails.
            func sent<T: Sendable>(_ call: @escaping @Sendable (Client) async throws -> T) async throws -> T {
                for _ in 0..<2 {
                    let began = ContinuousClock.now
                    do {
                        return try await worker(call)
                    } catch let error as KilnError where error.code == .unavailable && began.duration(to: .now) < .milliseconds(1_500) {
                        continue
                    }
                }
                return try await worker(call)
            }
            let id = try await sent {
                try await $0.registerWorker(body: .json(.init(cluster: "default", accelerator: "cpu", gpus: 0))).created.body.json.id
            }
            let poll = try await sent { try await $0.leaseJob(path: .init(id: id), body: .json(.init(waitSeconds: 6))) }
            if case .noContent = poll {} else { Issue.record("the long poll was not answered with 204: \(poll)") }
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }
}
