import Foundation
import KilnAPI
import KilnCore
import KilnFleet

/// The fleet controller's view (admin).
extension APIHandler {
    func getFleet(_ input: Operations.GetFleet.Input) async throws -> Operations.GetFleet.Output {
        let view = await services.fleet.view()
        let pools = view.pools.map(Self.poolObject)
        let workers = view.workers.map { worker in
            let state: Components.Schemas.FleetWorkerObject.StatePayload =
                switch worker.state {
                case .provisioning: .provisioning
                case .active: .active
                case .draining: .draining
                }
            return Components.Schemas.FleetWorkerObject(
                id: worker.id, pool: worker.pool, state: state, model: worker.assignment?.model, version: worker.assignment?.version,
                readyVersion: worker.readyVersion, running: worker.running)
        }
        let decisions = view.decisions.prefix(50).map {
            Components.Schemas.FleetDecisionObject(at: $0.at, action: $0.action, reason: $0.reason)
        }
        return .ok(.init(body: .json(.init(tickedAt: view.tickedAt, pools: pools, workers: workers, decisions: Array(decisions)))))
    }

    func setPoolBounds(_ input: Operations.SetPoolBounds.Input) async throws -> Operations.SetPoolBounds.Output {
        guard case .json(let body) = input.body else { throw KilnError(.invalidInput, "a JSON body is required") }
        let pool = try await services.fleet.setBounds(
            pool: input.path.name, minWorkers: body.minWorkers, maxWorkers: body.maxWorkers)
        return .ok(.init(body: .json(Self.poolObject(pool))))
    }

    static func poolObject(_ pool: FleetService.View.Pool) -> Components.Schemas.PoolObject {
        let spec = pool.configured.spec
        return Components.Schemas.PoolObject(
            name: spec.name, cluster: spec.cluster, kind: spec.kind == .primary ? .primary : .burst,
            provider: .init(rawValue: pool.configured.provider.rawValue) ?? ._static, accelerator: spec.accelerator,
            minWorkers: spec.minWorkers, maxWorkers: spec.maxWorkers, lend: spec.lends, lent: pool.decision?.lent ?? 0,
            provisionSeconds: spec.provisionSeconds, actual: pool.decision?.actual ?? 0,
            desired: pool.decision?.desired ?? 0, reason: pool.decision?.reason ?? "no tick yet")
    }
}
