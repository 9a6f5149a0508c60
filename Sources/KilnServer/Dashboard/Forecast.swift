import Foundation
import KilnCore
import KilnScheduling
import KilnSimulation
import KilnStore

/// What a forecast starts from, as the dispatcher knows it.
struct ForecastDemand: Sendable {
    var queued: [QueuedJob]
    var now: Double
    var arrivalsByTier: [String: Int]
    var arrivalsByModel: [String: Int]
    var arrivalSeconds: Double
    var runSeconds: [String: Double]
}

/// The dashboard's "what if we add N GPUs": the simulator, on the scheduler this server runs, from
/// the queue as it is now and the last hour's arrivals (``WhatIf``).
enum Forecast {
    /// The live state the projection starts from.
    static func liveState(_ demand: ForecastDemand, workers: [WorkerRecord], configuration: ServerConfiguration) -> WhatIf.LiveState {
        var groups: [WhatIf.LiveState.WorkerGroup] = []
        for worker in workers where worker.state == .active {
            let pool = worker.pool ?? "default"
            let gpus = max(1, worker.gpus)  // a worker without GPUs runs one job at a time: one slot
            if let index = groups.firstIndex(where: {
                $0.cluster == worker.cluster && $0.pool == pool && $0.accelerator == worker.accelerator && $0.gpusPerWorker == gpus
            }) {
                groups[index].workers += 1
            } else {
                groups.append(.init(cluster: worker.cluster, pool: pool, accelerator: worker.accelerator, gpusPerWorker: gpus, workers: 1))
            }
        }
        return WhatIf.LiveState(
            tiers: configuration.tiers.tiers.map { .init(name: $0.name, maxWaitSeconds: $0.maxWait) },
            queued: demand.queued.map { job in
                .init(tier: job.tier, model: job.requirements.model, gpus: job.requirements.gpus, waitedSeconds: demand.now - job.queuedAt)
            },
            arrivalsByTier: demand.arrivalsByTier, arrivalsByModel: demand.arrivalsByModel, arrivalSeconds: demand.arrivalSeconds,
            runSeconds: demand.runSeconds, workers: groups, dispatchLimits: configuration.clusters.mapValues(\.dispatchLimit),
            defaultDispatchLimit: configuration.defaultDispatchLimit,
            leases: .init(ttlSeconds: configuration.leases.ttlSeconds, maxAttempts: configuration.leases.maxAttempts))
    }
}
