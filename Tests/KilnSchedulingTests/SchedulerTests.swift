import KilnCore
import KilnScheduling
import Testing

@Suite("SLO policy")
struct SLOPolicyTests {
    @Test("a free job that has waited long enough goes before a newer enterprise job")
    func freeJobOutranksFreshEnterprise() throws {
        var scheduler = Scheduler.standard()
        // Free promises 3600 s, enterprise 60 s. At t=3000 the free job has used 3000/3600 = 0.83 of
        // its promise; an enterprise job queued at t=2990 has used 10/60 = 0.17.
        try scheduler.enqueue(job(1).tier("free").at(0).job)
        try scheduler.enqueue(job(2).tier("enterprise").at(2_990).job)
        do {
            let picked = scheduler.next(for: cpuWorker, now: 3_000)
            #expect(picked?.sequence == 1)
        }
        do {
            let picked = scheduler.next(for: cpuWorker, now: 3_000)
            #expect(picked?.sequence == 2)
        }
    }

    @Test("a fresh enterprise job goes before a free job that has used less of its promise")
    func enterpriseFirstWhileFreeIsYoung() throws {
        var scheduler = Scheduler.standard()
        try scheduler.enqueue(job(1).tier("free").at(0).job)  // 100/3600 = 0.03
        try scheduler.enqueue(job(2).tier("enterprise").at(90).job)  // 10/60 = 0.17
        let order = scheduler.drain(now: 100)
        #expect(order == [2, 1])
    }

    @Test("a steady stream of enterprise jobs does not starve a free job past the moment its urgency is highest")
    func starvationBoundUnderBacklog() throws {
        var scheduler = Scheduler.standard()
        try scheduler.enqueue(job(0).tier("free").at(0).job)
        // A backlog: 100 enterprise jobs queued at t=0..99, one dispatch per second from t=100.
        for i in 1...100 { try scheduler.enqueue(job(Int64(i)).tier("enterprise").at(Double(i - 1)).job) }
        var sequence: Int64 = 101
        var time: Double = 100
        var freeDispatchedAt: Double?
        while freeDispatchedAt == nil, time < 20_000 {
            try scheduler.enqueue(job(sequence).tier("enterprise").at(time).job)
            sequence += 1
            let picked = scheduler.next(for: cpuWorker, now: time)
            let next = try #require(picked)
            scheduler.started(next.sequence)
            scheduler.remove(next.sequence)
            if next.sequence == 0 { freeDispatchedAt = time }
            time += 1
        }
        // The enterprise head waits ~100 s for ever (arrivals = service), urgency 100/60 = 1.67;
        // the free job reaches that urgency at 1.67 × 3600 = 6000 s. It must go then, not later.
        let dispatched = try #require(freeDispatchedAt)
        #expect(dispatched >= 5_900 && dispatched <= 6_100, "free job dispatched at \(dispatched)")
    }

    @Test("ties break by queued time, then by sequence")
    func deterministicTies() throws {
        var first = Scheduler.standard()
        var second = Scheduler.standard()
        let jobs = [
            job(7).tier("api").at(10).job, job(3).tier("api").at(10).job, job(5).tier("unlimited").at(10).job,
            job(4).tier("light").at(10).job, job(9).tier("enterprise").at(10).job,
        ]
        for item in jobs { try first.enqueue(item) }
        for item in jobs.reversed() { try second.enqueue(item) }
        // At queued time every urgency is zero: ties everywhere, so order is by sequence.
        let order = first.drain(now: 10)
        let other = second.drain(now: 10)
        #expect(order == [3, 4, 5, 7, 9])
        #expect(other == order)
    }

    @Test("a retried job keeps its original queued time and goes back ahead of newer ones")
    func requeueKeepsQueuedAt() throws {
        var scheduler = Scheduler.standard()
        try scheduler.enqueue(job(1).tier("api").at(0).job)
        try scheduler.enqueue(job(2).tier("api").at(5).job)
        let firstPick = scheduler.next(for: cpuWorker, now: 10)
        let first = try #require(firstPick)
        #expect(first.sequence == 1)
        try scheduler.enqueue(job(3).tier("api").at(20).job)
        scheduler.requeue(1)
        let againPick = scheduler.next(for: cpuWorker, now: 30)
        let again = try #require(againPick)
        #expect(again.sequence == 1)
        #expect(again.queuedAt == 0)
    }
}

