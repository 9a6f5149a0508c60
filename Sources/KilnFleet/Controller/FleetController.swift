import Foundation

/// Placement and autoscaling (DESIGN §5) as a pure decision: state and `now` in, actions out.
///
/// The shell (the server's fleet service, or the simulator) calls ``decide(_:now:)`` every tick and
/// performs the actions through a provider; no I/O and no clock live here. One tick:
///
/// 1. **Demand.** Per workload, the dispatch rate that keeps every promise: the arrival rate
///    (estimated from the `arrivals` counter) with headroom, plus each tier's backlog spread over
///    the time left before its oldest job breaks its promise (at least
///    ``Settings/minimumHorizonSeconds``, at most the promise). A pool whose workers take
///    ``CapacityPool/provisionSeconds`` to arrive is sized for the arrival rate its trend
///    reaches by then, so that capacity lent out or borrowed comes back before a rising demand
///    puts a promise at risk.
/// 2. **Allocation.** Pools are filled in order, primary before burst; where a pool cannot hold
///    every workload's need, each gets a share in proportion to its need. The rest spills to the
///    next pool that can run it.
/// 3. **Size.** A pool's recommended size is its allocation within min and max. It grows to a
///    higher recommendation at once and shrinks only to the highest recommendation of the last
///    ``CapacityPool/cooldownSeconds`` (a stabilisation window), so a dip does not drain it.
/// 4. **Shrinking.** Workers still provisioning leave first, then idle ones, then busy ones, which
///    drain: they finish their jobs within the pool's grace, after which the jobs are released.
/// 5. **Placement.** Within a pool, the allocation sets how many workers each workload should
///    have. New workers go where the deficit is; a worker moves from a workload with more than its
///    share only when the move pays for its switch, has not moved within
///    ``Settings/dwellSeconds``, and the donor is over its share by more than a band: hysteresis,
///    so no worker flaps. A workload with a backlog and no worker at all takes one regardless.
///
/// Memory kept between ticks: the arrival-rate estimates and each pool's recent recommendations.
/// Losing it (a restart, a new leader) only makes the first ticks cautious: a pool first seen is
/// held at its current size for one cool-down.
public struct FleetController: Sendable {
    public struct Settings: Hashable, Sendable {
        /// The shortest time over which a backlog is planned to clear: how hard a broken promise
        /// pulls capacity.
        public var minimumHorizonSeconds: Double
        /// Capacity kept above the arrival rate's steady need (1.2: 20 % more).
        public var headroom: Double
        /// Time constant of the arrival-rate estimate.
        public var rateWindowSeconds: Double
        /// A worker that moved stays on its workload at least this long.
        public var dwellSeconds: Double
        /// A donor workload keeps this share of its target above it before it gives a worker away.
        public var band: Double

        public init(
            minimumHorizonSeconds: Double = 60, headroom: Double = 1.2, rateWindowSeconds: Double = 300, dwellSeconds: Double = 300,
            band: Double = 0.1
        ) {
            self.minimumHorizonSeconds = minimumHorizonSeconds
            self.headroom = headroom
            self.rateWindowSeconds = rateWindowSeconds
            self.dwellSeconds = dwellSeconds
            self.band = band
        }
    }

    struct RateEstimate: Sendable {
        var count: Int
        var time: Double
        var rate: Double
        /// The rate's trend, in jobs per second per second (double exponential smoothing).
        var slope: Double
        /// When the counter last grew.
        var lastArrival: Double
    }

    public var settings: Settings
    /// By workload id.
    private var rates: [String: RateEstimate] = [:]
    /// By pool name: (time, recommended workers), oldest first, within the pool's cool-down.
    private var recommendations: [String: [(time: Double, workers: Int)]] = [:]

    public init(settings: Settings = Settings()) {
        self.settings = settings
    }

    /// The arrival rate the controller estimates for a workload, in jobs per second.
    public func arrivalRate(of workload: String) -> Double { rates[workload]?.rate ?? 0 }

