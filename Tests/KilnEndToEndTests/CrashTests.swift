import Foundation
import KilnAPI
import KilnCore
import KilnStore
import OpenAPIRuntime
import Testing

/// `kill -9` of the control plane in the middle of a run: DESIGN §8's "killing any process at any
/// moment loses no accepted job and completes none twice", checked against the store afterwards.
/// Part of the serialized end-to-end suite, so that it never shares the machine with worker processes.
extension EndToEndTests {
    static let crashJobs = 10_000

    /// A `kiln server` process on a data folder, restartable on the same port.
    final class ServerProcess: @unchecked Sendable {
        let data: URL
        let config: URL
        private(set) var port = 0
        private var process: Process?

        init() throws {
            data = FileManager.default.temporaryDirectory.appending(path: "kiln-crash-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
            config = data.appending(path: "kiln.yaml")
            // Short leases, so that jobs held across the crash come back quickly; attempts to spare;
            // one api account submits all the jobs, past its default cap; webhook receivers on loopback.
            try Data(
                """
                leases: {ttl_seconds: 3, max_attempts: 20}
                tiers: {api: {max_wait_seconds: 120, max_queued_per_account: 100000, max_running_per_account: 100000}}
                webhooks: {allow_private_urls: true}

                """.utf8
            ).write(to: config)
        }

        var url: String { "http://127.0.0.1:\(port)" }

        func start() async throws {
            let process = Process()
            process.executableURL = LocalCluster.repository.appending(path: ".build/debug/kiln")
            process.arguments = [
                "server", "--data", data.appending(path: "state").path, "--port", "\(port)", "--config", config.path,
                "--log-level", "error",
            ]
            process.environment = ProcessInfo.processInfo.environment.merging(["KILN_ADMIN_KEY": "crash-admin"]) { $1 }
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            self.process = process
            // The first line names the port it listens on.
            var line = Data()
            while let byte = try pipe.fileHandleForReading.read(upToCount: 1), let first = byte.first, first != UInt8(ascii: "\n") {
                line.append(first)
            }
            let text = String(decoding: line, as: UTF8.self)
            guard let range = text.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression),
                let bound = Int(text[range].split(separator: ":").last ?? "")
            else { throw KilnError(.internal, "the server did not say its port: '\(text)'") }
            port = bound
        }

        func kill9() {
            guard let process else { return }
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }

        func stop() {
            guard let process, process.isRunning else { return }
            process.terminate()
            process.waitUntilExit()
        }

        /// The model `noop` (no versions: any input), an api account and a worker key: the
        /// account's id, the clients, and the raw keys for callers other than the generated client.
        func seed() async throws -> (account: String, user: KilnAPIClient, userKey: String, worker: KilnAPIClient, workerKey: String) {
            let admin = try KilnAPIClient(server: url, key: "crash-admin")
            _ = try await admin { try await $0.createModel(body: .json(.init(name: "noop"))).created }
            let account = try await admin { try await $0.createAccount(body: .json(.init(name: "crash", tier: "api"))).created.body.json }
            let userKey = try await admin { try await $0.createAccountKey(path: .init(id: account.id)).created.body.json.key }
            let workerKey = try await admin { try await $0.createKey(body: .json(.init(scope: .worker))).created.body.json.key }
            return (
                account.id, try KilnAPIClient(server: url, key: userKey), userKey, try KilnAPIClient(server: url, key: workerKey), workerKey
            )
        }

