import AsyncHTTPClient
import Foundation
import GRDB
import KilnAPI
import KilnCore
import KilnPostgres
import Logging
import NIOCore
import PostgresNIO

/// (b) The whole system over HTTP, with the load generator (this process) and `kiln server` (a
/// child process, SQLite on disk, `synchronous = FULL`) apart, so that the server's CPU per job is
/// read from `/proc` and not mixed with the client's.
///
/// With `database`, the servers share a PostgreSQL database instead (a fresh one the benchmark
/// creates beside the one named and drops at the end), and PostgreSQL's own CPU is read too; with
/// `servers` above one, that many replicas run with one leader, and the clients are spread across
/// them (a follower forwards to the leader).
///
/// Four measures, one server, one run:
/// - baseline: `GET /healthz` round trips with the workers' concurrency, then one at a time (what
///   one HTTP exchange costs on this machine, the floor under every latency below);
/// - latency: workers idle in long polls, one submission at a time; submit sent → lease received,
///   and submit sent → its own answer received;
/// - throughput: `jobs` no-op generations from `submitters` clients, drained by `workers` clients,
///   once per worker protocol: `classic` (lease, start, complete: three calls a job) and
///   `combined` (one exchange call completes the last job and leases and starts the next);
/// - admission at depth: one submission at a time with none of its account's generations queued,
///   then with `queueDepth` of them queued.
///
/// Every client has a connection of its own (the pool's limit is raised to their count), so no
/// submission queues behind a worker's long poll inside the client.
enum SystemBenchmark {
    struct Options {
        var jobs = 4_000
        var workers = 8
        var submitters = 8
        var protocols = ["classic", "combined", "batched"]
        /// Jobs a worker of the combined protocol runs at once (leased together, reported together).
        var replicas = 4
        /// Generations a submitter sends in one call under the `batched` protocol (the combined
        /// protocol's workers, with `POST /v1/generations/batch`).
        var batch = 16
        var latencySamples = 300
        /// Generations queued in one account for the last measure: a submission beside that many.
        var queueDepth = 9_000
        var server: URL
        /// A PostgreSQL URL: the servers use a fresh database made beside the one it names.
        var database: String?
        /// How many `kiln server` replicas share the store.
        var servers = 1
    }

    static func run(_ options: Options) async throws {
        var scratch: ScratchDatabase?
        if let database = options.database { scratch = try await ScratchDatabase.create(beside: database) }
        let cluster: ServerCluster
        do {
            cluster = try await ServerCluster.start(binary: options.server, count: options.servers, database: scratch?.url)
        } catch {
            try? await scratch?.drop()
            throw error
        }
        let connections = Connections()
        var failure: (any Error)?
        do {
            try await run(options, cluster: cluster, scratch: scratch, connections: connections)
        } catch {
            failure = error
        }
        await connections.shutdown()
        cluster.stop()
        try await scratch?.drop()
        if let failure { throw failure }
    }