@Suite("Alternative policies")
struct AlternativePolicyTests {
    func scenario(_ policy: any SchedulingPolicy) throws -> [Int64] {
        var scheduler = Scheduler.standard(policy: policy)
        try scheduler.enqueue(job(1).tier("free").at(0).job)  // deadline 3600
        try scheduler.enqueue(job(2).tier("light").at(100).job)  // deadline 1000
        try scheduler.enqueue(job(3).tier("enterprise").at(900).job)  // deadline 960
        try scheduler.enqueue(job(4).tier("api").at(850).job)  // deadline 970
        return scheduler.drain(now: 950)
    }

    @Test func fifo() throws { #expect(try scenario(FIFOPolicy()) == [1, 2, 4, 3]) }
    @Test func strictPriority() throws { #expect(try scenario(StrictPriorityPolicy()) == [3, 4, 2, 1]) }
    @Test func earliestDeadline() throws { #expect(try scenario(EarliestDeadlinePolicy()) == [3, 4, 2, 1]) }

    @Test func slo() throws {
        // Urgencies at 950: free 950/3600 = 0.26, light 850/900 = 0.94, enterprise 50/60 = 0.83,
        // api 100/120 = 0.83 (api queued earlier wins the tie with enterprise? no: 0.8333 each, api
        // at 850 is older than enterprise at 900, so api first).
        #expect(try scenario(SLOPolicy()) == [2, 4, 3, 1])
    }

    /// A policy of the caller's own: the scheduler calls it through the existential, where it calls
    /// the built-in ones directly.
    struct LowestTierFirst: SchedulingPolicy {
        var name: String { "lowest-tier-first" }
        func priority(of head: QueueHead, now: Double) -> Double { Double(head.tierRank) }
    }

    @Test("a policy of the caller's own orders the picks; a policy set later takes over")
    func customPolicy() throws {
        #expect(try scenario(LowestTierFirst()) == [1, 2, 4, 3])
        // At 950 the SLO policy would take api (4), strict priority enterprise (3), this one free (1).
        var scheduler = Scheduler.standard(policy: SLOPolicy())
        try scheduler.enqueue(job(1).tier("free").at(0).job)
        try scheduler.enqueue(job(3).tier("enterprise").at(900).job)
        try scheduler.enqueue(job(4).tier("api").at(850).job)
        scheduler.policy = LowestTierFirst()
        #expect(scheduler.next(for: cpuWorker, now: 950)?.sequence == 1)
        scheduler.policy = StrictPriorityPolicy()
        #expect(scheduler.next(for: cpuWorker, now: 950)?.sequence == 3)
    }

    @Test func policiesByName() throws {
        #expect(try SchedulingPolicies.named("edf").name == "edf")
        #expect(throws: KilnError.self) { try SchedulingPolicies.named("lottery") }
    }
}

@Suite("Eligibility")
struct EligibilityTests {
    @Test("a worker gets only jobs it can run: model, accelerator, GPU count")
    func requirements() throws {
        var scheduler = Scheduler.standard()
        try scheduler.enqueue(job(1).at(0).gpus(4).accelerators(["h100"]).job)
        try scheduler.enqueue(job(2).at(1).model("other").job)
        try scheduler.enqueue(job(3).at(2).job)
        let onlyDemo = WorkerOffer(cluster: "default", accelerator: "cpu", gpus: 0, models: ["demo"])
        do {
            let picked = scheduler.next(for: onlyDemo, now: 10)
            #expect(picked?.sequence == 3)
        }
        do {
            let picked = scheduler.next(for: onlyDemo, now: 10)
            #expect(picked == nil)
        }
        do {
            let picked = scheduler.next(for: gpuWorker, now: 10)
            #expect(picked?.sequence == 1)
        }
        do {
            let picked = scheduler.next(for: cpuWorker, now: 10)
            #expect(picked?.sequence == 2)
        }
    }

    @Test("an account at its running cap is skipped, and its oldest job returns when a slot frees")
    func accountCap() throws {
        var scheduler = Scheduler.standard()  // free: max 2 running per account
        for i in 1...4 { try scheduler.enqueue(job(Int64(i)).tier("free").account("busy").at(Double(i)).job) }
        try scheduler.enqueue(job(10).tier("free").account("other").at(50).job)
        do {
            let picked = scheduler.next(for: cpuWorker, now: 100)
            #expect(picked?.sequence == 1)
        }
        do {
            let picked = scheduler.next(for: cpuWorker, now: 100)
            #expect(picked?.sequence == 2)
        }
        // "busy" is at its cap: its jobs 3 and 4 are passed over for the newer job of "other".
        do {
            let picked = scheduler.next(for: cpuWorker, now: 100)
            #expect(picked?.sequence == 10)
        }
        do {
            let picked = scheduler.next(for: cpuWorker, now: 100)
            #expect(picked == nil)
        }
        #expect(scheduler.isParked(3))
        #expect(scheduler.queuedCount == 2)
        scheduler.remove(1)
        do {
            let picked = scheduler.next(for: cpuWorker, now: 100)
            #expect(picked?.sequence == 3)
        }
        do {
            let picked = scheduler.next(for: cpuWorker, now: 100)
            #expect(picked == nil)
        }
    }

    @Test("accounts registered together get consecutive refs; a known or repeated one is refused and nothing changes")
    func accountsTogether() throws {
        var scheduler = Scheduler.standard()
        try scheduler.enqueue(job(1).tier("free").account("early").at(1).job)
        let refs = try scheduler.accounts([accountID("x"), accountID("y")])
        #expect(refs.count == 2)
        // Jobs enqueued through the refs belong to those accounts: "y" takes its cap of two.
        let queue = try scheduler.queue(tier: "free", requirements: JobRequirements(model: "demo"))
        for sequence in Int64(2)...4 { scheduler.enqueue(sequence, queue: queue, account: refs[1], queuedAt: Double(sequence)) }
        scheduler.enqueue(5, queue: queue, account: refs[0], queuedAt: 5)
        let picked = (0..<5).compactMap { _ in scheduler.next(for: cpuWorker, now: 100) }
        #expect(picked.map(\.sequence) == [1, 2, 3, 5], "y's third job waits: it is at its cap")
        #expect(picked.map(\.account) == [accountID("early"), accountID("y"), accountID("y"), accountID("x")])
        #expect(scheduler.dispatched(for: accountID("y")) == 2)
        #expect(scheduler.isParked(4))

        // "early" is known and "z" is named twice: each call is refused, and what it named is as before.
        let early = scheduler.account(accountID("early"))
        #expect(throws: KilnError.self) { try scheduler.accounts([accountID("w"), accountID("early")]) }
        #expect(throws: KilnError.self) { try scheduler.accounts([accountID("z"), accountID("v"), accountID("z")]) }
        #expect(scheduler.account(accountID("early")) == early, "a known account keeps its ref")
        #expect(scheduler.dispatched(for: accountID("early")) == 1)
        // The refused names were not kept: they register now, and their refs are theirs.
        let next = try scheduler.accounts([accountID("w"), accountID("z"), accountID("v")])
        scheduler.enqueue(6, queue: queue, account: next[1], queuedAt: 6)
        #expect(scheduler.next(for: cpuWorker, now: 100)?.account == accountID("z"))
        #expect(scheduler.dispatched(for: accountID("z")) == 1)
    }

    @Test("a hold counts as a dispatch of its account and cluster until it is given back")
    func holds() throws {
        var scheduler = Scheduler(tiers: .standard, dispatchLimits: ["small": 1], defaultDispatchLimit: 100)
        // free: at most 2 running per account. Two holds for "busy", one of them in "small".
        let busy = accountID("busy")
        scheduler.hold(account: busy, cluster: "small", started: false)
        scheduler.hold(account: busy, cluster: "default", started: true)
        #expect(scheduler.dispatched(for: busy) == 2)
        #expect(scheduler.pending(in: "small") == 1)
        #expect(scheduler.pending(in: "default") == 0, "a hold that starts at once takes no dispatch slot")
        try scheduler.enqueue(job(1).tier("free").account("busy").at(1).job)
        try scheduler.enqueue(job(2).tier("free").account("other").at(2).job)
        let small = WorkerOffer(cluster: "small", accelerator: "cpu", gpus: 0)
        #expect(scheduler.next(for: small, now: 10) == nil, "the hold takes the cluster's one slot")
        #expect(scheduler.next(for: cpuWorker, now: 10)?.sequence == 2, "busy's job waits: its account is at its cap")
        #expect(scheduler.isParked(1))
        scheduler.releaseHold(account: busy, cluster: "small", started: false)
        #expect(scheduler.pending(in: "small") == 0)
        #expect(!scheduler.isParked(1), "a slot of its account is free again")
        #expect(scheduler.next(for: small, now: 10)?.sequence == 1)
        // A hold turned into the job's dispatch: recorded first, then given back.
        try scheduler.recordDispatched(job(3).tier("free").account("busy").at(3).job, cluster: "default", started: true)
        scheduler.releaseHold(account: busy, cluster: "default", started: true)
        #expect(scheduler.dispatched(for: busy) == 2)
    }

    @Test("a cluster at its dispatch limit gets nothing until a leased job starts")
    func dispatchLimit() throws {
        var scheduler = Scheduler(tiers: .standard, dispatchLimits: ["small": 2], defaultDispatchLimit: 100)
        for i in 1...5 { try scheduler.enqueue(job(Int64(i)).at(Double(i)).job) }
        let small = WorkerOffer(cluster: "small", accelerator: "cpu", gpus: 0)
        let firstPick = scheduler.next(for: small, now: 10)
        let first = try #require(firstPick)
        do {
            let picked = scheduler.next(for: small, now: 10)
            #expect(picked != nil)
        }
        do {
            let picked = scheduler.next(for: small, now: 10)
            #expect(picked == nil)
        }
        #expect(scheduler.pending(in: "small") == 2)
        // Another cluster is not held back by this one.
        do {
            let picked = scheduler.next(for: cpuWorker, now: 10)
            #expect(picked != nil)
        }
        scheduler.started(first.sequence)
        do {
            let picked = scheduler.next(for: small, now: 10)
            #expect(picked != nil)
        }
        // A requeued (not started) lease frees its slot too.
        do {
            let picked = scheduler.next(for: small, now: 10)
            #expect(picked == nil)
        }
    }
}

@Suite("Queue views")
struct QueueViewTests {
    @Test("position counts the jobs the policy would dispatch first")
    func positions() throws {
        var scheduler = Scheduler.standard()
        try scheduler.enqueue(job(1).tier("free").at(0).job)
        try scheduler.enqueue(job(2).tier("enterprise").at(90).job)
        try scheduler.enqueue(job(3).tier("enterprise").at(95).job)
        try scheduler.enqueue(job(4).tier("api").at(60).job)
        // At 100: api 40/120 = 0.33, enterprise 10/60 = 0.17 and 5/60 = 0.08, free 100/3600 = 0.03.
        #expect(scheduler.position(of: 4, now: 100) == 0)
        #expect(scheduler.position(of: 2, now: 100) == 1)
        #expect(scheduler.position(of: 3, now: 100) == 2)
        #expect(scheduler.position(of: 1, now: 100) == 3)
        #expect(scheduler.dispatchOrder(now: 100, limit: 10).map(\.sequence) == [4, 2, 3, 1])
        let order = scheduler.drain(now: 100)
        #expect(order == [4, 2, 3, 1])
    }

    @Test("removing queued jobs keeps counts and order")
    func removal() throws {
        var scheduler = Scheduler.standard()
        for i in 1...5 { try scheduler.enqueue(job(Int64(i)).at(Double(i)).job) }
        let removed = scheduler.remove(3)
        let removedAgain = scheduler.remove(3)
        #expect(removed)
        #expect(!removedAgain)
        #expect(scheduler.queuedCount == 4)
        #expect(scheduler.position(of: 4, now: 10) == 2)
        let order = scheduler.drain(now: 10)
        #expect(order == [1, 2, 4, 5])
    }

    @Test("an unknown tier is refused")
    func unknownTier() {
        var scheduler = Scheduler.standard()
        #expect(throws: KilnError.self) { var copy = scheduler; try copy.enqueue(job(1).tier("gold").job) }
    }

    @Test("the summary counts queued and parked jobs per tier and model")
    func summary() throws {
        var scheduler = Scheduler.standard()
        for i in 1...3 { try scheduler.enqueue(job(Int64(i)).tier("free").account("x").at(Double(i)).job) }
        try scheduler.enqueue(job(9).tier("api").at(0).model("other").job)
        // Two of x's jobs dispatch (its free-tier cap); the third is parked on the next pick.
        for _ in 0..<4 { _ = scheduler.next(for: cpuWorker, now: 1) }
        let rows = scheduler.summary(now: 363)  // the parked job was queued at 3: 360 / 3600
        #expect(rows.count == 1)
        let row = try #require(rows.first)
        #expect(row.tier == "free")
        #expect(row.model == "demo")
        #expect(row.queued == 1)
        #expect(row.parked == 1)
        #expect(row.maxUrgency == 0.1)
    }
}

@Suite("Throughput")
struct ThroughputTests {
    @Test func rateAndETA() {
        var estimator = ThroughputEstimator(window: 100)
        let initial = estimator.rate(now: 0)
        #expect(initial == nil)
        for t in stride(from: 0.0, through: 10, by: 1) { estimator.record(at: t) }
        // 11 events over 10 s.
        let rate = estimator.rate(now: 10)
        let eta = estimator.eta(position: 10, now: 10)
        #expect(rate == 1.1)
        #expect(eta == 10)
        // Past the window, old events no longer count.
        let late = estimator.rate(now: 200)
        #expect(late == nil)
    }
}
