import KilnFleet
import Testing

/// A fleet of `workers` active workers in one H100 pool, the first `onA` placed on workload 0 and
/// the rest on workload 1, all placed at time 0.
private func fleet(workers: Int, onA: Int, pool: CapacityPool) -> [FleetWorker] {
    (0..<workers).map { FleetWorker(id: $0, pool: 0, assignment: $0 < onA ? 0 : 1, assignedAt: 0) }
}

private func workload(_ id: String, queued: Int = 0, oldest: Double = 0, maxWait: Double = 300, arrivals: Int = 0, running: Int = 0)
    -> Workload
{
    Workload(
        id: id, accelerators: ["h100"], gpus: 1,
        backlog: queued > 0 ? [Backlog(tier: "api", jobs: queued, oldestQueuedAt: oldest, maxWait: maxWait)] : [],
        running: running, arrivals: arrivals, defaultRunSeconds: 60, switchSeconds: 30)
}

/// Applies a decision to the state the way a shell would, at once (no provisioning delay).
private func apply(_ decision: FleetDecision, to state: inout FleetState, now: Double, nextID: inout Int) {
    for action in decision.actions {
        switch action.kind {
        case .provision(let pool, let count):
            for _ in 0..<count {
                state.workers.append(FleetWorker(id: nextID, pool: pool, assignedAt: now))
                nextID += 1
            }
        case .drain(let worker, let deadline):
            if let index = state.workers.firstIndex(where: { $0.id == worker }) {
                state.workers[index].state = .draining
                state.workers[index].drainDeadline = deadline
            }
        case .release(let worker), .retire(let worker):
            state.workers.removeAll { $0.id == worker }
        case .assign(let worker, let workload):
            if let index = state.workers.firstIndex(where: { $0.id == worker }) {
                state.workers[index].assignment = workload
                state.workers[index].assignedAt = now
            }
        }
    }
}

private func moves(_ decision: FleetDecision) -> [Int] {
    decision.actions.compactMap { if case .assign(let worker, _) = $0.kind { worker } else { nil } }
}

@Suite("Fleet controller")
struct FleetControllerTests {
    let fixed = CapacityPool(name: "h100", accelerator: "h100", minWorkers: 10, maxWorkers: 10, cooldownSeconds: 60)