    static func run(_ options: Options, cluster: ServerCluster, scratch: ScratchDatabase?, connections: Connections) async throws {
        let urls = cluster.servers.map(\.url)
        let admin = try KilnAPIClient(server: urls[0], key: ServerProcess.adminKey, http: await connections.open())

        // Setup: a model, one account per tier, a worker key and the workers.
        _ = try await admin { try await $0.createModel(body: .json(.init(name: "noop"))).created }
        var userKeys: [String] = []
        for tier in TierTable.standard.names {
            let account = try await admin { try await $0.createAccount(body: .json(.init(name: tier, tier: tier))).created.body.json }
            userKeys.append(try await admin { try await $0.createAccountKey(path: .init(id: account.id)).created.body.json.key })
        }
        let workerKey = try await admin { try await $0.createKey(body: .json(.init(scope: .worker))).created.body.json.key }
        // Each simulated client has an HTTP client, and so a connection, of its own.
        var submitters: [[KilnAPIClient]] = []
        for index in 0..<options.submitters {
            let http = await connections.open()
            submitters.append(try userKeys.map { try KilnAPIClient(server: urls[index % urls.count], key: $0, http: http) })
        }
        var workers: [(client: KilnAPIClient, id: String)] = []
        for index in 0..<options.workers {
            let client = try KilnAPIClient(server: urls[index % urls.count], key: workerKey, http: await connections.open())
            let id = try await client {
                try await $0.registerWorker(body: .json(.init(cluster: "default", accelerator: "cpu", gpus: 0))).created.body.json.id
            }
            workers.append((client, id))
        }
        let setup = Setup(submitters: submitters, workers: workers)

        let pids = cluster.servers.map { String($0.pid) }.joined(separator: ", ")
        let servers =
            urls.count == 1 ? "kiln server in its own process (pid \(pids))" : "\(urls.count) kiln servers, one leader (pids \(pids))"
        if let scratch {
            let (synchronousCommit, fsync) = (try await scratch.setting("synchronous_commit"), try await scratch.setting("fsync"))
            say(
                "system benchmark: \(servers), PostgreSQL (database \(scratch.name), synchronous_commit \(synchronousCommit), "
                    + "fsync \(fsync))")
        } else {
            say("system benchmark: \(servers), SQLite on disk, synchronous = FULL")
        }
        say(
            "  load generator: this process, one connection per client, spread over the servers; "
                + "\(options.workers) workers, \(options.submitters) submitters")

        let health = try await measure(cluster) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (index, worker) in setup.workers.enumerated() {
                    group.addTask {
                        for _ in stride(from: index, to: options.jobs, by: options.workers) {
                            _ = try await worker.client { try await $0.getHealth().ok }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        let healthPerSecond = Double(options.jobs) / health.seconds
        say(
            String(
                format: "  baseline GET /healthz: %.0f/s, server CPU %.3f ms per request, load generator CPU %.3f ms", healthPerSecond,
                health.serverCPU * 1000 / Double(options.jobs), health.clientCPU * 1000 / Double(options.jobs)))

        var alone: [Double] = []
        let clock = ContinuousClock()
        for _ in 0..<300 {
            let sent = clock.now
            _ = try await setup.workers[0].client { try await $0.getHealth().ok }
            alone.append((clock.now - sent).seconds)
        }
        say(
            String(
                format: "  baseline GET /healthz one at a time, there and back: p50 %.2f ms, p99 %.2f ms", percentile(alone, 0.5) * 1000,
                percentile(alone, 0.99) * 1000))

        let syncs = try fsyncLatencies(in: cluster.servers[0].data, count: 200)
        say(
            String(
                format: "  baseline fdatasync of 4 KiB in the server's data folder: p50 %.2f ms, p99 %.2f ms "
                    + "(a submission leased to a waiting worker waits for one)", percentile(syncs, 0.5) * 1000,
                percentile(syncs, 0.99) * 1000))
        let (latencies, answers) = try await submitToLease(setup, samples: options.latencySamples)
        say(
            String(
                format: "  submit → lease, %d idle long-polling workers, one submission at a time: p50 %.2f ms, p99 %.2f ms (%d samples)",
                options.workers, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000, latencies.count))
        say(
            String(
                format: "    the submission's own answer (201), same runs: p50 %.2f ms, p99 %.2f ms", percentile(answers, 0.5) * 1000,
                percentile(answers, 0.99) * 1000))
        let inside = try await scratch?.queuedToLeased() ?? serverSideLatencies(cluster.servers[0])
        say(
            String(
                format: "    of which inside the server (its own event times, queued → leased): p50 %.2f ms, p99 %.2f ms",
                percentile(inside, 0.5) * 1000, percentile(inside, 0.99) * 1000))

        for name in options.protocols {
            let replicas = name == "classic" ? 0 : options.replicas
            let batch = name == "batched" ? options.batch : 1
            let submitted = LastSubmission()
            let began = ContinuousClock.now
            let result = try await measure(cluster) {
                try await drain(setup, jobs: options.jobs, replicas: replicas, batch: batch, submitted: submitted)
            }
            let submitting = await submitted.value.map { ($0 - began).seconds } ?? 0
            let jobsPerSecond = Double(options.jobs) / result.seconds
            let label =
                replicas == 0
                ? "classic protocol"
                : "combined protocol, \(replicas) replicas a worker" + (batch > 1 ? ", submissions in batches of \(batch)" : "")
            let database =
                scratch == nil ? "" : String(format: ", PostgreSQL CPU %.3f ms per job", result.databaseCPU * 1000 / Double(options.jobs))
            say(
                String(
                    format: "  %@: %d jobs in %.2f s (the last submission answered at %.2f s) = %.0f jobs/s "
                        + "(%.1f health checks' time per job); server CPU %.3f ms per job, load generator CPU %.3f ms per job%@",
                    label, options.jobs, result.seconds, submitting, jobsPerSecond, healthPerSecond / jobsPerSecond,
                    result.serverCPU * 1000 / Double(options.jobs), result.clientCPU * 1000 / Double(options.jobs), database))
        }

        let (empty, deep) = try await submitAtDepth(setup.submitters[0][0], depth: options.queueDepth, samples: 200)
        say(
            String(
                format: "  one submission, one at a time, its account with none queued: p50 %.2f ms; with %d queued: p50 %.2f ms "
                    + "(%.2f×)", percentile(empty, 0.5) * 1000, options.queueDepth, percentile(deep, 0.5) * 1000,
                percentile(deep, 0.5) / percentile(empty, 0.5)))
    }

    /// Submission answers, one at a time (each canceled once answered, so the depth holds), while
    /// `depth` generations of the same account wait: first with none waiting (the baseline), then
    /// with `depth` queued by batches, with no worker to take them. The per-account and per-tier
    /// queued caps are read on every submission; this shows whether that read grows with the queue.
    /// Run last: it leaves the queue full.
    static func submitAtDepth(_ user: KilnAPIClient, depth: Int, samples: Int) async throws -> (empty: [Double], deep: [Double]) {
        let clock = ContinuousClock()
        func timedSubmissions() async throws -> [Double] {
            var seconds: [Double] = []
            for _ in 0..<samples {
                let sent = clock.now
                let created = try await user {
                    try await $0.createGeneration(body: .json(.init(model: "noop", input: .init()))).created.body.json
                }
                seconds.append((clock.now - sent).seconds)
                _ = try await user { try await $0.cancelGeneration(path: .init(id: created.id)).ok }
            }
            return seconds
        }
        let empty = try await timedSubmissions()
        for first in stride(from: 0, to: depth, by: 100) {
            let items = Array(
                repeating: Components.Schemas.CreateGenerationRequest(model: "noop", input: .init()), count: min(100, depth - first))
            let results = try await user { try await $0.createGenerations(body: .json(.init(generations: items))).ok.body.json }
            guard results.results.allSatisfy({ $0.status == ._201 }) else {
                throw KilnError(.internal, "a batch was not queued whole: \(results.results.map(\.status.rawValue))")
            }
        }
        return (empty, try await timedSubmissions())
    }

    struct Setup: Sendable {
        /// Per submitter, a client for each tier's account.
        let submitters: [[KilnAPIClient]]
        let workers: [(client: KilnAPIClient, id: String)]
    }

    struct Measured {
        var seconds: Double
        /// Of every server together.
        var serverCPU: Double
        var clientCPU: Double
        /// Of every PostgreSQL process on the machine; 0 on SQLite.
        var databaseCPU: Double
    }

    static func measure(_ cluster: ServerCluster, _ body: () async throws -> Void) async throws -> Measured {
        let clock = ContinuousClock()
        func servers() throws -> Double { try cluster.servers.reduce(0) { try $0 + cpuSeconds(pid: $1.pid) } }
        let (server0, client0, database0) = (try servers(), try cpuSeconds(pid: nil), postgresCPUSeconds())
        let elapsed = try await clock.measure(body)
        let (server1, client1, database1) = (try servers(), try cpuSeconds(pid: nil), postgresCPUSeconds())
        return Measured(
            seconds: elapsed.seconds, serverCPU: server1 - server0, clientCPU: client1 - client0, databaseCPU: database1 - database0)
    }

    /// Workers wait in long polls; one submission at a time, each sent once the previous one was
    /// leased, completed by the worker that got it. The workers stop (within one poll of a second)
    /// once the samples are taken.
    /// - Returns: seconds from each submission sent to its lease received, and to its own answer.
    static func submitToLease(_ setup: Setup, samples: Int) async throws -> (leases: [Double], answers: [Double]) {
        let clock = ContinuousClock()
        let sent = LastSubmission()
        let samplesTaken = Counter()
        return try await withThrowingTaskGroup(of: [Double].self) { group in
            let (leases, leased) = AsyncStream.makeStream(of: Void.self)
            for (client, worker) in setup.workers {
                group.addTask {
                    var seen: [Double] = []
                    while await samplesTaken.value == 0 {
                        try Task.checkCancellation()
                        let answer = try await client {
                            try await $0.leaseJob(path: .init(id: worker), body: .json(.init(waitSeconds: 1)))
                        }
                        guard case .ok(let ok) = answer else { continue }
                        let received = clock.now
                        let lease = try ok.body.json
                        if let start = await sent.value { seen.append((received - start).seconds) }
                        let (job, token) = (lease.job.id, lease.lease.token)
                        _ = try await client {
                            try await $0.startJob(path: .init(id: worker, job: job), body: .json(.init(token: token))).ok
                        }
                        _ = try await client {
                            try await $0.completeJob(path: .init(id: worker, job: job), body: .json(.init(token: token, outputs: []))).noContent
                        }
                        leased.yield()
                    }
                    return seen
                }
            }
            // Let every worker reach its long poll before the first submission.
            try await Task.sleep(for: .milliseconds(300))
            var done = leases.makeAsyncIterator()
            var answers: [Double] = []
            for index in 0..<samples {
                let start = clock.now
                await sent.set(start)
                let user = setup.submitters[0][index % setup.submitters[0].count]
                _ = try await user {
                    try await $0.createGeneration(body: .json(.init(model: "noop", input: .init()))).created
                }
                answers.append((clock.now - start).seconds)
                _ = await done.next()
            }
            await samplesTaken.add(1)
            var all: [Double] = []
            for try await seen in group { all += seen }
            return (all, answers)
        }
    }

    /// `jobs` submissions as fast as the submitters go, drained by the workers.
    /// - Parameters:
    ///   - replicas: 0 for the classic protocol, else the combined one with this many jobs a worker
    ///     at once.
    ///   - batch: generations a submission call carries; above 1, through the batch call.
    ///   - submitted: set when each submitter has its last answer (it ends as the last one's time).
    static func drain(_ setup: Setup, jobs: Int, replicas: Int, batch: Int, submitted: LastSubmission) async throws {
        let completed = Counter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (submitter, users) in setup.submitters.enumerated() {
                group.addTask {
                    // Each submitter sends its share of the jobs, `batch` at a time, the accounts in turn.
                    let share = max(0, jobs - submitter + setup.submitters.count - 1) / setup.submitters.count
                    for (call, first) in stride(from: 0, to: share, by: batch).enumerated() {
                        let user = users[(submitter + call) % users.count]
                        let count = min(batch, share - first)
                        guard batch > 1 else {
                            _ = try await user {
                                try await $0.createGeneration(body: .json(.init(model: "noop", input: .init()))).created
                            }
                            continue
                        }
                        let items = Array(repeating: Components.Schemas.CreateGenerationRequest(model: "noop", input: .init()), count: count)
                        let results = try await user { try await $0.createGenerations(body: .json(.init(generations: items))).ok.body.json }
                        guard results.results.allSatisfy({ $0.status == ._201 }) else {
                            throw KilnError(.internal, "a batch was not queued whole: \(results.results.map(\.status.rawValue))")
                        }
                    }
                    await submitted.set(ContinuousClock.now)
                }
            }
            for (client, worker) in setup.workers {
                group.addTask {
                    if replicas > 0 {
                        try await combinedWorker(client, id: worker, jobs: jobs, replicas: replicas, completed: completed)
                    } else {
                        try await classicWorker(client, id: worker, jobs: jobs, completed: completed)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    /// Lease, start, complete: three calls a job.
    static func classicWorker(_ client: KilnAPIClient, id: String, jobs: Int, completed: Counter) async throws {
        while await completed.value < jobs {
            try Task.checkCancellation()
            let answer = try await client { try await $0.leaseJob(path: .init(id: id), body: .json(.init(waitSeconds: 1))) }
            guard case .ok(let ok) = answer else { continue }
            let lease = try ok.body.json
            let (job, token) = (lease.job.id, lease.lease.token)
            _ = try await client { try await $0.startJob(path: .init(id: id, job: job), body: .json(.init(token: token))).ok }
            _ = try await client {
                try await $0.completeJob(path: .init(id: id, job: job), body: .json(.init(token: token, outputs: []))).noContent
            }
            await completed.add(1)
        }
    }

    /// One exchange call per round: it reports the jobs done in the last round and leases and starts
    /// up to `replicas` more.
    static func combinedWorker(_ client: KilnAPIClient, id: String, jobs: Int, replicas: Int, completed: Counter) async throws {
        var done: [Components.Schemas.CompletedReport] = []
        while true {
            try Task.checkCancellation()
            let finished = done.count
            if finished > 0 { await completed.add(finished) }
            let more = await completed.value < jobs
            if !more && done.isEmpty { return }
            let request = Components.Schemas.ExchangeRequest(completed: done, lease: more ? .init(max: replicas, waitSeconds: 1, start: true) : nil)
            let answer = try await client {
                try await $0.exchangeJobs(
                    path: .init(id: id),
                    body: .json(request)
                ).ok.body.json
            }
            done = answer.jobs.map { .init(job: $0.job.id, token: $0.lease.token, outputs: []) }
            if !more { return }
        }
    }

    /// Per generation, seconds from its `queued` event to its first `leased` one (the same SQL on
    /// both stores).
    static let queuedToLeasedSQL = """
        SELECT MIN(l.at) - MIN(q.at) FROM generation_events q
        JOIN generation_events l ON l.generation_id = q.generation_id AND l.kind = 'leased'
        WHERE q.kind = 'queued' GROUP BY q.generation_id
        """

    /// Per generation so far, seconds from its `queued` event to its first `leased` one, as the
    /// server stamped them in its store (read-only, beside the running server).
    static func serverSideLatencies(_ server: ServerProcess) throws -> [Double] {
        var configuration = Configuration()
        configuration.readonly = true
        let database = try DatabaseQueue(path: server.data.appending(path: "state/kiln.sqlite").path, configuration: configuration)
        return try database.read { db in
            try Double.fetchAll(
                db,
                sql: queuedToLeasedSQL)
        }
    }

    /// Seconds each of `count` 4 KiB writes with `fdatasync` takes in `folder`: the floor of a
    /// durable commit on that disk.
    static func fsyncLatencies(in folder: URL, count: Int) throws -> [Double] {
        let path = folder.appending(path: "fsync-probe").path
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw KilnError(.internal, "cannot open \(path)") }
        defer {
            close(fd)
            unlink(path)
        }
        let block = [UInt8](repeating: 7, count: 4096)
        let clock = ContinuousClock()
        return (0..<count).map { index in
            clock.measure {
                _ = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(index % 16) * 4096) }
                _ = fdatasync(fd)
            }.seconds
        }
    }

    /// Prints a line now, also into a file or pipe, so a long run shows where it is.
    static func say(_ line: String) {
        print(line)
        fflush(nil)
    }

    static func percentile(_ values: [Double], _ p: Double) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }

    /// User plus system CPU seconds of a process (this one when `pid` is nil), from `/proc`.
    static func cpuSeconds(pid: Int32?) throws -> Double {
        let process = pid.map(String.init) ?? "self"
        guard let stat = processStat(process) else { throw KilnError(.internal, "cannot read /proc/\(process)/stat") }
        // utime and stime: fields 14 and 15 of the whole line.
        return stat.ticks(11...12) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// A process's `/proc/PID/stat`: its command name, and the fields after it (the name is in
    /// parentheses and may hold spaces), which `ticks` sums by index (field 3 of the line is 0).
    static func processStat(_ pid: String) -> (name: Substring, ticks: (ClosedRange<Int>) -> Double)? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let open = text.firstIndex(of: "("), let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return (text[text.index(after: open)..<close], { range in fields[range].reduce(0) { $0 + (Double($1) ?? 0) } })
    }

    /// CPU seconds of PostgreSQL so far: of every process named `postgres`, its own and that of
    /// its children that have ended (so a backend that ends between two readings still counts,
    /// through the postmaster). Any other PostgreSQL on the machine counts too: run on a quiet one.
    static func postgresCPUSeconds() -> Double {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return 0 }
        var ticks = 0.0
        for entry in entries where entry.allSatisfy(\.isNumber) {
            guard let stat = processStat(entry), stat.name == "postgres" else { continue }
            // utime, stime, cutime, cstime: fields 14 to 17 of the whole line.
            ticks += stat.ticks(11...14)
        }
        return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}

/// The servers of one run: one, or several replicas on one store with one leader.
struct ServerCluster {
    let servers: [ServerProcess]

    /// Starts `count` servers and, when there are several, waits until one of them leads.
    static func start(binary: URL, count: Int, database: String?) async throws -> ServerCluster {
        var servers: [ServerProcess] = []
        do {
            for _ in 0..<max(1, count) {
                servers.append(try await ServerProcess.start(binary: binary, database: database, replicas: count > 1))
            }
            let cluster = ServerCluster(servers: servers)
            if count > 1 { try await cluster.awaitLeader() }
            return cluster
        } catch {
            for server in servers { server.stop() }
            throw error
        }
    }

    /// Polls `/healthz` of every server until one says it leads (10 s at most).
    func awaitLeader() async throws {
        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { _ = http.shutdown() }
        for _ in 0..<100 {
            for server in servers {
                let client = try KilnAPIClient(server: server.url, key: "", http: http)
                if let health = try? await client({ try await $0.getHealth().ok.body.json }), health.role == .leader { return }
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw KilnError(.unavailable, "no server became the leader within 10 s")
    }

    func stop() {
        for server in servers { server.stop() }
    }
}

/// A PostgreSQL database made for one run, on the server of a URL the caller gives, and dropped
/// at its end.
struct ScratchDatabase: Sendable {
    let target: PostgresURL
    let name: String

    /// The URL the servers connect to.
    var url: String {
        let password = target.password.map { ":\($0)" } ?? ""
        return "postgres://\(target.user)\(password)@\(target.host):\(target.port)/\(name)?sslmode=\(target.tls.rawValue)"
    }

    static func create(beside url: String) async throws -> ScratchDatabase {
        let target = try PostgresURL(url)
        let name = "kiln_bench_\(UInt32.random(in: 0...UInt32.max))"
        try await run(on: target, database: target.database) {
            try await $0.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: Self.logger)
        }
        return ScratchDatabase(target: target, name: name)
    }

    func drop() async throws {
        try await Self.run(on: target, database: target.database) {
            try await $0.query(PostgresQuery(unsafeSQL: "DROP DATABASE IF EXISTS \(name) WITH (FORCE)"), logger: Self.logger)
        }
    }

    /// A server setting as `SHOW` reads it.
    func setting(_ name: String) async throws -> String {
        try await Self.run(on: target, database: self.name) { connection in
            let rows = try await connection.query(PostgresQuery(unsafeSQL: "SHOW \(name)"), logger: Self.logger)
            for try await value in rows.decode(String.self) { return value }
            return "?"
        }
    }

    /// Per generation so far, seconds from its `queued` event to its first `leased` one.
    func queuedToLeased() async throws -> [Double] {
        try await Self.run(on: target, database: name) { connection in
            var values: [Double] = []
            let rows = try await connection.query(
                PostgresQuery(unsafeSQL: SystemBenchmark.queuedToLeasedSQL), logger: Self.logger)
            for try await value in rows.decode(Double.self) { values.append(value) }
            return values
        }
    }

    private static let logger = Logger(label: "kiln.bench.postgres")

    private static func run<T: Sendable>(
        on target: PostgresURL, database: String, _ body: (PostgresConnection) async throws -> T
    ) async throws -> T {
        let connection = try await PostgresConnection.connect(
            configuration: PostgresConnection.Configuration(
                host: target.host, port: target.port, username: target.user, password: target.password, database: database,
                tls: try target.connectionTLS()),
            id: 1, logger: logger)
        do {
            let value = try await body(connection)
            try await connection.close()
            return value
        } catch {
            try? await connection.close()
            throw error
        }
    }
}

/// `kiln server` as a child process on a free loopback port, with its data in a temporary folder.
struct ServerProcess {
    static let adminKey = "bench-admin"
    let process: Process
    let url: String
    let data: URL
    var pid: Int32 { process.processIdentifier }

    static func start(binary: URL, database: String?, replicas: Bool) async throws -> ServerProcess {
        let data = FileManager.default.temporaryDirectory.appending(path: "kiln-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        // Per-account limits out of reach: the benchmark's five accounts submit thousands of jobs each.
        let config = data.appending(path: "kiln.yaml")
        let uncapped = "max_queued_per_account: 1000000, max_running_per_account: 1000000"
        try Data(
            """
            tiers:
              enterprise: {max_wait_seconds: 60, \(uncapped)}
              api: {max_wait_seconds: 120, \(uncapped)}
              unlimited: {max_wait_seconds: 300, \(uncapped)}
              light: {max_wait_seconds: 900, \(uncapped)}
              free: {max_wait_seconds: 3600, \(uncapped)}
            scheduler: {default_dispatch_limit: 1024}
            replicas: {enabled: \(replicas)}
            """.utf8
        ).write(to: config)
        let process = Process()
        process.executableURL = binary
        process.arguments = [
            "server", "--data", data.appending(path: "state").path, "--port", "0", "--config", config.path, "--log-level", "error",
        ] + (database.map { ["--database", $0] } ?? [])
        process.environment = ProcessInfo.processInfo.environment.merging(["KILN_ADMIN_KEY": adminKey]) { $1 }
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        // The first line says where it listens: "kiln server listening on http://127.0.0.1:PORT (…)".
        var line = Data()
        while let byte = try output.fileHandleForReading.read(upToCount: 1), let first = byte.first, first != UInt8(ascii: "\n") {
            line.append(first)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let range = text.range(of: "http://"), let end = text[range.lowerBound...].firstIndex(of: " ") else {
            process.terminate()
            throw KilnError(.internal, "kiln server did not say where it listens: '\(text)'")
        }
        return ServerProcess(process: process, url: String(text[range.lowerBound..<end]), data: data)
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: data)
    }
}

/// The load generator's HTTP clients, one per simulated client, on one event loop group.
actor Connections {
    private var clients: [HTTPClient] = []

    func open() -> HTTPClient {
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        clients.append(client)
        return client
    }

    func shutdown() async {
        for client in clients { try? await client.shutdown() }
        clients.removeAll()
    }
}

actor Counter {
    private(set) var value = 0
    func add(_ count: Int) { value += count }
}

/// When the latest submission was sent (the latency phase) or answered (a drain).
actor LastSubmission {
    private(set) var value: ContinuousClock.Instant?
    func set(_ instant: ContinuousClock.Instant) { value = max(value ?? instant, instant) }
}
