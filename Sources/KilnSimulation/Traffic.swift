import KilnCore

/// Draws every job of a scenario from its seed.
enum TrafficGenerator {
    static func jobs(for scenario: Scenario, firstAccount: [Int]) -> [SimJob] {
        var random = SplitMix64(seed: scenario.seed)
        var times: [Double] = []
        for phase in scenario.arrivals where phase.perHour > 0 {
            let mean = 3600 / phase.perHour
            var time = phase.fromHours * 3600
            let stop = phase.toHours * 3600
            while true {
                time += random.exponential(mean: mean)
                guard time < stop else { break }
                times.append(time)
            }
        }
        for burst in scenario.bursts where burst.jobs > 0 {
            let step = burst.overSeconds / Double(burst.jobs)
            for index in 0..<burst.jobs { times.append(burst.atHours * 3600 + Double(index) * step) }
        }
        times.sort()
        let tierWeights = cumulative(scenario.tiers.map(\.share))
        let modelWeights = cumulative(scenario.models.map(\.share))
        let runtimes = scenario.models.map { Scenario.RunTime.Sampler($0.runtime) }
        let accounts = scenario.tiers.map { UInt64($0.accounts) }
        let drawn = times.map { time in
            let tier = random.pick(tierWeights)
            let account = firstAccount[tier] + Int(random.next() % accounts[tier])
            let model = random.pick(modelWeights)
            return SimJob(arrival: time, tier: tier, account: account, model: model, work: runtimes[model].draw(&random))
        }
        guard !scenario.trace.isEmpty else { return drawn }
        let traced = scenario.trace.map { item in
            // Validation has checked the names and the account.
            let tier = scenario.tiers.firstIndex { $0.name == item.tier }!
            let model = scenario.models.firstIndex { $0.name == item.model }!
            return SimJob(
                arrival: item.atSeconds - item.waitedSeconds, tier: tier, account: firstAccount[tier] + item.account, model: model,
                work: item.gpuSeconds)
        }
        return merge(drawn, traced)
    }

    /// The drawn jobs (in arrival order) and the trace's, by arrival: at the same instant, drawn jobs
    /// before trace jobs, each in its own order.
    static func merge(_ drawn: [SimJob], _ trace: [SimJob]) -> [SimJob] {
        let traced = trace.enumerated().sorted {
            $0.element.arrival != $1.element.arrival ? $0.element.arrival < $1.element.arrival : $0.offset < $1.offset
        }.map(\.element)
        var result: [SimJob] = []
        result.reserveCapacity(drawn.count + traced.count)
        var next = 0
        for job in traced {
            while next < drawn.count, drawn[next].arrival <= job.arrival {
                result.append(drawn[next])
                next += 1
            }
            result.append(job)
        }
        result.append(contentsOf: drawn[next...])
        return result
    }

    static func cumulative(_ weights: [Double]) -> [Double] {
        var total = 0.0
        return weights.map { weight in
            total += weight
            return total
        }
    }
}

/// Turns a pool's capacity steps into (hour, workers) changes; a ramp (`over_hours`) becomes a step
/// every five minutes.
enum CapacityPlan {
    static func steps(_ capacity: [Scenario.CapacityStep]) -> [(Double, Int)] {
        var result: [(Double, Int)] = []
        var level = 0
        for step in capacity.sorted(by: { $0.atHours < $1.atHours }) {
            if step.overHours > 0 {
                let count = max(1, Int((step.overHours * 12).rounded(.up)))
                for index in 1...count {
                    let fraction = Double(index) / Double(count)
                    let workers = level + Int((Double(step.workers - level) * fraction).rounded())
                    result.append((step.atHours + step.overHours * fraction, workers))
                }
            } else {
                result.append((step.atHours, step.workers))
            }
            level = step.workers
        }
        return result
    }
}

