import KilnCore
import KilnScheduling
import Testing

@Suite("Protected policy: paid tiers first within a bounded share")
struct ProtectedPolicyTests {
    /// Enterprise and api protected, taking at most 90 % of contested dispatches.
    static func scheduler(share: Double = 0.9) throws -> Scheduler {
        .standard(policy: ProtectedPolicy(try Protection(tiers: ["enterprise", "api"], share: share)))
    }

    @Test("a protected job within its promise goes before an older unprotected job that has used more of its own")
    func protectedFirst() throws {
        var scheduler = try Self.scheduler()
        // At t=3000 the free job has used 3000/3600 = 0.83 of its promise, the api job 10/120 = 0.08:
        // SLO would take the free job first; the protected layer takes the api job.
        try scheduler.enqueue(job(1).tier("free").at(0).job)
        try scheduler.enqueue(job(2).tier("api").at(2_990).job)
        #expect(scheduler.drain(now: 3_000) == [2, 1])
        var slo = Scheduler.standard()
        try slo.enqueue(job(1).tier("free").at(0).job)
        try slo.enqueue(job(2).tier("api").at(2_990).job)
        #expect(slo.drain(now: 3_000) == [1, 2])
    }

    @Test("among protected tiers and among the rest, the order is by share of promise used")
    func urgencyWithinEachClass() throws {
        var scheduler = try Self.scheduler()
        try scheduler.enqueue(job(1).tier("api").at(0).job)  // 100/120 = 0.83
        try scheduler.enqueue(job(2).tier("enterprise").at(60).job)  // 40/60 = 0.67
        try scheduler.enqueue(job(3).tier("free").at(0).job)  // 100/3600 = 0.03
        try scheduler.enqueue(job(4).tier("light").at(50).job)  // 50/900 = 0.06
        #expect(scheduler.drain(now: 100) == [1, 2, 4, 3])
    }

    @Test(
        "under a protected stream beyond the fleet, unprotected jobs still go: one in every run + 1 dispatches",
        arguments: [0.9, 0.5, 0.3, 0.0])
    func boundedShare(share: Double) throws {
        var scheduler = try Self.scheduler(share: share)
        let protection = try Protection(tiers: ["enterprise", "api"], share: share)
        let period = protection.longestProtectedRun + 1
        // Three free jobs waiting, and two new enterprise jobs for every dispatch (twice the fleet).
        for i in 1...3 { try scheduler.enqueue(job(Int64(i)).tier("free").at(0).job) }
        var sequence: Int64 = 100
        var freeDispatches: [Int] = []
        for pick in 1...(3 * period) {
            let now = Double(pick)
            for _ in 0..<2 {
                try scheduler.enqueue(job(sequence).tier("enterprise").at(now).job)
                sequence += 1
            }
            let picked = scheduler.next(for: cpuWorker, now: now)
            let next = try #require(picked)
            scheduler.started(next.sequence)
            scheduler.remove(next.sequence)
            if next.tier == "free" { freeDispatches.append(pick) }
        }
        // The derived bound: with k unprotected jobs ahead, a job goes within (k + 1) × period picks.
        #expect(freeDispatches.count == 3)
        for (k, pick) in freeDispatches.enumerated() {
            #expect(pick <= (k + 1) * period, "free job \(k + 1) went at pick \(pick), past \((k + 1) * period)")
        }
        // And the share itself: after n contested picks, at least ⌊n × (1 − share)⌋ went to free jobs.
        for n in 1...freeDispatches.last! {
            let owed = n * (1000 - protection.sharePermille) / 1000
            #expect(freeDispatches.filter { $0 <= n }.count >= min(owed, 3), "after \(n) picks")
        }
        if 1000 % (1000 - protection.sharePermille) == 0 {
            #expect(freeDispatches == [period, 2 * period, 3 * period])
        }
        #expect(scheduler.queuedCount > 0, "the protected stream must exceed what was dispatched")
    }

    @Test("the share is spent only while unprotected work waits: alone, protected jobs take every dispatch")
    func workConserving() throws {
        var scheduler = try Self.scheduler(share: 0.5)
        for i in 1...10 { try scheduler.enqueue(job(Int64(i)).tier("enterprise").at(Double(i)).job) }
        #expect(scheduler.drain(now: 20) == Array(1...10))
        // Credit did not pile up meanwhile: with unprotected work back, the period is 2 again.
        for i in 11...14 { try scheduler.enqueue(job(Int64(i)).tier("api").at(30).job) }
        for i in 15...16 { try scheduler.enqueue(job(Int64(i)).tier("free").at(30).job) }
        #expect(scheduler.drain(now: 31) == [11, 15, 12, 16, 13, 14])
    }

    @Test("ties break by queued time, then by sequence, whatever the order of arrival")
    func deterministicTies() throws {
        var first = try Self.scheduler()
        var second = try Self.scheduler()
        let jobs = [
            job(3).tier("api").at(10).job, job(1).tier("enterprise").at(10).job, job(2).tier("free").at(10).job,
            job(4).tier("light").at(10).job,
        ]
        for item in jobs { try first.enqueue(item) }
        for item in jobs.reversed() { try second.enqueue(item) }
        // At t=70 enterprise (60/60) and api (60/120) are protected; light (60/900) and free (60/3600) not.
        let order = first.drain(now: 70)
        #expect(order == [1, 3, 4, 2])
        #expect(second.drain(now: 70) == order)
    }

    @Test("a requeued job keeps its queued time and goes back ahead of newer ones of its tier")
    func requeueKeepsQueuedTime() throws {
        var scheduler = try Self.scheduler()
        try scheduler.enqueue(job(1).tier("api").at(0).job)
        let first = scheduler.next(for: cpuWorker, now: 5)
        let leased = try #require(first)
        #expect(leased.sequence == 1)
        try scheduler.enqueue(job(2).tier("api").at(10).job)
        scheduler.requeue(1)
        let second = scheduler.next(for: cpuWorker, now: 20)
        let again = try #require(second)
        #expect(again.sequence == 1)
        #expect(again.queuedAt == 0)
    }

    @Test("a share outside [0, 1) is refused, naming the setting")
    func shareValidated() {
        for share in [1.0, -0.1, 1.5] {
            #expect(throws: KilnError.self) { try Protection(tiers: ["api"], share: share) }
        }
        #expect((try? Protection(tiers: ["api"], share: 0.9))?.longestProtectedRun == 9)
    }
}