    /// The arrival rate the controller expects `seconds` ahead: the estimate and its trend when
    /// rising, never below the estimate (a falling trend shrinks nothing early).
    public func arrivalRate(of workload: String, ahead seconds: Double) -> Double {
        guard let estimate = rates[workload] else { return 0 }
        return estimate.rate + max(0, estimate.slope) * seconds
    }

    /// One tick. Actions refer to pools and workloads by their index in `state`, to workers by
    /// their ``FleetWorker/id``.
    public mutating func decide(_ state: FleetState, now: Double) -> FleetDecision {
        let pools = state.pools
        let workloads = state.workloads
        // 1. Demand.
        observeArrivals(workloads, now: now)
        let demands = workloads.map { demand(of: $0, now: now) }
        // 2. Allocation: fractional workers per pool and workload.
        let (allocation, wanted) = allocate(demands, workloads: workloads, pools: pools)

        var workersByPool = Array(repeating: [Int](), count: pools.count)
        for (index, worker) in state.workers.enumerated() where pools.indices.contains(worker.pool) {
            workersByPool[worker.pool].append(index)
        }
        var decision = FleetDecision()
        for pool in pools.indices {
            let spec = pools[pool]
            let members = workersByPool[pool]
            // 3. Size.
            let counted = members.filter { state.workers[$0].state != .draining }
            let actual = counted.count
            let needed = allocation[pool].reduce(0, +)
            let raw = min(max(Int((needed - 1e-9).rounded(.up)), spec.minWorkers), spec.maxWorkers)
            let desired = stabilised(raw, pool: spec, actual: actual, now: now)
            decision.pools.append(
                PoolDecision(
                    pool: pool, actual: actual, desired: desired, lent: spec.lends ? spec.maxWorkers - desired : 0,
                    reason: reason(
                        pool: spec, actual: actual, desired: desired, raw: raw, needed: needed, wanted: wanted[pool],
                        allocation: allocation[pool],
                        demands: demands, workloads: workloads, now: now)))
            if desired > actual {
                decision.actions.append(
                    FleetAction(.provision(pool: pool, workers: desired - actual), reason: decision.pools.last!.reason))
            }
            // 4. Shrinking, and the drains under way.
            var leaving = Set<Int>()
            if desired < actual {
                for index in victims(counted, count: actual - desired, state: state, allocation: allocation[pool]) {
                    let worker = state.workers[index]
                    leaving.insert(index)
                    if worker.state == .provisioning || worker.running == 0 {
                        decision.actions.append(FleetAction(.retire(worker: worker.id), reason: decision.pools.last!.reason))
                    } else {
                        decision.actions.append(
                            FleetAction(
                                .drain(worker: worker.id, deadline: now + spec.drainGraceSeconds), reason: decision.pools.last!.reason))
                    }
                }
            }
            for index in members where state.workers[index].state == .draining {
                let worker = state.workers[index]
                if worker.running == 0 {
                    decision.actions.append(FleetAction(.retire(worker: worker.id), reason: "drained"))
                } else if let deadline = worker.drainDeadline, deadline <= now {
                    decision.actions.append(
                        FleetAction(
                            .release(worker: worker.id),
                            reason: "drain grace of \(Self.duration(spec.drainGraceSeconds)) over: its jobs return to the queue"))
                }
            }
            // 5. Placement.
            let staying = leaving.isEmpty ? counted : counted.filter { !leaving.contains($0) }
            decision.actions += place(
                staying, capacity: max(desired, staying.count), pool: pool, state: state, allocation: allocation[pool],
                demands: demands, now: now)
        }
        return decision
    }

    // MARK: - Demand

    struct Demand {
        /// Jobs per second arriving, as estimated now.
        var rate: Double
        /// The estimate's trend when rising (0 otherwise), in jobs per second per second.
        var rising: Double
        /// Jobs per second that clear the backlog within its horizon.
        var backlogRate: Double
        /// Workers its running jobs hold now.
        var running: Int
        /// The tier whose promise is closest to breaking, and its slack (nil: no backlog).
        var pressingTier: String?
        var slack: Double?
        var backlog: Int

        /// The arrival rate expected `seconds` ahead, with headroom.
        func steadyRate(ahead seconds: Double, headroom: Double) -> Double { (rate + rising * seconds) * headroom }
    }