/// Checks a scenario before a run; errors name the field.
enum ScenarioValidation {
    static func check(_ scenario: Scenario) throws {
        func fail(_ message: String) -> KilnError { KilnError(.invalidInput, "scenario '\(scenario.name)': \(message)") }
        guard scenario.durationHours > 0, scenario.durationHours <= 24 * 31 else {
            throw fail("duration_hours must be above 0 and at most 744")
        }
        guard !scenario.tiers.isEmpty else { throw fail("tiers: at least one is needed") }
        for (index, tier) in scenario.tiers.enumerated() {
            guard tier.maxWaitSeconds > 0 else { throw fail("tiers[\(index)].max_wait_seconds must be positive") }
            guard tier.share >= 0 else { throw fail("tiers[\(index)].share must not be negative") }
            guard tier.accounts >= 1 else { throw fail("tiers[\(index)].accounts must be at least 1") }
        }
        guard scenario.tiers.contains(where: { $0.share > 0 }) || scenario.arrivals.isEmpty && scenario.bursts.isEmpty else {
            throw fail("tiers: some share must be positive")
        }
        guard !scenario.models.isEmpty else { throw fail("models: at least one is needed") }
        for (index, model) in scenario.models.enumerated() {
            guard model.share >= 0 else { throw fail("models[\(index)].share must not be negative") }
            guard model.runtime.meanSeconds > 0 else { throw fail("models[\(index)].runtime.mean_seconds must be positive") }
            guard model.gpus >= 0 else { throw fail("models[\(index)].gpus must not be negative") }
            guard model.switchSeconds >= 0 else { throw fail("models[\(index)].switch_seconds must not be negative") }
            guard model.acceleratorSpeed.values.allSatisfy({ $0 > 0 }) else {
                throw fail("models[\(index)].accelerator_speed values must be positive")
            }
        }
        guard scenario.models.contains(where: { $0.share > 0 }) || scenario.arrivals.isEmpty && scenario.bursts.isEmpty else {
            throw fail("models: some share must be positive")
        }
        for (index, phase) in scenario.arrivals.enumerated() {
            guard phase.toHours > phase.fromHours else { throw fail("arrivals[\(index)]: to_hours must be after from_hours") }
            guard phase.perHour >= 0 else { throw fail("arrivals[\(index)].per_hour must not be negative") }
        }
        for (index, burst) in scenario.bursts.enumerated() {
            guard burst.jobs >= 0, burst.overSeconds >= 0 else { throw fail("bursts[\(index)]: jobs and over_seconds must not be negative") }
        }
        for (index, item) in scenario.trace.enumerated() {
            guard let tier = scenario.tiers.first(where: { $0.name == item.tier }) else {
                throw fail("trace[\(index)].tier: no tier named '\(item.tier)'")
            }
            guard scenario.models.contains(where: { $0.name == item.model }) else {
                throw fail("trace[\(index)].model: no model named '\(item.model)'")
            }
            guard item.atSeconds >= 0, item.waitedSeconds >= 0, item.gpuSeconds > 0 else {
                throw fail("trace[\(index)]: at_seconds and waited_seconds must not be negative and gpu_seconds must be positive")
            }
            guard (0..<tier.accounts).contains(item.account) else {
                throw fail("trace[\(index)].account must be below the tier's \(tier.accounts) accounts")
            }
        }
        guard !scenario.clusters.isEmpty else { throw fail("clusters: at least one is needed") }
        for (c, cluster) in scenario.clusters.enumerated() {
            guard cluster.dispatchLimit >= 1 else { throw fail("clusters[\(c)].dispatch_limit must be at least 1") }
            guard cluster.startDelaySeconds >= 0 else { throw fail("clusters[\(c)].start_delay_seconds must not be negative") }
            for (p, pool) in cluster.pools.enumerated() {
                guard (0...1024).contains(pool.gpusPerWorker) else {
                    throw fail("clusters[\(c)].pools[\(p)].gpus_per_worker must be from 0 to 1024, as a worker's gpus")
                }
                for (s, step) in pool.capacity.enumerated() where step.workers < 0 || step.atHours < 0 || step.overHours < 0 {
                    throw fail("clusters[\(c)].pools[\(p)].capacity[\(s)]: hours and workers must not be negative")
                }
                if let autoscale = pool.autoscale {
                    guard autoscale.minWorkers >= 0, autoscale.maxWorkers >= autoscale.minWorkers else {
                        throw fail("clusters[\(c)].pools[\(p)].autoscale: min_workers must not be negative nor above max_workers")
                    }
                    guard autoscale.cooldownSeconds >= 0, autoscale.provisionSeconds >= 0, autoscale.drainGraceSeconds >= 0 else {
                        throw fail("clusters[\(c)].pools[\(p)].autoscale: seconds must not be negative")
                    }
                } else if scenario.fleet.mode == .controller {
                    throw fail("clusters[\(c)].pools[\(p)]: the controller fleet needs the pool's autoscale bounds")
                }
            }
        }
        if let failures = scenario.failures {
            guard failures.meanHoursBetweenFailures > 0, failures.recoverySeconds >= 0 else {
                throw fail("failures: mean_hours_between_failures must be positive, recovery_seconds not negative")
            }
        }
        guard scenario.leases.ttlSeconds > 0, scenario.leases.maxAttempts >= 1 else {
            throw fail("leases: ttl_seconds must be positive and max_attempts at least 1")
        }
        guard scenario.sampleEverySeconds >= 1 else { throw fail("sample_every_seconds must be at least 1") }
        guard scenario.fleet.tickSeconds >= 1 else { throw fail("fleet.tick_seconds must be at least 1") }
    }
}
