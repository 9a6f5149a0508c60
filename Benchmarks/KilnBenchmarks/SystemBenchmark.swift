import AsyncHTTPClient
import Foundation
import KilnAPI
import KilnCore
import KilnServer
import Logging
import NIOCore
import NIOHTTP1

/// (b) The whole system over HTTP: `jobs` no-op generations submitted by `submitters` concurrent
/// clients and drained by `workers` concurrent clients speaking the worker protocol (lease, start,
/// complete), against a `kiln server` on loopback with its SQLite store on disk.
///
/// Baseline, same run, same client and concurrency: `GET /healthz` round trips per second.
enum SystemBenchmark {
    static func run(jobs: Int, workers: Int, submitters: Int, rate: Int) async throws {
        let data = FileManager.default.temporaryDirectory.appending(path: "kiln-bench-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: data) }
        var logger = Logger(label: "kiln-bench")
        logger.logLevel = .error
        var configuration = ServerConfiguration()
        configuration.tiers = try TierTable(
            TierTable.standard.tiers.map { tier in
                var copy = tier
                copy.maxQueuedPerAccount = nil
                copy.maxRunningPerAccount = nil
                return copy
            })
        let adminKey = "bench-admin"
        let server = try await KilnServer.open(data: data, configuration: configuration, adminKey: adminKey, logger: logger)
        let (portStream, portContinuation) = AsyncStream.makeStream(of: Int.self)
        let serverTask = Task {
            try await server.run(host: "127.0.0.1", port: 0) { port in portContinuation.yield(port) }
        }
        var ports = portStream.makeAsyncIterator()
        guard let port = await ports.next() else { return }
        let base = "http://127.0.0.1:\(port)"
        let http = HTTPClient(eventLoopGroupProvider: .singleton)

        func call(_ method: HTTPMethod, _ path: String, key: String, body: String? = nil) async throws -> (UInt, ByteBuffer) {
            var request = HTTPClientRequest(url: base + path)
            request.method = method
            request.headers.add(name: "Authorization", value: "Bearer \(key)")
            if let body {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(string: body))
            }
            let response = try await http.execute(request, timeout: .seconds(60))
            return (response.status.code, try await response.body.collect(upTo: 1 << 20))
        }
        func decode<T: Decodable>(_ type: T.Type, _ buffer: ByteBuffer) throws -> T {
            try WireFormat.decoder().decode(T.self, from: Data(buffer.readableBytesView))
        }

        // Setup: a model, one account per tier, a worker key.
        _ = try await call(.POST, "/v1/admin/models", key: adminKey, body: #"{"name":"noop"}"#)
        var userKeys: [String] = []
        for tier in TierTable.standard.names {
            let account = try decode(
                AccountObject.self,
                try await call(.POST, "/v1/admin/accounts", key: adminKey, body: #"{"name":"\#(tier)","tier":"\#(tier)"}"#).1)
            userKeys.append(try decode(KeyObject.self, try await call(.POST, "/v1/admin/accounts/\(account.id)/keys", key: adminKey).1).key)
        }
        let keys = userKeys
        let workerKey = try decode(KeyObject.self, try await call(.POST, "/v1/admin/keys", key: adminKey, body: #"{"scope":"worker"}"#).1).key

        // Baseline: health checks, same concurrency as the workers.
        let clock = ContinuousClock()
        let healthRequests = jobs
        let healthTime = try await clock.measure {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in 0..<workers {
                    group.addTask {
                        for _ in stride(from: client, to: healthRequests, by: workers) {
                            _ = try await call(.GET, "/healthz", key: adminKey)
                        }
                    }
                }
                try await group.waitForAll()
            }
        }

        // The run: submitters and workers at once.
        let submitTimes = Timestamps()
        let latencies = Timestamps()
        let begin = clock.now
        let runTime = try await clock.measure {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in 0..<submitters {
                    group.addTask {
                        for index in stride(from: client, to: jobs, by: submitters) {
                            if rate > 0 {
                                // Paced: job i is due at i / rate seconds after the start.
                                try await Task.sleep(until: begin + .milliseconds(index * 1000 / rate), clock: clock)
                            }
                            let key = keys[index % keys.count]
                            let sent = clock.now
                            let (status, body) = try await call(.POST, "/v1/generations", key: key, body: #"{"model":"noop","input":{}}"#)
                            guard status == 201 else { throw KilnError(.internal, "submit answered \(status)") }
                            await submitTimes.set(try decode(GenerationObject.self, body).id.rawValue, sent)
                        }
                    }
                }
                for _ in 0..<workers {
                    group.addTask {
                        let registered = try decode(
                            RegisterWorkerResponse.self,
                            try await call(.POST, "/v1/workers", key: workerKey, body: #"{"cluster":"default","accelerator":"cpu","gpus":0}"#).1)
                        let worker = registered.id
                        while await latencies.count < jobs {
                            let (status, body) = try await call(.POST, "/v1/workers/\(worker)/lease", key: workerKey, body: #"{"wait_seconds":1}"#)
                            if status == 204 { continue }
                            let lease = try decode(LeaseResponse.self, body)
                            let received = clock.now
                            await latencies.record(lease.job.id.rawValue, at: received, submits: submitTimes)
                            let path = "/v1/workers/\(worker)/jobs/\(lease.job.id)"
                            _ = try await call(.POST, "\(path)/start", key: workerKey, body: #"{"token":"\#(lease.lease.token)"}"#)
                            let (done, _) = try await call(
                                .POST, "\(path)/complete", key: workerKey, body: #"{"token":"\#(lease.lease.token)","outputs":[]}"#)
                            guard done == 204 else { throw KilnError(.internal, "complete answered \(done)") }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        try await http.shutdown()
        serverTask.cancel()
        _ = try? await serverTask.value

        let seconds = Double(runTime.components.seconds) + Double(runTime.components.attoseconds) / 1e18
        let healthSeconds = Double(healthTime.components.seconds) + Double(healthTime.components.attoseconds) / 1e18
        let sorted = await latencies.values.sorted()
        func percentile(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] * 1000 }
        let jobsPerSecond = Double(jobs) / seconds
        let healthPerSecond = Double(healthRequests) / healthSeconds
        let pacing = rate > 0 ? "paced at \(rate) submissions/s" : "submitted as fast as possible"
        print("system benchmark: \(jobs) no-op generations \(pacing), \(submitters) submitters, \(workers) workers, SQLite on disk")
        print(String(format: "  jobs per second (submit + lease + start + complete): %.0f", jobsPerSecond))
        print(String(format: "  baseline GET /healthz per second (%d clients): %.0f", workers, healthPerSecond))
        print(String(format: "  ratio: one job costs the time of %.1f health checks (4 calls each)", healthPerSecond / jobsPerSecond))
        print(String(format: "  submit-to-lease latency: p50 %.1f ms, p99 %.1f ms", percentile(0.5), percentile(0.99)))
    }
}

/// Submit times by generation id, and the submit-to-lease latencies seen.
actor Timestamps {
    private var times: [String: ContinuousClock.Instant] = [:]
    private(set) var values: [Double] = []
    var count: Int { values.count }

    func set(_ id: String, _ instant: ContinuousClock.Instant) { times[id] = instant }
    func get(_ id: String) -> ContinuousClock.Instant? { times[id] }

    func record(_ id: String, at received: ContinuousClock.Instant, submits: Timestamps) async {
        // A lease can arrive before its submit response did; count it from the receipt then.
        let sent = await submits.get(id) ?? received
        let elapsed = received - sent
        values.append(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
    }
}