    private mutating func observeArrivals(_ workloads: [Workload], now: Double) {
        var next: [String: RateEstimate] = [:]
        for workload in workloads {
            guard var estimate = rates[workload.id], workload.arrivals >= estimate.count else {
                next[workload.id] = RateEstimate(count: workload.arrivals, time: now, rate: 0, slope: 0, lastArrival: now)
                continue
            }
            let elapsed = now - estimate.time
            if elapsed > 0 {
                let instant = Double(workload.arrivals - estimate.count) / elapsed
                let weight = 1 - exp(-elapsed / settings.rateWindowSeconds)
                let previous = estimate.rate
                estimate.rate += weight * (instant - estimate.rate)
                // The trend is the smoothed change of the smoothed rate, over the same window.
                estimate.slope += weight * ((estimate.rate - previous) / elapsed - estimate.slope)
                if workload.arrivals > estimate.count { estimate.lastArrival = now }
                estimate.count = workload.arrivals
                estimate.time = now
            }
            // An average never quite reaches zero: a whole window without an arrival is no rate at
            // all, or a pool whose demand is gone would keep its last worker for ever.
            if now - estimate.lastArrival >= settings.rateWindowSeconds {
                estimate.rate = 0
                estimate.slope = 0
            }
            next[workload.id] = estimate
        }
        rates = next
    }

    private func demand(of workload: Workload, now: Double) -> Demand {
        var rate = 0.0
        var pressing: (tier: String, slack: Double)?
        var backlog = 0
        for tier in workload.backlog where tier.jobs > 0 {
            let slack = tier.slack(now: now)
            let horizon = min(tier.maxWait, max(settings.minimumHorizonSeconds, slack))
            rate += Double(tier.jobs) / horizon
            backlog += tier.jobs
            if pressing.map({ slack < $0.slack }) ?? true { pressing = (tier.tier, slack) }
        }
        let estimate = rates[workload.id]
        return Demand(
            rate: estimate?.rate ?? 0, rising: max(0, estimate?.slope ?? 0), backlogRate: rate, running: workload.running,
            pressingTier: pressing?.tier, slack: pressing?.slack, backlog: backlog)
    }

    // MARK: - Allocation

    /// Fractional workers by pool, then workload, and the workers each pool was asked for before
    /// its max. Pools are filled primary first, then burst, each in the order given; a pool short of
    /// room shares it in proportion to need.
    private func allocate(_ demands: [Demand], workloads: [Workload], pools: [CapacityPool]) -> ([[Double]], [Double]) {
        var allocation = Array(repeating: Array(repeating: 0.0, count: workloads.count), count: pools.count)
        var wanted = Array(repeating: 0.0, count: pools.count)
        // The part of each workload's demand still to place.
        var remaining = Array(repeating: 1.0, count: workloads.count)
        let order = pools.indices.sorted { a, b in
            pools[a].kind != pools[b].kind ? pools[a].kind == .primary : a < b
        }
        for pool in order {
            let spec = pools[pool]
            var wants = Array(repeating: 0.0, count: workloads.count)
            for index in workloads.indices where workloads[index].runs(on: spec) && remaining[index] > 0 {
                let run = workloads[index].runSeconds(on: spec)
                let demand = demands[index]
                // Workers for the steady rate expected by the time new ones arrive, or for the jobs
                // running now, whichever is more, and more for the backlog.
                let steady = demand.steadyRate(ahead: spec.provisionSeconds, headroom: settings.headroom)
                wants[index] = remaining[index] * (max(steady * run, Double(demand.running)) + demand.backlogRate * run)
            }
            let total = wants.reduce(0, +)
            wanted[pool] = total
            guard total > 0 else { continue }
            let share = min(1, Double(spec.maxWorkers) / total)
            for index in workloads.indices where wants[index] > 0 {
                allocation[pool][index] = wants[index] * share
                // What this pool took, it took of each part alike; the rest spills over.
                remaining[index] *= 1 - share
            }
        }
        return (allocation, wanted)
    }

    // MARK: - Size

