import AsyncHTTPClient
import Foundation
import KilnAPI
import KilnCore
import KilnServer
import Logging

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
        let admin = try KilnAPIClient(server: base, key: adminKey, http: http)

        // Setup: a model, one account per tier, a worker key.
        _ = try await admin { try await $0.createModel(body: .json(.init(name: "noop"))).created }
        var users: [KilnAPIClient] = []
        for tier in TierTable.standard.names {
            let account = try await admin { try await $0.createAccount(body: .json(.init(name: tier, tier: tier))).created.body.json }
            let key = try await admin { try await $0.createAccountKey(path: .init(id: account.id)).created.body.json.key }
            users.append(try KilnAPIClient(server: base, key: key, http: http))
        }
        let clients = users
        let workerKey = try await admin { try await $0.createKey(body: .json(.init(scope: .worker))).created.body.json.key }
        let workerClient = try KilnAPIClient(server: base, key: workerKey, http: http)

        // Baseline: health checks, same concurrency as the workers.
        let clock = ContinuousClock()
        let healthRequests = jobs
        let healthTime = try await clock.measure {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in 0..<workers {
                    group.addTask {
                        for _ in stride(from: client, to: healthRequests, by: workers) {
                            _ = try await admin { try await $0.getHealth().ok }
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
                            let user = clients[index % clients.count]
                            let sent = clock.now
                            let created = try await user {
                                try await $0.createGeneration(body: .json(.init(model: "noop", input: .init()))).created.body.json
                            }
                            await submitTimes.set(created.id, sent)
                        }
                    }
                }
                for _ in 0..<workers {
                    group.addTask {
                        let worker = try await workerClient {
                            try await $0.registerWorker(body: .json(.init(cluster: "default", accelerator: "cpu", gpus: 0))).created.body.json.id
                        }
                        while await latencies.count < jobs {
                            let leased = try await workerClient {
                                try await $0.leaseJob(path: .init(id: worker), body: .json(.init(waitSeconds: 1)))
                            }
                            guard case .ok(let answer) = leased else { continue }
                            let lease = try answer.body.json
                            let received = clock.now
                            await latencies.record(lease.job.id, at: received, submits: submitTimes)
                            let (job, token) = (lease.job.id, lease.lease.token)
                            _ = try await workerClient {
                                try await $0.startJob(path: .init(id: worker, job: job), body: .json(.init(token: token))).ok
                            }
                            _ = try await workerClient {
                                try await $0.completeJob(path: .init(id: worker, job: job), body: .json(.init(token: token, outputs: [])))
                                    .noContent
                            }
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
