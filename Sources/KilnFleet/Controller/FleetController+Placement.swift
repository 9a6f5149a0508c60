extension FleetController {
    /// Step 5 for one pool: the workload each of `members` (indices in `state.workers`) serves.
    ///
    /// 1. The pool's allocation, scaled to the workers it has, becomes a whole target per workload.
    /// 2. Workers with no (valid) assignment go to the most urgent deficits, then to the workload
    ///    with the most need per worker.
    /// 3. A deficit is filled by moving a worker from the workload furthest over its target, when
    ///    the donor is over by more than its band, the worker has dwelt long enough (idle workers
    ///    first, then the longest-placed), and the deficit's backlog per worker outlasts a switch.
    ///    A workload with a backlog and no worker takes one from any donor over its target.
    ///
    /// Targets are set for `capacity` workers (the pool's desired size), so that while new workers
    /// are on their way the deficit waits for them rather than pulling placed workers over.
    func place(
        _ members: [Int], capacity: Int, pool: Int, state: FleetState, allocation: [Double], demands: [Demand], now: Double
    ) -> [FleetAction] {
        let spec = state.pools[pool]
        let workloads = state.workloads
        let total = allocation.reduce(0, +)
        guard total > 0, !members.isEmpty else { return [] }
        let scale = min(1, Double(capacity) / total)
        var targets = Self.apportion(
            allocation.map { $0 * scale }, total: min(capacity, Int((total * scale - 1e-9).rounded(.up))))
        // Nobody starves: every workload with demand keeps at least one worker while others have two.
        for workload in workloads.indices where allocation[workload] > 0 && targets[workload] == 0 {
            guard let richest = targets.indices.max(by: { targets[$0] < targets[$1] }), targets[richest] > 1 else { break }
            targets[richest] -= 1
            targets[workload] = 1
        }

        // Once per workload, not per worker: a workload's accelerators are a set of strings.
        let runsHere = workloads.map { $0.runs(on: spec) }
        var idle = Array(repeating: [Int](), count: workloads.count)
        var busy = Array(repeating: [Int](), count: workloads.count)
        var unassigned: [Int] = []
        for index in members {
            let worker = state.workers[index]
            if let workload = worker.assignment, workloads.indices.contains(workload), runsHere[workload] {
                if worker.running == 0 { idle[workload].append(index) } else { busy[workload].append(index) }
            } else {
                unassigned.append(index)
            }
        }
        func longestPlacedFirst(_ a: Int, _ b: Int) -> Bool {
            let wa = state.workers[a]
            let wb = state.workers[b]
            return wa.assignedAt != wb.assignedAt ? wa.assignedAt < wb.assignedAt : wa.id < wb.id
        }
        for workload in workloads.indices {
            idle[workload].sort(by: longestPlacedFirst)
            busy[workload].sort(by: longestPlacedFirst)
        }
        var current = workloads.indices.map { idle[$0].count + busy[$0].count }
        var idleCursor = Array(repeating: 0, count: workloads.count)
        var busyCursor = Array(repeating: 0, count: workloads.count)
        let urgent = workloads.indices.sorted { a, b in
            let sa = demands[a].slack ?? .infinity
            let sb = demands[b].slack ?? .infinity
            return sa != sb ? sa < sb : a < b
        }
        var actions: [FleetAction] = []
        func assign(_ index: Int, to workload: Int, _ why: String) {
            actions.append(
                FleetAction(
                    .assign(worker: state.workers[index].id, workload: workload),
                    reason: "\(workloads[workload].id) \(why): \(current[workload]) of \(targets[workload]) workers in \(spec.name), "
                        + "\(demands[workload].backlog) queued"))
        }

        // 2. Unplaced workers.
        unassigned.sort { state.workers[$0].id < state.workers[$1].id }
        var next = 0
        for workload in urgent where next < unassigned.count {
            while current[workload] < targets[workload], next < unassigned.count {
                current[workload] += 1
                assign(unassigned[next], to: workload, "needs workers")
                next += 1
            }
        }
        while next < unassigned.count {
            var best: Int?
            for workload in workloads.indices where allocation[workload] > 0 && runsHere[workload] {
                let need = allocation[workload] / Double(current[workload] + 1)
                if best.map({ need > allocation[$0] / Double(current[$0] + 1) }) ?? true { best = workload }
            }
            guard let best else { break }
            current[best] += 1
            assign(unassigned[next], to: best, "has the most need per worker")
            next += 1
        }

        // 3. Moves.
        for workload in urgent where current[workload] < targets[workload] {
            let starving = current[workload] == 0 && demands[workload].backlog > 0
            let backlogWork = Double(demands[workload].backlog) * workloads[workload].runSeconds(on: spec)
            guard starving || backlogWork / Double(max(current[workload], 1)) >= workloads[workload].switchSeconds else {
                continue
            }
            while current[workload] < targets[workload] {
                // The donor furthest over its target (beyond its band), with a worker free to move.
                var donor: (workload: Int, worker: Int, idle: Bool)?
                var donorExcess = 0.0
                for other in workloads.indices where other != workload {
                    let excess = Double(current[other] - targets[other])
                    let band = starving ? 0 : Double(targets[other]) * settings.band
                    guard excess > band, excess > donorExcess || donor == nil else { continue }
                    func movable(_ index: Int) -> Bool {
                        starving || now - state.workers[index].assignedAt >= settings.dwellSeconds
                    }
                    if idleCursor[other] < idle[other].count, movable(idle[other][idleCursor[other]]) {
                        donor = (other, idle[other][idleCursor[other]], true)
                        donorExcess = excess
                    } else if busyCursor[other] < busy[other].count, movable(busy[other][busyCursor[other]]) {
                        donor = (other, busy[other][busyCursor[other]], false)
                        donorExcess = excess
                    }
                }
                guard let donor else { break }
                if donor.idle { idleCursor[donor.workload] += 1 } else { busyCursor[donor.workload] += 1 }
                current[donor.workload] -= 1
                current[workload] += 1
                assign(donor.worker, to: workload, "moves from \(workloads[donor.workload].id)")
            }
        }
        return actions
    }

    /// Whole numbers summing to `total` in proportion to `values` (largest remainder; ties to the
    /// lower index). `total` must not exceed the values' sum rounded up.
    static func apportion(_ values: [Double], total: Int) -> [Int] {
        var result = values.map { Int($0.rounded(.down)) }
        var left = total - result.reduce(0, +)
        guard left > 0 else { return result }
        let order = values.indices.sorted { a, b in
            let ra = values[a] - Double(result[a])
            let rb = values[b] - Double(result[b])
            return ra != rb ? ra > rb : a < b
        }
        for index in order where left > 0 {
            result[index] += 1
            left -= 1
        }
        return result
    }
}