        /// Sends SIGTERM and waits at most `seconds` for the process to exit.
        /// - Returns: whether it exited.
        func terminate(waiting seconds: Double) async -> Bool {
            guard let process else { return true }
            process.terminate()
            let deadline = ContinuousClock.now + .seconds(seconds)
            while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(100)) }
            return !process.isRunning
        }
    }

    /// A webhook receiver in Python on loopback: each request's `webhook-id` appended to a file,
    /// answered with the next of `statuses`, then 200.
    final class Receiver: @unchecked Sendable {
        let process = Process()
        /// The receiver lives until this closes: even a test that crashes leaves none behind.
        let input = Pipe()
        let log: URL
        let url: String

        init(statuses: [Int]) throws {
            log = FileManager.default.temporaryDirectory.appending(path: "kiln-receiver-\(UUID().uuidString).log")
            let script = """
                import http.server, sys, threading
                statuses = [int(s) for s in sys.argv[2].split(",") if s]
                class Handler(http.server.BaseHTTPRequestHandler):
                    def do_POST(self):
                        self.rfile.read(int(self.headers["Content-Length"]))
                        with open(sys.argv[1], "a") as log:
                            log.write(self.headers["webhook-id"] + "\\n")
                        self.send_response(statuses.pop(0) if statuses else 200)
                        self.end_headers()
                    def log_message(self, *arguments):
                        pass
                server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
                threading.Thread(target=server.serve_forever, daemon=True).start()
                print(server.server_address[1], flush=True)
                sys.stdin.read()  # until the test closes it, or ends
                """
            process.executableURL = URL(filePath: "/usr/bin/env")
            process.arguments = ["python3", "-c", script, log.path, statuses.map(String.init).joined(separator: ",")]
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardInput = input
            process.standardError = FileHandle.nullDevice
            try process.run()
            var line = Data()
            while let byte = try pipe.fileHandleForReading.read(upToCount: 1), let first = byte.first, first != UInt8(ascii: "\n") {
                line.append(first)
            }
            url = "http://127.0.0.1:\(String(decoding: line, as: UTF8.self))/hook"
        }

        /// The `webhook-id` of each request so far.
        var received: [String] {
            ((try? String(contentsOf: log, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }

        func stop() {
            try? input.fileHandleForWriting.close()
            try? FileManager.default.removeItem(at: log)
        }
    }

    @Test("a webhook in its backoff when the server is killed is delivered after the restart, under the same id")
    func webhookResumesAfterRestart() async throws {
        let receiver = try Receiver(statuses: [500])
        let server = try ServerProcess()
        try await server.start()
        defer {
            server.kill9()
            receiver.stop()
            try? FileManager.default.removeItem(at: server.data)
        }
        let (_, user, _, _, _) = try await server.seed()
        let generation = try await user {
            try await $0.createGeneration(body: .json(.init(model: "noop", input: .init(), callbackUrl: receiver.url))).created.body.json.id
        }
        _ = try await user { try await $0.cancelGeneration(path: .init(id: generation)).ok }
        try await until("the first attempt arrives", seconds: 20) { receiver.received.count >= 1 }
        // Its 500 puts the delivery in backoff (about 5 s); the server dies in it.
        server.kill9()
        try await server.start()
        try await until("the retry arrives from the restarted server", seconds: 30) { receiver.received.count >= 2 }
        let received = receiver.received
        #expect(received.count == 2 && Set(received).count == 1, "one delivery, two attempts: \(received)")
        func deliveries() async throws -> [Components.Schemas.DeliveryObject] {
            try await user { try await $0.listGenerationDeliveries(path: .init(id: generation)).ok.body.json.data }
        }
        try await until("the second attempt is recorded", seconds: 10) { try await deliveries().first?.state == .delivered }
        let deliveries = try await deliveries()
        #expect(deliveries.count == 1)
        #expect(deliveries.first?.state == .delivered)
        #expect(deliveries.first?.attempts.map(\.status) == [500, 200])
    }

    /// A `curl` of `path` on `server`, left running; its output collected.
    static func curl(_ server: ServerProcess, _ path: String, key: String, body: String? = nil) throws -> (Process, Pipe) {
        let process = Process()
        process.executableURL = URL(filePath: "/usr/bin/curl")
        var arguments = ["-sN", "-o", "-", "-w", "\n%{http_code}", "-H", "Authorization: Bearer \(key)"]
        if let body { arguments += ["-H", "Content-Type: application/json", "-d", body] }
        process.arguments = arguments + [server.url + path]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        return (process, pipe)
    }

    @Test("three outages longer than the lease TTL fail no job: its worker re-attaches with its token each time")
    func outagesLongerThanTheTTL() async throws {
        let server = try ServerProcess()  // leases of 3 s
        try await server.start()
        defer {
            server.kill9()
            try? FileManager.default.removeItem(at: server.data)
        }
        let (_, user, _, worker, _) = try await server.seed()
        let generation = try await user {
            try await $0.createGeneration(body: .json(.init(model: "noop", input: .init()))).created.body.json.id
        }
        let id = try await worker {
            try await $0.registerWorker(body: .json(.init(cluster: "default", accelerator: "cpu", gpus: 0))).created.body.json.id
        }
        let lease = try await worker { try await $0.leaseJob(path: .init(id: id), body: .json(.init(waitSeconds: 0))).ok.body.json }
        let token = lease.lease.token
        _ = try await worker { try await $0.startJob(path: .init(id: id, job: generation), body: .json(.init(token: token))).ok }
        for outage in 1...3 {
            // Down (killed, as a crash would) for longer than the TTL, while the job runs on.
            server.kill9()
            try await Task.sleep(for: .seconds(4))
            try await server.start()
            // The reaper runs every second: give it its chance at the lapsed lease first.
            try await Task.sleep(for: .milliseconds(1_500))
            let beat = try await worker {
                try await $0.heartbeatJob(
                    path: .init(id: id, job: generation), body: .json(.init(token: token, progress: .init(fraction: Double(outage) / 4, stage: "")))
                ).ok.body.json
            }
            #expect(!beat.cancel, "outage \(outage): the lease holds")
        }
        _ = try await worker {
            try await $0.completeJob(path: .init(id: id, job: generation), body: .json(.init(token: token, outputs: []))).noContent
        }
        let done = try await user { try await $0.getGeneration(path: .init(id: generation)).ok.body.json }
        #expect(done.state == .succeeded)
        #expect(done.attempts == 1, "no attempt charged to the outages")
    }

    @Test("SIGTERM with an event stream and a minute's long poll open: both are answered, and the server exits")
    func shutdownClosesStreamsAndPolls() async throws {
        let server = try ServerProcess()
        try await server.start()
        defer {
            server.kill9()
            try? FileManager.default.removeItem(at: server.data)
        }
        let (_, user, userKey, worker, workerKey) = try await server.seed()
        let generation = try await user {
            try await $0.createGeneration(body: .json(.init(model: "noop", input: .init()))).created.body.json.id
        }
        // One worker holds the generation, so it stays running; a second waits for work.
        func register() async throws -> String {
            try await worker {
                try await $0.registerWorker(body: .json(.init(cluster: "default", accelerator: "cpu", gpus: 0))).created.body.json.id
            }
        }
        let holder = try await register()
        _ = try await worker { try await $0.leaseJob(path: .init(id: holder), body: .json(.init(waitSeconds: 0))).ok }
        let idle = try await register()
        let (stream, streamOutput) = try Self.curl(server, "/v1/generations/\(generation)/events", key: userKey)
        let (poll, pollOutput) = try Self.curl(server, "/v1/workers/\(idle)/lease", key: workerKey, body: #"{"wait_seconds": 60}"#)
        try await Task.sleep(for: .seconds(1))
        #expect(stream.isRunning && poll.isRunning, "both are open")

        // Bounded only against hanging: the server would otherwise wait out both.
        let exited = await server.terminate(waiting: 20)
        #expect(exited, "the server exits")
        if !exited { server.kill9() }
        stream.waitUntilExit()
        poll.waitUntilExit()
        let streamed = String(decoding: streamOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(streamed.contains("event: leased"), "the stream sent what there was: \(streamed)")
        #expect(streamed.hasSuffix("\n200"), "and ended cleanly: \(streamed.suffix(40))")
        let polled = String(decoding: pollOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(polled.hasSuffix("204"), "the long poll is answered with nothing: \(polled)")
    }

    /// Acknowledgements the clients received.
    actor Acknowledged {
        var submissions: [String: String] = [:]  // idempotency key → generation id
        var completions: Set<String> = []
        var completedCount: Int { completions.count }
        var submittedCount: Int { submissions.count }
        func submitted(_ key: String, _ id: String) { submissions[key] = id }
        func completed(_ id: String) { completions.insert(id) }
        /// Set once every job is acknowledged and none is queued or running: a completion whose
        /// answer the crash cut off is applied but never acknowledged, so counting answers alone
        /// would wait for ever.
        var finished = false
        func finish() { finished = true }
    }

    @Test(
        "kill -9 mid-run: every acknowledged submission and completion survives, none is applied twice",
        .timeLimit(.minutes(10)))
    func killDuringRun() async throws {
        let server = try ServerProcess()
        try await server.start()
        defer {
            server.stop()
            try? FileManager.default.removeItem(at: server.data)
        }
        let (account, user, _, worker, _) = try await server.seed()
        let acknowledged = Acknowledged()

        try await withThrowingTaskGroup(of: Void.self) { group in
            // Submitters: each job under its own idempotency key, retried until acknowledged.
            for lane in 0..<4 {
                group.addTask {
                    for index in stride(from: lane, to: Self.crashJobs, by: 4) {
                        let key = "job-\(index)"
                        while true {
                            do {
                                let created = try await user(timeout: .seconds(10)) {
                                    switch try await $0.createGeneration(
                                        headers: .init(idempotencyKey: key), body: .json(.init(model: "noop", input: .init())))
                                    {
                                    case .created(let created): return try created.body.json.id
                                    case .ok(let again): return try again.body.json.id
                                    default: throw KilnError(.internal, "unexpected answer to a submission")
                                    }
                                }
                                await acknowledged.submitted(key, created)
                                break
                            } catch {
                                try await Task.sleep(for: .milliseconds(50))
                            }
                        }
                    }
                }
            }
            // Workers: lease, start, complete; any failure drops the job, which the lease rules bring back.
            for _ in 0..<4 {
                group.addTask {
                    var id: String?
                    while await !acknowledged.finished {
                        do {
                            if id == nil {
                                id = try await worker {
                                    try await $0.registerWorker(body: .json(.init(cluster: "default", accelerator: "cpu", gpus: 0)))
                                        .created.body.json.id
                                }
                            }
                            let current = id!
                            let leased = try await worker(timeout: .seconds(10)) {
                                try await $0.leaseJob(path: .init(id: current), body: .json(.init(waitSeconds: 1)))
                            }
                            guard case .ok(let answer) = leased else { continue }
                            let lease = try answer.body.json
                            let (job, token) = (lease.job.id, lease.lease.token)
                            _ = try await worker(timeout: .seconds(10)) {
                                try await $0.startJob(path: .init(id: current, job: job), body: .json(.init(token: token))).ok
                            }
                            _ = try await worker(timeout: .seconds(10)) {
                                try await $0.completeJob(path: .init(id: current, job: job), body: .json(.init(token: token, outputs: [])))
                                    .noContent
                            }
                            await acknowledged.completed(job)
                        } catch {
                            try await Task.sleep(for: .milliseconds(50))
                        }
                    }
                }
            }
            // The end: every submission acknowledged, and nothing left queued or running.
            group.addTask {
                while true {
                    try await Task.sleep(for: .milliseconds(500))
                    guard await acknowledged.submittedCount == Self.crashJobs else { continue }
                    let open = try? await user(timeout: .seconds(10)) { client in
                        var count = 0
                        for state in [Components.Schemas.GenerationState.queued, .running] {
                            count += try await client.listGenerations(query: .init(state: state, limit: 1)).ok.body.json.data.count
                        }
                        return count
                    }
                    if open == 0 {
                        await acknowledged.finish()
                        return
                    }
                }
            }
            // The crash: kill -9 once a third of the jobs are in, then start again on the same folder.
            group.addTask {
                while await acknowledged.submittedCount < Self.crashJobs / 3 { try await Task.sleep(for: .milliseconds(20)) }
                server.kill9()
                try await server.start()
            }
            try await group.waitForAll()
        }
        server.stop()

        // The store after it all: one generation per key, each succeeded exactly once.
        let store = try SQLiteJobStore(path: server.data.appending(path: "state/kiln.sqlite").path)
        let submissions = await acknowledged.submissions
        #expect(submissions.count == Self.crashJobs)
        #expect(Set(submissions.values).count == Self.crashJobs, "a retried submission created a second generation")
        let accountID = try #require(AccountID(rawValue: account))
        var stored: [Generation] = []
        var before: Int64?
        while true {
            let page = try await store.generations(of: accountID, state: nil, limit: 1_000, before: before)
            stored += page
            guard let last = page.last, page.count == 1_000 else { break }
            before = last.sequence
        }
        #expect(stored.count == Self.crashJobs, "no acknowledged job lost, no job created twice")
        #expect(Set(stored.map(\.id.rawValue)) == Set(submissions.values))
        for generation in stored {
            #expect(generation.state == .succeeded, "\(generation.id) ended \(generation.state)")
            let events = try await store.events(of: generation.id, after: 0, limit: 1_000)
            #expect(events.filter { $0.kind == .succeeded }.count == 1, "\(generation.id) completed \(events.filter { $0.kind == .succeeded }.count) times")
        }
        let completions = await acknowledged.completions
        #expect(completions.isSubset(of: Set(stored.filter { $0.state == .succeeded }.map(\.id.rawValue))))
    }
}