    /// `raw` after the pool's stabilisation window: up at once, down only to the highest
    /// recommendation of the last cool-down, within the pool's bounds (which may have changed
    /// since: a lower max applies at once).
    private mutating func stabilised(_ raw: Int, pool: CapacityPool, actual: Int, now: Double) -> Int {
        guard pool.cooldownSeconds > 0 else { return raw }
        var history = recommendations[pool.name] ?? [(now, actual)]
        history.removeAll { $0.time < now - pool.cooldownSeconds }
        history.append((now, raw))
        recommendations[pool.name] = history
        return min(max(history.map(\.workers).max() ?? raw, pool.minWorkers), pool.maxWorkers)
    }

    /// Which workers leave a shrinking pool: still provisioning first, then idle, then busy; within
    /// each, those of the workload with the most workers for its need, then the newest.
    private func victims(_ candidates: [Int], count: Int, state: FleetState, allocation: [Double]) -> [Int] {
        var assigned = Array(repeating: 0, count: state.workloads.count)
        for index in candidates {
            if let workload = state.workers[index].assignment, assigned.indices.contains(workload) { assigned[workload] += 1 }
        }
        func excess(_ worker: FleetWorker) -> Double {
            guard let workload = worker.assignment, assigned.indices.contains(workload) else { return .infinity }
            return Double(assigned[workload]) - allocation[workload]
        }
        func stage(_ worker: FleetWorker) -> Int { worker.state == .provisioning ? 0 : worker.running == 0 ? 1 : 2 }
        // Each candidate's key worked out once, not at each of the sort's comparisons.
        let ranked = candidates.map { index in
            let worker = state.workers[index]
            return (stage: stage(worker), excess: excess(worker), id: worker.id, index: index)
        }.sorted { a, b in
            if a.stage != b.stage { return a.stage < b.stage }
            if a.excess != b.excess { return a.excess > b.excess }
            return a.id > b.id
        }
        return ranked.prefix(count).map(\.index)
    }

    // MARK: - Reasons

    private func reason(
        pool: CapacityPool, actual: Int, desired: Int, raw: Int, needed: Double, wanted: Double, allocation: [Double],
        demands: [Demand],
        workloads: [Workload], now: Double
    ) -> String {
        // The most pressing backlog among the workloads this pool serves.
        var driver: (tier: String, slack: Double, workload: String)?
        for index in workloads.indices where allocation[index] > 0 {
            guard let tier = demands[index].pressingTier, let slack = demands[index].slack else { continue }
            if driver.map({ slack < $0.slack }) ?? true { driver = (tier, slack, workloads[index].id) }
        }
        let cause: String
        if let driver {
            cause =
                driver.slack < 0
                ? "\(driver.tier) promise broken \(Self.duration(-driver.slack)) ago (\(driver.workload))"
                : "\(driver.tier) promise at risk in \(Self.duration(driver.slack)) (\(driver.workload))"
        } else if wanted > 0 {
            cause = "demand needs \(Self.count(wanted)) workers"
        } else {
            cause = "no demand"
        }
        var limit = ""
        if raw == pool.maxWorkers, wanted > Double(pool.maxWorkers) { limit = " (at max \(pool.maxWorkers))" }
        if raw == pool.minWorkers, needed < Double(pool.minWorkers) { limit = " (at min \(pool.minWorkers))" }
        if desired > actual { return "\(cause): +\(desired - actual)\(limit)" }
        if desired < actual {
            return "\(cause) for \(Self.duration(pool.cooldownSeconds)): −\(actual - desired)\(limit)"
        }
        if raw < desired { return "\(cause); held at \(desired) for the \(Self.duration(pool.cooldownSeconds)) cool-down" }
        return "\(cause): steady at \(desired)\(limit)"
    }

    static func duration(_ seconds: Double) -> String {
        if seconds < 90 { return "\(Int(seconds.rounded())) s" }
        if seconds < 5400 { return "\(Int((seconds / 60).rounded())) min" }
        return String(format: "%.1f h", seconds / 3600)
    }

    static func count(_ value: Double) -> String {
        value < 10 ? String(format: "%.1f", value) : "\(Int(value.rounded()))"
    }
}
