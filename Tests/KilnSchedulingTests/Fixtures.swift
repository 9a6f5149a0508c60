import KilnCore
import KilnScheduling

/// Builds queued jobs with readable defaults: `job(1).tier("free").at(100)`.
struct JobBuilder {
    var value: QueuedJob

    func tier(_ tier: String) -> JobBuilder { var copy = self; copy.value.tier = tier; return copy }
    func at(_ queuedAt: Double) -> JobBuilder { var copy = self; copy.value.queuedAt = queuedAt; return copy }
    func account(_ name: String) -> JobBuilder { var copy = self; copy.value.account = accountID(name); return copy }
    func model(_ model: String) -> JobBuilder { var copy = self; copy.value.requirements.model = model; return copy }
    func gpus(_ gpus: Int) -> JobBuilder { var copy = self; copy.value.requirements.gpus = gpus; return copy }
    func accelerators(_ kinds: Set<String>) -> JobBuilder {
        var copy = self
        copy.value.requirements.accelerators = kinds
        return copy
    }
    var job: QueuedJob { value }
}

func job(_ sequence: Int64) -> JobBuilder {
    JobBuilder(
        value: QueuedJob(
            sequence: sequence, account: accountID("a\(sequence)"), tier: "api", requirements: JobRequirements(model: "demo"),
            queuedAt: 0))
}

/// A stable account id per name.
func accountID(_ name: String) -> AccountID {
    let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz")
    let body = name.unicodeScalars.map { alphabet[Int($0.value) % 32] }
    return AccountID(unchecked: "acct_" + String(body))
}

let cpuWorker = WorkerOffer(cluster: "default", accelerator: "cpu", gpus: 0)
let gpuWorker = WorkerOffer(cluster: "default", accelerator: "h100", gpus: 8)

extension Scheduler {
    static func standard(policy: any SchedulingPolicy = SLOPolicy(), dispatchLimit: Int = 1_000) -> Scheduler {
        Scheduler(tiers: .standard, policy: policy, defaultDispatchLimit: dispatchLimit)
    }

    /// Picks and starts jobs until none is eligible; their sequences in dispatch order.
    mutating func drain(worker: WorkerOffer = cpuWorker, now: Double) -> [Int64] {
        var order: [Int64] = []
        while let next = next(for: worker, now: now) {
            order.append(next.sequence)
            started(next.sequence)
            remove(next.sequence)
        }
        return order
    }
}
