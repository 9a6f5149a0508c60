import DequeModule
import Foundation
import KilnCore
import KilnScheduling

#if canImport(Glibc)
import Glibc
#endif

/// (a) The policy's pick with a million queued jobs across the five tiers.
///
/// Measures a full dispatch cycle (`nextSequence`, `started`, `remove`: what the dispatcher and
/// the simulator call) per decision against the cheapest
/// queue there is, a `Deque.removeFirst` over the same jobs, run in the same process; and the heap
/// bytes held per queued job.
enum SchedulerBenchmark {
    static func run(jobs: Int, decisions: Int, accounts: Int) throws {
        let tiers = TierTable.standard.names
        var generator = SplitMix64(seed: 42)
        let accountIDs = (0..<accounts).map { _ in AccountID.random(at: Date(timeIntervalSince1970: 0), using: &generator) }
        let models = ["text-to-video", "modify-video"]
        let queued = (0..<jobs).map { i in
            QueuedJob(
                sequence: Int64(i), account: accountIDs[Int(generator.next() % UInt64(accounts))],
                tier: tiers[Int(generator.next() % 5)], requirements: JobRequirements(model: models[i % 2]),
                queuedAt: Double(i) * 0.01)
        }
        let now = Double(jobs) * 0.01

        let heapBefore = allocatedBytes()
        var scheduler = Scheduler(tiers: .standard, policy: SLOPolicy(), defaultDispatchLimit: Int.max)
        for job in queued { try scheduler.enqueue(job) }
        let heapAfter = allocatedBytes()

        let worker = WorkerOffer(cluster: "default", accelerator: "h100", gpus: 1)
        let clock = ContinuousClock()
        var picked = 0
        let sloTime = clock.measure {
            for _ in 0..<decisions {
                guard let sequence = scheduler.nextSequence(for: worker, now: now) else { break }
                scheduler.started(sequence)
                scheduler.remove(sequence)
                picked += 1
            }
        }

        var baseline = Deque(queued)
        var popped = 0
        let baselineTime = clock.measure {
            for _ in 0..<decisions {
                guard let job = baseline.popFirst() else { break }
                popped &+= Int(job.sequence & 1)
            }
        }

        let sloNanos = Double(sloTime.components.attoseconds) / 1e9 + Double(sloTime.components.seconds) * 1e9
        let baseNanos = Double(baselineTime.components.attoseconds) / 1e9 + Double(baselineTime.components.seconds) * 1e9
        let perDecision = sloNanos / Double(max(picked, 1))
        let perBaseline = baseNanos / Double(max(decisions, 1))
        print("scheduler benchmark: \(jobs) queued jobs, 5 tiers, \(accounts) accounts, 2 models, \(picked) decisions")
        print(String(format: "  SLO pick (nextSequence+started+remove): %.0f ns per decision", perDecision))
        print(String(format: "  baseline Deque.popFirst:        %.0f ns per pop", perBaseline))
        print(String(format: "  ratio: %.1fx the baseline", perDecision / perBaseline))
        if let heapBefore, let heapAfter {
            print(String(format: "  memory: %.0f bytes per queued job (resident memory growth while enqueuing)", Double(heapAfter - heapBefore) / Double(jobs)))
        }
        print("  (popped checksum \(popped))")
    }

    /// Resident memory of this process, from `/proc/self/statm`, or nil where there is none.
    static func allocatedBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
