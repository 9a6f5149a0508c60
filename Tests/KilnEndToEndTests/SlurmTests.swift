import Foundation
import KilnAPI
import KilnCore
import KilnFleet
import KilnServer
import Testing

/// The `slurm` provider against a real single-machine Slurm (`scripts/slurm-local`, which CI
/// starts): 8 GPUs as GRES, a `train` partition and Kiln's `kiln` partition of higher
/// `PriorityTier`. Runs where `sinfo` answers; with `KILN_REQUIRE_SLURM=1` (as in CI) a missing
/// Slurm fails instead of skipping.
@Suite("Slurm provider against a real Slurm", .serialized, .enabled(if: slurmIsAvailable))
struct SlurmTests {
    /// Runs a Slurm command. - Throws: when it is missing or fails.
    @discardableResult
    static func slurm(_ command: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(filePath: "/usr/bin/env")
        process.arguments = [command] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw KilnError(.unavailable, "\(command) \(arguments.joined(separator: " ")) exited with \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self)
    }

    static func start(max: Int = 2, grace: Double = 60) async throws -> LocalCluster {
        try await LocalCluster.start { configuration in
            configuration.pools = [
                .init(
                    provider: .slurm,
                    spec: CapacityPool(
                        name: "borrowed", cluster: "default", kind: .burst, accelerator: "cpu", gpusPerWorker: 1, minWorkers: 0,
                        maxWorkers: max, cooldownSeconds: 4, drainGraceSeconds: grace),
                    slurm: .init(partition: "kiln"))
            ]
            configuration.fleet.tickSeconds = 0.5
            // Demand that stopped is forgotten within seconds, so the pool is given back soon.
            configuration.fleet.controller.rateWindowSeconds = 5
        }
    }

    /// Kiln's jobs in Slurm's queue: name → state.
    static func kilnJobs() throws -> [String: String] {
        var jobs: [String: String] = [:]
        for line in try slurm("squeue", ["--noheader", "--format=%j|%T"]).split(separator: "\n") {
            let fields = line.split(separator: "|").map(String.init)
            if fields.count == 2, fields[0].hasPrefix("kiln-") { jobs[fields[0]] = fields[1] }
        }
        return jobs
    }

    static func state(ofJobNamed name: String) throws -> String? {
        try slurm("squeue", ["--noheader", "--name=\(name)", "--format=%T"]).trimmingCharacters(in: .whitespacesAndNewlines).nilIfEmpty
    }


    /// Leaves no worker job of a test behind.
    static func cancelKilnJobs() {
        for name in (try? kilnJobs().keys).map(Array.init) ?? [] { _ = try? slurm("scancel", ["--name=\(name)"]) }
    }

    static func slurmLogs(_ cluster: LocalCluster) -> String {
        let folder = cluster.data.appending(path: "slurm")
        let logs = (try? FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".log") }) ?? []
        return logs.map { "\n--- \($0)\n" + ((try? String(contentsOf: folder.appending(path: $0), encoding: .utf8)) ?? "").suffix(2000) }
            .joined()
    }

    @Test("a backlog makes Kiln submit worker jobs that register and run generations; with the work done it cancels them gracefully")
    func backlogSubmitsWorkerJobs() async throws {
        let cluster = try await Self.start()
        do {
            _ = try await cluster.pushDemo()
            var ids: [String] = []
            for index in 0..<4 { ids.append(try await cluster.submit(["prompt": .string("slurm \(index)"), "num_frames": .number(12)]).id) }
            var seen: Set<String> = []
            try await until("the generations succeed on Slurm workers") {
                seen.formUnion(try Self.kilnJobs().keys)
                var done = true
                for id in ids where !(try await cluster.generation(id).state.isFinal) { done = false }
                return done
            }
            #expect(!seen.isEmpty, "Kiln submitted worker jobs")
            #expect(seen.count <= 2, "never more than the pool's max")
            for id in ids {
                let done = try await cluster.generation(id)
                #expect(done.state == .succeeded, "\(id): \(done.error?.message ?? "") \(Self.slurmLogs(cluster))")
            }
            let workers = try await cluster.admin { try await $0.listWorkers().ok.body.json.data }
            #expect(workers.allSatisfy { $0.pool == "borrowed" && $0.labels.additionalProperties["kiln.launch"]?.hasPrefix("kiln-borrowed-") == true })
            // With nothing left to do, the pool is given back: its jobs leave Slurm's queue and
            // their workers are listed as retired.
            try await until("the worker jobs leave Slurm") { try Self.kilnJobs().isEmpty }
            try await until("the workers are retired") {
                try await cluster.admin { try await $0.listWorkers().ok.body.json.data }.allSatisfy { $0.state == .retired }
            }
        } catch {
            Issue.record("\(error) \(Self.slurmLogs(cluster))")
        }
        await cluster.stop()
        Self.cancelKilnJobs()
    }

    @Test("a training job is preempted when Kiln takes the GPUs and runs again when Kiln gives them back")
    func trainingPreemptedAndBack() async throws {
        let training = "training-\(UUID().uuidString.prefix(8))"
        try Self.slurm(
            "sbatch", ["--parsable", "--partition=train", "--gres=gpu:8", "--cpus-per-task=1", "--job-name=\(training)", "--output=/dev/null",
                "--wrap=sleep 900"])
        defer { _ = try? Self.slurm("scancel", ["--name=\(training)"]) }
        try await until("the training job runs", seconds: 60) { try Self.state(ofJobNamed: training) == "RUNNING" }
        let cluster = try await Self.start(max: 1)
        do {
            _ = try await cluster.pushDemo()
            let job = try await cluster.submit(["prompt": .string("preempt"), "num_frames": .number(12)])
            var preempted = false
            try await until("the generation succeeds") {
                if try Self.state(ofJobNamed: training) == "PENDING" { preempted = true }
                return try await cluster.generation(job.id).state.isFinal
            }
            #expect(preempted, "the training job gave its GPUs to Kiln's worker and waited")
            #expect(try await cluster.generation(job.id).state == .succeeded, Comment(rawValue: Self.slurmLogs(cluster)))
            // Kiln gives the GPUs back after its cool-down; the training job runs again.
            try await until("the training job runs again", seconds: 300) { try Self.state(ofJobNamed: training) == "RUNNING" }
        } catch {
            Issue.record("\(error) \(Self.slurmLogs(cluster))")
        }
        await cluster.stop()
        Self.cancelKilnJobs()
    }

    @Test("a reclaim drains the worker job: its generation returns to the queue after the grace, charged no attempt, and runs when capacity comes back")
    func reclaimReleasesUncharged() async throws {
        let cluster = try await Self.start(max: 1, grace: 3)
        do {
            _ = try await cluster.pushDemo()
            let job = try await cluster.submit(["prompt": .string("reclaimed"), "num_frames": .number(240), "width": .number(640), "height": .number(480)])
            try await until("the generation runs") { try await cluster.generation(job.id).startedAt != nil }
            let worker = try #require(try Self.kilnJobs().first { $0.value == "RUNNING" }?.key)
            // The training cluster wants its GPUs back now: the operator sets the pool's max to 0.
            let pool = try await cluster.admin {
                try await $0.setPoolBounds(path: .init(name: "borrowed"), body: .json(.init(maxWorkers: 0))).ok.body.json
            }
            #expect(pool.maxWorkers == 0)
            try await until("the generation returns to the queue") {
                let generation = try await cluster.generation(job.id)
                return generation.state == .queued || generation.state.isFinal
            }
            let released = try await cluster.generation(job.id)
            #expect(released.state == .queued, "released after the 3 s grace, not finished: \(released.state) \(Self.slurmLogs(cluster))")
            #expect(released.attempts == 0, "a reclaim is not charged as an attempt")
            // Its worker job, signalled to drain, ends; Slurm has the GPU back.
            try await until("the worker job leaves Slurm") { try Self.kilnJobs()[worker] == nil }
            let fleet = try await cluster.admin { try await $0.getFleet().ok.body.json }
            #expect(fleet.decisions.contains { $0.action.hasPrefix("drain ") })
            #expect(fleet.decisions.contains { $0.action.hasPrefix("release ") && $0.action.hasSuffix("(1 jobs back to the queue)") })

            // Capacity comes back: a new worker job runs the generation, charged its one attempt.
            _ = try await cluster.admin {
                try await $0.setPoolBounds(path: .init(name: "borrowed"), body: .json(.init(maxWorkers: 1))).ok
            }
            try await until("the generation ends", seconds: 300) { try await cluster.generation(job.id).state.isFinal }
            let done = try await cluster.generation(job.id)
            #expect(done.state == .succeeded, "\(done.error?.message ?? "") \(Self.slurmLogs(cluster))")
            #expect(done.attempts == 1)
        } catch {
            Issue.record("\(error) \(Self.slurmLogs(cluster))")
        }
        await cluster.stop()
        Self.cancelKilnJobs()
    }

    @Test("Slurm killing a worker job outright loses no generation: it is retried and succeeds")
    func killedWorkerJobLosesNothing() async throws {
        let cluster = try await Self.start(max: 1)
        do {
            _ = try await cluster.pushDemo()
            let job = try await cluster.submit(["prompt": .string("killed"), "num_frames": .number(240), "width": .number(320), "height": .number(240)])
            try await until("the generation runs") { try await cluster.generation(job.id).startedAt != nil }
            // Killed outright, as the out-of-memory killer or a failing node would: every process of
            // the job at once, with no chance to drain.
            let victim = try #require(try Self.kilnJobs().first { $0.value == "RUNNING" }?.key)
            let id = try Self.slurm("squeue", ["--noheader", "--name=\(victim)", "--format=%i"]).trimmingCharacters(in: .whitespacesAndNewlines)
            let pids = try Self.slurm("scontrol", ["listpids", id]).split(separator: "\n").dropFirst().compactMap {
                $0.split(separator: " ", omittingEmptySubsequences: true).first.flatMap { Int32($0) }
            }
            #expect(!pids.isEmpty)
            for pid in pids { kill(pid, SIGKILL) }
            try await until("the generation ends", seconds: 240) { try await cluster.generation(job.id).state.isFinal }
            let done = try await cluster.generation(job.id)
            #expect(done.state == .succeeded, "\(done.error?.message ?? "") \(Self.slurmLogs(cluster))")
            #expect(done.attempts == 2, "the killed attempt counts; the job ran again \(Self.slurmLogs(cluster))")
        } catch {
            Issue.record("\(error) \(Self.slurmLogs(cluster))")
        }
        await cluster.stop()
        Self.cancelKilnJobs()
    }
}

/// Whether the Slurm tests run: `sinfo` answers, or CI requires them (`KILN_REQUIRE_SLURM=1`).
let slurmIsAvailable: Bool = {
    let required = ProcessInfo.processInfo.environment["KILN_REQUIRE_SLURM"] == "1"
    return required || (try? SlurmTests.slurm("sinfo", ["--noheader"])) != nil
}()

extension String {
    fileprivate var nilIfEmpty: String? { isEmpty ? nil : self }
}
