import Foundation
import KilnAPI
import KilnCore
import KilnFleet
import KilnServer
import OpenAPIRuntime
import Testing

/// Kiln end to end over real processes: `kiln worker` processes running the demo model in Python
/// runtimes, against a control plane on a loopback port.
@Suite("End to end with worker processes", .serialized)
struct EndToEndTests {
    /// An input clip made here: 20 frames, 160×96, H.264.
    func makeClip(at url: URL) throws {
        let script = """
            import av, numpy as np, sys
            c = av.open(sys.argv[1], "w"); s = c.add_stream("h264", rate=10); s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
            for i in range(20):
                f = np.zeros((96, 160, 3), np.uint8); f[:, : (i + 1) * 8] = (200, 120, 40)
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")): c.mux(p)
            for p in s.encode(): c.mux(p)
            c.close()
            """
        try LocalCluster.python(["-c", script, url.path])
    }

    @Test("a modify-video generation of a clip made here comes back as an MP4 of its frame count and size")
    func modifyVideo() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushDemo()
            try cluster.startWorker("a")
            let clip = cluster.data.appending(path: "clip.mp4")
            try makeClip(at: clip)
            let file = try await cluster.user.transfer(contentType: "video/mp4") {
                try await $0.uploadFile(body: .any(try HTTPBody.file(clip))).created.body.json
            }
            let submitted = try await cluster.submit(["prompt": .string("sepia and snow"), "video": .string(file.id)])
            let done = try await cluster.waitFor(submitted.id) { $0.state.isFinal }
            #expect(done.state == .succeeded, "\(done.error?.message ?? "") \(cluster.workerLogs())")
            let output = try #require(done.output.additionalProperties["video"])
            #expect(output.contentType == "video/mp4")
            let result = cluster.data.appending(path: "result.mp4")
            try await cluster.user.transfer { try await $0.downloadFile(path: .init(id: output.fileId)).ok.body.any.write(to: result) }
            let probe = try LocalCluster.probe(result)
            #expect(probe.frames == 20)
            #expect(probe.width == 160 && probe.height == 96)
            #expect(probe.codec == "h264")
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("cancel of a running generation stops its prediction, and the worker goes on to the next job")
    func cancelRunning() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushDemo()
            try cluster.startWorker("a")
            let long = try await cluster.submit([
                "prompt": .string("a very long clip"), "num_frames": .number(240), "width": .number(1280), "height": .number(720),
            ])
            _ = try await cluster.waitFor(long.id) { $0.state == .running && $0.progress.fraction > 0 }
            _ = try await cluster.user { try await $0.cancelGeneration(path: .init(id: long.id)).ok }
            let next = try await cluster.submit(["prompt": .string("a short clip"), "num_frames": .number(4), "width": .number(64), "height": .number(64)])
            let done = try await cluster.waitFor(next.id) { $0.state.isFinal }
            #expect(done.state == .succeeded, "\(cluster.workerLogs())")
            let canceled = try await cluster.generation(long.id)
            #expect(canceled.state == .canceled)
            #expect(canceled.output.additionalProperties.isEmpty)
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("a worker killed mid-job (SIGKILL): the job is retried on another worker and succeeds")
    func workerKilled() async throws {
        let cluster = try await LocalCluster.start(leaseTTL: 6)
        do {
            _ = try await cluster.pushDemo()
            try cluster.startWorker("doomed")
            let job = try await cluster.submit(["prompt": .string("survive"), "num_frames": .number(120), "width": .number(640), "height": .number(360)])
            _ = try await cluster.waitFor(job.id) { $0.state == .running && $0.progress.fraction > 0 }
            cluster.signalWorker("doomed", SIGKILL)
            for pid in try cluster.runtimePIDs(of: "doomed") { kill(pid, SIGKILL) }
            try cluster.startWorker("rescuer")
            let done = try await cluster.waitFor(job.id, seconds: 180) { $0.state.isFinal }
            #expect(done.state == .succeeded, "\(cluster.workerLogs())")
            #expect(done.attempts == 2)
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("a model runtime killed mid-job: the job is retried cleanly and succeeds on a fresh runtime")
    func runtimeKilled() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushDemo()
            try cluster.startWorker("a")
            let job = try await cluster.submit(["prompt": .string("again"), "num_frames": .number(120), "width": .number(640), "height": .number(360)])
            _ = try await cluster.waitFor(job.id) { $0.state == .running && $0.progress.fraction > 0 }
            let runtimes = try cluster.runtimePIDs(of: "a")
            try #require(!runtimes.isEmpty)
            for pid in runtimes { kill(pid, SIGKILL) }
            let done = try await cluster.waitFor(job.id, seconds: 180) { $0.state.isFinal }
            #expect(done.state == .succeeded, "\(cluster.workerLogs())")
            #expect(done.attempts == 2)
            #expect(try cluster.runtimePIDs(of: "a").allSatisfy { !runtimes.contains($0) })
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("while a job runs, the worker leases and prepares the next one, and runs it when free")
    func prefetch() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushDemo()
            try cluster.startWorker("single")
            let long = try await cluster.submit([
                "prompt": .string("first"), "num_frames": .number(120), "width": .number(640), "height": .number(360),
            ])
            _ = try await cluster.waitFor(long.id) { $0.state == .running && $0.progress.fraction > 0 }
            let next = try await cluster.submit(["prompt": .string("second"), "num_frames": .number(4), "width": .number(64), "height": .number(64)])
            // The next job is leased and made ready while the first still runs.
            let held = try await cluster.waitFor(next.id) { $0.progress.stage == "ready" }
            #expect(held.state == .running)
            #expect(held.startedAt == nil, "a prefetched job has not started")
            #expect(try await cluster.generation(long.id).state == .running)
            for id in [long.id, next.id] {
                let done = try await cluster.waitFor(id, seconds: 180) { $0.state.isFinal }
                #expect(done.state == .succeeded, "\(cluster.workerLogs())")
            }
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("a worker with two GPUs runs two replicas at once, each in its own runtime")
    func replicas() async throws {
        let cluster = try await LocalCluster.start()
        do {
            _ = try await cluster.pushDemo()
            // The demo needs no GPU, so each replica takes none and both lanes run it.
            try cluster.startWorker("wide", arguments: ["--gpus", "2"])
            let input: [String: JSONValue] = [
                "prompt": .string("side by side"), "num_frames": .number(120), "width": .number(640), "height": .number(360),
            ]
            let first = try await cluster.submit(input)
            let second = try await cluster.submit(input)
            // Both running at the same moment, on the one worker there is.
            let deadline = ContinuousClock.now + .seconds(120)
            var together = false
            while !together, ContinuousClock.now < deadline {
                let a = try await cluster.generation(first.id)
                let b = try await cluster.generation(second.id)
                together = a.state == .running && b.state == .running && a.progress.fraction > 0 && b.progress.fraction > 0
                if a.state.isFinal || b.state.isFinal { break }
                if !together { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(together, "the two jobs never ran at the same time: \(cluster.workerLogs())")
            #expect(try cluster.runtimePIDs(of: "wide").count == 2)
            for id in [first.id, second.id] {
                let done = try await cluster.waitFor(id, seconds: 180) { $0.state.isFinal }
                #expect(done.state == .succeeded)
            }
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("promote and rollback while generations flow: none fails, each records the version that ran")
    func switchVersionsUnderLoad() async throws {
        let cluster = try await LocalCluster.start()
        do {
            let v1 = try await cluster.pushDemo()
            let v2 = try await cluster.pushDemo(variant: "two", promote: false)
            try cluster.startWorker("a")
            try cluster.startWorker("b")
            var ids: [String] = []
            for index in 0..<12 {
                if index == 4 { try await cluster.promoteVersion(v2) }
                if index == 8 {
                    _ = try await cluster.admin {
                        try await $0.rollbackModelAlias(path: .init(name: "demo-video", alias: "production")).ok
                    }
                }
                let job = try await cluster.submit(["prompt": .string("flow \(index)"), "num_frames": .number(6), "width": .number(64), "height": .number(64)])
                ids.append(job.id)
                try await Task.sleep(for: .milliseconds(300))
            }
            var versions = Set<String>()
            for id in ids {
                let done = try await cluster.waitFor(id) { $0.state.isFinal }
                #expect(done.state == .succeeded, "\(id): \(done.error?.message ?? "") \(cluster.workerLogs())")
                let version = try #require(done.version)
                #expect([v1.description, v2.description].contains(version))
                versions.insert(version)
            }
            #expect(versions == [v1.description, v2.description], "both versions should have served some jobs")
        } catch {
            Issue.record("\(error) \(cluster.workerLogs())")
        }
        await cluster.stop()
    }

    @Test("queued work grows a local pool with kiln worker processes that prepare the version first; the pool shrinks after its cool-down")
    func localPoolGrowsAndShrinks() async throws {
        let cluster = try await LocalCluster.start { configuration in
            configuration.pools = [
                .init(
                    provider: .local,
                    spec: CapacityPool(
                        name: "local", cluster: "default", accelerator: "cpu", gpusPerWorker: 0, minWorkers: 1, maxWorkers: 3,
                        cooldownSeconds: 4, drainGraceSeconds: 60))
            ]
            configuration.fleet.tickSeconds = 0.5
        }
        do {
            let version = try await cluster.pushDemo()
            // One worker at the start (the pool's min), placed on the model once it has work.
            let fleet = { try await cluster.admin { try await $0.getFleet().ok.body.json } }
            try await until("the first local worker registers") { try await fleet().workers.contains { $0.state == .active } }
            var ids: [String] = []
            for index in 0..<8 {
                ids.append(try await cluster.submit(["prompt": .string("fleet \(index)"), "num_frames": .number(24)]).id)
            }
            var grown = 0
            var prepared = false
            let deadline = ContinuousClock.now + .seconds(180)
            while ContinuousClock.now < deadline {
                let view = try await fleet()
                grown = max(grown, view.workers.count)
                prepared = prepared || view.workers.contains { $0.model == "demo-video" && $0.readyVersion == version.description }
                let states = try await ids.asyncMap { try await cluster.generation($0).state }
                if states.allSatisfy(\.isFinal) { break }
                try await Task.sleep(for: .milliseconds(250))
            }
            let decisions = try await fleet().decisions.map(\.action)
            #expect(grown >= 2, "the pool grew under the backlog: \(decisions)")
            #expect(prepared, "a placed worker reported the production version prepared")
            for id in ids {
                let done = try await cluster.generation(id)
                #expect(done.state == .succeeded, "\(id): \(done.error?.message ?? "")")
                #expect(done.attempts == 1)
            }
            // With the queue empty, the pool goes back to its one worker after the cool-down; the
            // workers it let go stay listed as retired.
            try await until("the pool shrinks back to one worker", seconds: 90) {
                let view = try await fleet()
                return view.pools.first?.desired == 1 && view.workers.count == 1
            }
            let workers = try await cluster.admin { try await $0.listWorkers().ok.body.json.data }
            #expect(workers.filter { $0.state == .retired }.count == grown - 1)
            #expect(workers.filter { $0.state == .active }.count == 1)
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }

}

extension Array {
    fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}