    @Test("a burst of one model's demand moves workers to it, and they move back after it, without flapping")
    func burstMovesWorkersAndBack() {
        var controller = FleetController()
        var state = FleetState(pools: [fixed], workloads: [workload("a"), workload("b")], workers: fleet(workers: 10, onA: 5, pool: fixed))
        var nextID = 100
        var moved: [Int: [Double]] = [:]
        var arrivals = (a: 0, b: 0)
        // Both models get 2 jobs a minute; from 10 to 20 min, model a gets 60 more a minute.
        for tick in 0..<240 {
            let now = 1_000 + Double(tick) * 15
            let minute = (now - 1_000) / 60
            arrivals.a += (minute >= 10 && minute < 20 ? 15 : 0) + (tick % 2 == 0 ? 1 : 0)
            arrivals.b += tick % 2 == 0 ? 1 : 0
            let burst = minute >= 10 && minute < 20
            state.workloads = [
                workload("a", queued: burst ? 300 : 1, oldest: now - 20, arrivals: arrivals.a, running: 4),
                workload("b", queued: 1, oldest: now - 20, arrivals: arrivals.b, running: 3),
            ]
            let decision = controller.decide(state, now: now)
            for worker in moves(decision) { moved[worker, default: []].append(now) }
            apply(decision, to: &state, now: now, nextID: &nextID)
            if tick == 48 {
                // Two minutes into the burst: a has taken workers from b.
                #expect(state.workers.filter { $0.assignment == 0 }.count >= 8)
            }
        }
        // At the end, b has its share back.
        #expect(state.workers.filter { $0.assignment == 1 }.count >= 3)
        // No worker moved twice within the dwell time.
        for times in moved.values where times.count > 1 {
            for (earlier, later) in zip(times, times.dropFirst()) { #expect(later - earlier >= controller.settings.dwellSeconds) }
        }
        #expect(state.workers.count == 10)  // a fixed pool: min = max
    }

    @Test("a steady demand near a boundary moves nobody")
    func noFlappingAtBoundary() {
        var controller = FleetController()
        var state = FleetState(pools: [fixed], workloads: [], workers: fleet(workers: 10, onA: 5, pool: fixed))
        var nextID = 100
        var total = 0
        for tick in 0..<400 {
            let now = 1_000 + Double(tick) * 15
            // Backlogs that wobble by a job around an even split.
            let wobble = tick % 2
            state.workloads = [
                workload("a", queued: 40 + wobble, oldest: now - 100, running: 5),
                workload("b", queued: 40 - wobble, oldest: now - 100, running: 5),
            ]
            let decision = controller.decide(state, now: now)
            total += moves(decision).count
            apply(decision, to: &state, now: now, nextID: &nextID)
        }
        #expect(total == 0)
    }

    @Test("a pool grows at once when a promise is at risk, says why, and shrinks only after its cool-down")
    func upAtOnceDownAfterCooldown() throws {
        let pool = CapacityPool(name: "h100", accelerator: "h100", minWorkers: 1, maxWorkers: 4, cooldownSeconds: 60)
        var controller = FleetController()
        var state = FleetState(pools: [pool], workloads: [workload("a")], workers: [FleetWorker(id: 0, pool: 0, assignment: 0)])
        var nextID = 1
        // 20 api jobs of 60 s, the oldest 200 s old: 100 s left on a 300 s promise.
        state.workloads = [workload("a", queued: 20, oldest: 800, arrivals: 20)]
        let up = controller.decide(state, now: 1_000)
        #expect(up.pools[0].desired == 4)
        #expect(up.pools[0].reason == "api promise at risk in 2 min (a): +3 (at max 4)")
        #expect(up.actions.contains(FleetAction(.provision(pool: 0, workers: 3), reason: up.pools[0].reason)))
        apply(up, to: &state, now: 1_000, nextID: &nextID)
        #expect(state.workers.count == 4)

        // The queue empties: the pool holds its size through the cool-down, then shrinks to min.
        state.workloads = [workload("a", arrivals: 20)]
        for now in stride(from: 1_015.0, through: 1_055, by: 15) {
            let held = controller.decide(state, now: now)
            #expect(held.pools[0].desired == 4, "at \(now)")
            #expect(!held.actions.contains { if case .retire = $0.kind { true } else { false } })
        }
        let down = controller.decide(state, now: 1_075)
        #expect(down.pools[0].desired == 1)
        #expect(down.pools[0].reason.hasSuffix("for 60 s: −3 (at min 1)"))
        apply(down, to: &state, now: 1_075, nextID: &nextID)
        #expect(state.workers.count == 1)
    }

    @Test("a shrinking pool drains busy workers, releases their jobs only after the grace, retires the idle at once")
    func drainAndRelease() {
        let pool = CapacityPool(
            name: "h100", accelerator: "h100", minWorkers: 0, maxWorkers: 4, cooldownSeconds: 0, drainGraceSeconds: 120)
        var controller = FleetController()
        let workers = [
            FleetWorker(id: 0, pool: 0, assignment: 0, running: 1),
            FleetWorker(id: 1, pool: 0, assignment: 0, running: 0),
            FleetWorker(id: 2, pool: 0, state: .provisioning, assignment: nil),
        ]
        var state = FleetState(pools: [pool], workloads: [workload("a")], workers: workers)
        var nextID = 10
        let first = controller.decide(state, now: 1_000)
        #expect(first.pools[0].desired == 0)
        #expect(first.actions.contains { $0.kind == .retire(worker: 2) })  // still provisioning: cancelled
        #expect(first.actions.contains { $0.kind == .retire(worker: 1) })  // idle
        #expect(first.actions.contains { $0.kind == .drain(worker: 0, deadline: 1_120) })  // busy: drains
        apply(first, to: &state, now: 1_000, nextID: &nextID)
        #expect(state.workers.map(\.id) == [0])

        // Within the grace the busy worker keeps its job.
        let during = controller.decide(state, now: 1_100)
        #expect(during.actions.isEmpty)
        // After it, its job is released (returned to the queue, charged no attempt by the shell).
        let after = controller.decide(state, now: 1_120)
        #expect(after.actions.map(\.kind) == [.release(worker: 0)])
        // A draining worker that finished in time simply retires.
        state.workers[0].running = 0
        #expect(controller.decide(state, now: 1_110).actions.map(\.kind) == [.retire(worker: 0)])
    }

    @Test("no decision goes past max or below min, whatever the demand")
    func withinBounds() {
        var random: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next(_ bound: Int) -> Int {
            random = random &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((random >> 33) % UInt64(bound))
        }
        let pools = [
            CapacityPool(name: "p", accelerator: "h100", minWorkers: 2, maxWorkers: 7, cooldownSeconds: 30),
            CapacityPool(name: "b", kind: .burst, accelerator: "h100", minWorkers: 0, maxWorkers: 5, cooldownSeconds: 30),
        ]
        var controller = FleetController()
        var state = FleetState(pools: pools, workloads: [], workers: [])
        var nextID = 0
        var arrivals = [0, 0, 0]
        for tick in 0..<500 {
            let now = Double(tick) * 10
            for index in arrivals.indices { arrivals[index] += next(30) }
            state.workloads = (0..<3).map { index in
                workload("m\(index)", queued: next(4) == 0 ? next(500) : 0, oldest: now - Double(next(600)), arrivals: arrivals[index])
            }
            for index in state.workers.indices { state.workers[index].running = next(2) }
            let decision = controller.decide(state, now: now)
            for (index, pool) in pools.enumerated() {
                let size = decision.pools[index]
                #expect(size.desired >= pool.minWorkers && size.desired <= pool.maxWorkers)
            }
            apply(decision, to: &state, now: now, nextID: &nextID)
            for index in pools.indices {
                let counted = state.workers.filter { $0.pool == index && $0.state != .draining }.count
                #expect(counted == decision.pools[index].desired)
            }
            // Provisioned workers arrive.
            for index in state.workers.indices where state.workers[index].state == .provisioning {
                state.workers[index].state = .active
            }
        }
    }

    @Test("the burst pool is filled last and given back first")
    func burstLastGivenBackFirst() {
        let pools = [
            CapacityPool(name: "burst", kind: .burst, accelerator: "h100", maxWorkers: 10, cooldownSeconds: 0),
            CapacityPool(name: "primary", accelerator: "h100", maxWorkers: 10, cooldownSeconds: 0),
        ]
        var controller = FleetController()
        // 600 jobs of 60 s, 100 s from breaking: 6 jobs/s × 60 s = 360 workers wanted.
        var state = FleetState(pools: pools, workloads: [workload("a", queued: 600, oldest: 800)], workers: [])
        let peak = controller.decide(state, now: 1_000)
        #expect(peak.pools.map(\.desired) == [10, 10])
        // A smaller backlog fits in the primary pool: the burst pool goes to zero first.
        state.workloads = [workload("a", queued: 5, oldest: 990)]
        let trough = controller.decide(state, now: 1_010)
        #expect(trough.pools[0].desired == 0)
        #expect(trough.pools[1].desired > 0)
    }

    @Test("placement keeps workers on the version they have and puts new workers on the deficit")
    func prefersWorkersThatHaveTheVersion() {
        let pool = CapacityPool(name: "h100", accelerator: "h100", minWorkers: 0, maxWorkers: 8, cooldownSeconds: 60)
        var controller = FleetController()
        // Four workers on a (busy), none on b; b gets a backlog that needs four more workers.
        let workers = (0..<4).map { FleetWorker(id: $0, pool: 0, assignment: 0, assignedAt: 0, running: 1) }
        var state = FleetState(
            pools: [pool],
            workloads: [workload("a", running: 4), workload("b", queued: 40, oldest: 990, maxWait: 600)], workers: workers)
        var nextID = 10
        let grow = controller.decide(state, now: 1_000)
        #expect(moves(grow).isEmpty)  // nobody is assigned yet: the new workers are still provisioning
        apply(grow, to: &state, now: 1_000, nextID: &nextID)
        let added = state.workers.filter { $0.id >= 10 }
        #expect(!added.isEmpty)
        let placed = controller.decide(state, now: 1_015)
        // The new workers go to b; a's workers stay where they are.
        for action in placed.actions {
            guard case .assign(let worker, let target) = action.kind else { continue }
            #expect(worker >= 10)
            #expect(target == 1)
        }
        #expect(moves(placed).count == added.count)
    }

    @Test("a workload with a backlog and no worker takes one at once, despite the dwell time")
    func starvingWorkloadGetsAWorker() {
        var controller = FleetController()
        let workers = (0..<10).map { FleetWorker(id: $0, pool: 0, assignment: 0, assignedAt: 990, running: 0) }
        let state = FleetState(
            pools: [fixed], workloads: [workload("a", queued: 50, oldest: 990), workload("b", queued: 3, oldest: 900)],
            workers: workers)
        let decision = controller.decide(state, now: 1_000)
        let toB = decision.actions.filter { if case .assign(_, 1) = $0.kind { true } else { false } }
        #expect(toB.count >= 1)
        #expect(toB[0].reason.hasPrefix("b moves from a"))
    }

    @Test("arrivals that stop stop holding capacity: a window without one, then the cool-down, and a pool of min 0 is empty")
    func arrivalsThatStop() {
        let pool = CapacityPool(name: "burst", kind: .burst, accelerator: "h100", minWorkers: 0, maxWorkers: 4, cooldownSeconds: 30)
        var controller = FleetController(settings: .init(rateWindowSeconds: 60))
        var state = FleetState(pools: [pool], workloads: [workload("a", arrivals: 0)], workers: [])
        var nextID = 0
        var arrivals = 0
        var last = FleetDecision()
        for tick in 0..<40 {
            let now = 1_000 + Double(tick) * 5
            if tick < 10 { arrivals += 2 }  // a job every 2.5 s for the first 50 s, then none
            state.workloads = [workload("a", arrivals: arrivals)]
            last = controller.decide(state, now: now)
            apply(last, to: &state, now: now, nextID: &nextID)
            if tick == 9 { #expect(last.pools[0].desired >= 1, "arriving work holds a worker") }
        }
        // 150 s after the last arrival: the 60 s window, then the 30 s cool-down, have passed.
        #expect(last.pools[0].desired == 0)
        #expect(state.workers.isEmpty)
        #expect(controller.arrivalRate(of: "a") == 0)
    }

    @Test("a pool whose capacity takes long to come back grows ahead of a rising demand; a falling one shrinks nothing early")
    func leadTimeFollowsTheTrend() {
        // Two pools alike but for the time their workers take to arrive: 0, and 10 min (capacity
        // lent to training, taken back by preemption). No cool-down, so `desired` is the raw need.
        func pool(_ provision: Double) -> CapacityPool {
            CapacityPool(
                name: "h100", accelerator: "h100", minWorkers: 2, maxWorkers: 500, cooldownSeconds: 0, provisionSeconds: provision,
                lends: true)
        }
        var prompt = FleetController()
        var ahead = FleetController()
        var arrivals = 0.0
        var rising: (prompt: Int, ahead: Int) = (0, 0)
        var falling: [(prompt: Int, ahead: Int)] = []
        // 40 min of a demand rising from 0.1 to 1.3 jobs/s, then 20 min falling back to 0.3.
        for tick in 0..<720 {
            let time = Double(tick) * 5
            let rate = time < 2_400 ? 0.1 + 1.2 * time / 2_400 : max(0.3, 1.3 - (time - 2_400) / 1_200)
            arrivals += rate * 5
            let workloads = [workload("a", arrivals: Int(arrivals))]
            let a = prompt.decide(FleetState(pools: [pool(0)], workloads: workloads, workers: []), now: time)
            let b = ahead.decide(FleetState(pools: [pool(600)], workloads: workloads, workers: []), now: time)
            if tick == 479 { rising = (a.pools[0].desired, b.pools[0].desired) }
            if tick >= 600 { falling.append((a.pools[0].desired, b.pools[0].desired)) }
        }
        // At 40 min the rate is 1.3 jobs/s and rising by 0.03 a minute: 10 min ahead, the pool must
        // already hold what 1.6 jobs/s of 60 s each need (96 workers), not what the lagging
        // average needs now.
        #expect(rising.prompt < 96, "the prompt pool follows the average: \(rising.prompt)")
        #expect(rising.ahead >= 96, "the pool that takes 10 min to grow is sized for 10 min ahead: \(rising.ahead)")
        #expect(falling.allSatisfy { $0.prompt == $0.ahead }, "a falling trend shrinks no pool earlier: \(falling.prefix(5))")
    }

    @Test("a lending pool lends what it does not need above its floor, and says how much")
    func lendingAboveTheFloor() {
        let pool = CapacityPool(name: "shared", accelerator: "h100", minWorkers: 3, maxWorkers: 12, cooldownSeconds: 0, lends: true)
        var controller = FleetController(settings: .init(rateWindowSeconds: 60))
        var state = FleetState(pools: [pool], workloads: [workload("a", queued: 100, oldest: 0)], workers: [])
        var nextID = 0
        let busy = controller.decide(state, now: 100)
        #expect(busy.pools[0].desired == 12)
        #expect(busy.pools[0].lent == 0)
        apply(busy, to: &state, now: 100, nextID: &nextID)
        // The backlog is gone and nothing arrives: down to the floor, the rest lent.
        state.workloads = [workload("a")]
        let trough = controller.decide(state, now: 400)
        apply(trough, to: &state, now: 400, nextID: &nextID)
        #expect(trough.pools[0].desired == 3)
        #expect(trough.pools[0].lent == 9)
        #expect(state.workers.count == 3, "the floor is never lent")
        // A pool that does not lend reports nothing lent at the same size.
        var own = pool
        own.lends = false
        var other = FleetController()
        let plain = other.decide(FleetState(pools: [own], workloads: [workload("a")], workers: state.workers), now: 400)
        #expect(plain.pools[0].lent == 0)
    }
}
