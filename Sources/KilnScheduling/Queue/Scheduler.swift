import DequeModule
import KilnCore

/// The dispatch decision of DESIGN §4 as a pure state machine: no I/O, no clock of its own.
///
/// Each queued job sits in the FIFO queue of its (tier, requirements class), sorted by `queuedAt`
/// then sequence. Picking a job for a worker compares only the heads of the queues whose class the
/// worker can run, so one decision costs O(queues), whatever the number of jobs.
///
/// A job's life in here:
///
///     enqueue ──▶ queued ──next(for:)──▶ in flight (leased) ──started──▶ in flight (running)
///                   ▲  │                     │                              │
///                   │  └─account at cap──▶ parked ◀─┐     requeue ──────────┤
///                   └──────────── requeue ──────────┼─────────────────────────┘
///                        (same queuedAt)            └─ unparked when the account frees a slot
///     remove ─▶ gone (from any state: canceled, succeeded, failed)
///
/// With a policy that protects tiers (``SchedulingPolicy/protection``), a pick made while an
/// unprotected job is eligible may go to the most urgent unprotected job instead of the policy's
/// first choice, so that protected jobs take at most their share of such dispatches. Positions and
/// the dispatch order shown to operators are the policy's order, without that correction.
///
/// Eligibility, checked at every pick:
/// 1. the worker's cluster has fewer leased-but-not-started jobs than its dispatch limit;
/// 2. the worker can run the job's class (model, version, accelerator, GPU count);
/// 3. the job's account is under its tier's running cap. A head whose account is at its cap is
///    parked (set aside, in arrival order) and the pick goes on; when the account frees a slot, its
///    oldest parked jobs return to their queues, as many as it has free slots.
///
/// The caller (the server's dispatcher, or the simulator) persists each decision and tells the
/// scheduler what happened next (`started`, `requeue`, `remove`).
public struct Scheduler: Sendable {
    struct Entry: Sendable {
        var sequence: Int64
        var account: UInt32
        var queuedAt: Double

        @inline(__always)
        func isBefore(_ other: Entry) -> Bool {
            queuedAt != other.queuedAt ? queuedAt < other.queuedAt : sequence < other.sequence
        }
    }

    struct Queue: Sendable {
        let tier: Int
        let jobClass: Int
        var entries: Deque<Entry> = []
    }

    struct QueueKey: Hashable, Sendable {
        var tier: Int
        var jobClass: Int
    }

    struct Parked: Sendable {
        var entry: Entry
        var queue: Int
    }

    /// A job the scheduler holds, in one slot from its enqueue to its end: where it waits (its queue,
    /// and enough of its entry to find it there by binary search), or which cluster holds it once it
    /// is dispatched. 24 bytes; a pick, the job's start and its end touch this one slot.
    struct Held: Sendable {
        enum Phase: UInt8 {
            case queued, parked, leased, started

            var isWaiting: Bool { self == .queued || self == .parked }
        }

        var queuedAt: Double
        var account: UInt32
        var queue: UInt32
        /// The cluster's index in `clusterNames`, once dispatched.
        var cluster: UInt32
        var phase: Phase

        init(_ entry: Entry, queue: Int, cluster: Int = 0, phase: Phase) {
            self.queuedAt = entry.queuedAt
            self.account = entry.account
            self.queue = UInt32(queue)
            self.cluster = UInt32(cluster)
            self.phase = phase
        }

        func entry(_ sequence: Int64) -> Entry { Entry(sequence: sequence, account: account, queuedAt: queuedAt) }
    }

    struct CachedOffer: Sendable {
        var offer: WorkerOffer
        var cluster: Int
    }

    public let tiers: TierTable
    /// By tier rank, read at every pick: the promised wait and the running cap per account.
    private let maxWaits: [Double]
    private let runningCaps: [Int?]
    public var policy: any SchedulingPolicy {
        didSet {
            protection = policy.protection
            protectedTiers = Self.protectedTiers(of: policy, in: tiers)
            builtIn = BuiltInPolicy(policy)
        }
    }
    /// The policy when it is one of the built-in ones, so that a pick calls its priority directly
    /// (inlined) rather than through the existential, once for each queue head.
    private var builtIn: BuiltInPolicy?
    /// The policy's protection, read once rather than at every pick.
    private var protection: Protection?
    /// Leased-but-not-started jobs a cluster may hold; clusters not named use `defaultDispatchLimit`.
    public var dispatchLimits: [String: Int] {
        didSet { limitByCluster = clusterNames.map(dispatchLimit(of:)) }
    }
    public var defaultDispatchLimit: Int {
        didSet { limitByCluster = clusterNames.map(dispatchLimit(of:)) }
    }

    private var classes: [JobRequirements] = []
    private var classIndex: [JobRequirements: Int] = [:]
    private var queues: [Queue] = []
    private var queueIndex: [QueueKey: Int] = [:]
    private var accounts: [AccountID] = []
    private var accountIndex: [AccountID: UInt32] = [:]
    private var dispatchedByAccount: [Int] = []
    private var parked: [UInt32: Deque<Parked>] = [:]
    /// Every job queued, parked or dispatched, by sequence.
    private var held = SequenceSlab<Held>()
    /// Clusters by index, as workers named them; by cluster index, their names, leased-but-not-started
    /// jobs and dispatch limits.
    private var clusters: [String: Int] = [:]
    private var clusterNames: [String] = []
    private var pendingByCluster: [Int] = []
    private var limitByCluster: [Int] = []
    /// By tier rank: whether the policy protects the tier.
    private var protectedTiers: [Bool]
    /// Thousandths of a dispatch owed to unprotected jobs (the protected share's bound).
    private var unprotectedCredit = 0
    /// Recent offers (see ``eligibility(of:)``) with their cluster, and by class whether each may
    /// run it: the mask of offer `i` is `eligibilityMasks[i * classes.count ..< (i + 1) * classes.count]`.
    private var eligibilityCache: [CachedOffer] = []
    private var eligibilityMasks: [Bool] = []
    /// The number of classes `eligibilityCache` was computed for.
    private var eligibilityClasses = 0

    /// Jobs waiting, parked ones included.
    public private(set) var queuedCount = 0

    public init(
        tiers: TierTable, policy: any SchedulingPolicy = SLOPolicy(), dispatchLimits: [String: Int] = [:],
        defaultDispatchLimit: Int = 64
    ) {
        self.tiers = tiers
        self.maxWaits = tiers.tiers.map(\.maxWait)
        self.runningCaps = tiers.tiers.map(\.maxRunningPerAccount)
        self.policy = policy
        self.dispatchLimits = dispatchLimits
        self.defaultDispatchLimit = defaultDispatchLimit
        self.protection = policy.protection
        self.protectedTiers = Self.protectedTiers(of: policy, in: tiers)
        self.builtIn = BuiltInPolicy(policy)
    }

    private static func protectedTiers(of policy: any SchedulingPolicy, in tiers: TierTable) -> [Bool] {
        tiers.tiers.map { policy.protection?.tiers.contains($0.name) ?? false }
    }

    // MARK: - Events

    /// Puts a job in its queue. A job already known is left as it is.
    ///
    /// - Throws: ``KilnError`` when the job's tier is not in the table.
    public mutating func enqueue(_ job: QueuedJob) throws {
        try enqueue(job.sequence, queue: queue(tier: job.tier, requirements: job.requirements), account: account(job.account), queuedAt: job.queuedAt)
    }

    /// Puts a job in a queue resolved beforehand: for callers that enqueue many jobs of few kinds
    /// (the simulator), no string is hashed per job. A job already known is left as it is.
    public mutating func enqueue(_ sequence: Int64, queue: QueueRef, account: AccountRef, queuedAt: Double) {
        guard held[sequence] == nil else { return }
        let entry = Entry(sequence: sequence, account: account.index, queuedAt: queuedAt)
        Self.insertSorted(entry, into: &queues[queue.index].entries)
        held[sequence] = Held(entry, queue: queue.index, phase: .queued)
        queuedCount += 1
    }

    /// The queue of a tier and requirements class, for ``enqueue(_:queue:account:queuedAt:)``.
    ///
    /// - Throws: ``KilnError`` when the tier is not in the table.
    public mutating func queue(tier: String, requirements: JobRequirements) throws -> QueueRef {
        guard let rank = tiers.index(of: tier) else {
            throw KilnError(.invalidInput, "unknown tier '\(tier)'")
        }
        return QueueRef(index: queueFor(tier: rank, jobClass: classFor(requirements)))
    }

    /// An account, for ``enqueue(_:queue:account:queuedAt:)``.
    public mutating func account(_ id: AccountID) -> AccountRef {
        AccountRef(index: accountFor(id))
    }

    /// Accounts not known yet, registered together so that their refs are consecutive: a caller
    /// with many accounts (the simulator's tens of thousands) computes a ref instead of loading it
    /// from a table of its own.
    ///
    /// - Throws: ``KilnError`` when one of `ids` is known already or named twice.
    public mutating func accounts(_ ids: [AccountID]) throws -> AccountRefs {
        let base = accounts.count
        accountIndex.reserveCapacity(base + ids.count)
        for (offset, id) in ids.enumerated() {
            if let old = accountIndex.updateValue(UInt32(base + offset), forKey: id) {
                // Nothing changes: what was known before stays, what this call added goes.
                accountIndex[id] = old < base ? old : nil
                for added in ids[..<offset] where added != id { accountIndex[added] = nil }
                throw KilnError(.invalidInput, "account '\(id)' is known already or named twice")
            }
        }
        accounts.append(contentsOf: ids)
        dispatchedByAccount.append(contentsOf: repeatElement(0, count: ids.count))
        return AccountRefs(base: UInt32(base), count: ids.count)
    }

    /// The job for `worker`, by the policy at `now`, or nil when none is eligible.
    ///
    /// The job leaves the queue and counts as leased (not started) in the worker's cluster until
    /// ``started(_:)``, ``requeue(_:)`` or ``remove(_:)``.
    public mutating func next(for worker: WorkerOffer, now: Double) -> QueuedJob? {
        nextIndex(for: worker, now: now).map { job($0.entry, queue: $0.queue) }
    }

    /// The sequence number of the job ``next(for:now:)`` would return, with the same effect: for
    /// callers that keep the job's details themselves (the dispatcher, the simulator), it builds
    /// no ``QueuedJob``.
    public mutating func nextSequence(for worker: WorkerOffer, now: Double) -> Int64? {
        nextIndex(for: worker, now: now)?.entry.sequence
    }

    private mutating func nextIndex(for worker: WorkerOffer, now: Double) -> (entry: Entry, queue: Int)? {
        switch builtIn {
        case .slo(let policy): nextIndex(for: worker, now: now, by: policy)
        case .fifo(let policy): nextIndex(for: worker, now: now, by: policy)
        case .strict(let policy): nextIndex(for: worker, now: now, by: policy)
        case .edf(let policy): nextIndex(for: worker, now: now, by: policy)
        case .protected(let policy): nextIndex(for: worker, now: now, by: policy)
        case nil: nextIndex(for: worker, now: now, by: policy)
        }
    }

    private mutating func nextIndex<Policy: SchedulingPolicy>(for worker: WorkerOffer, now: Double, by policy: Policy)
        -> (entry: Entry, queue: Int)?
    {
        guard queuedCount > 0 else { return nil }
        // 1. The cluster's dispatch limit.
        // 2. The classes this worker can run (kept while the same offer keeps asking).
        let (mask, cluster) = eligibility(of: worker)
        guard pendingByCluster[cluster] < limitByCluster[cluster] else { return nil }
        while true {
            // 3. The best head among eligible queues, and the best unprotected one; each head's
            //    priority is computed once.
            var best: Int?
            var bestHead: QueueHead?
            var bestPriority = -Double.infinity
            var bestUnprotected: Int?
            var bestUnprotectedHead: QueueHead?
            var bestUnprotectedPriority = -Double.infinity
            for index in queues.indices where eligibilityMasks[mask + queues[index].jobClass] {
                guard let first = queues[index].entries.first else { continue }
                let head = self.head(first, queue: index)
                let priority = policy.priority(of: head, now: now)
                if protection != nil, !head.isProtected,
                    bestUnprotectedHead.map({ Self.precedes(head, priority, $0, bestUnprotectedPriority) }) ?? true
                {
                    bestUnprotected = index
                    bestUnprotectedHead = head
                    bestUnprotectedPriority = priority
                }
                if let current = bestHead, !Self.precedes(head, priority, current, bestPriority) { continue }
                best = index
                bestHead = head
                bestPriority = priority
            }
            guard var best, let bestHead else { return nil }
            // 4. The protected share: while an unprotected job is eligible, every dispatch owes it
            //    (1 − share); once a whole dispatch is owed, the most urgent unprotected job goes.
            var credit = unprotectedCredit
            if let protection, let bestUnprotected {
                credit += 1000 - protection.sharePermille
                if bestHead.isProtected, credit >= 1000 { best = bestUnprotected }
            }
            let entry = queues[best].entries.removeFirst()
            // 5. The account's running cap: park and look again.
            if let cap = runningCaps[queues[best].tier],
                dispatchedByAccount[Int(entry.account)] >= cap
            {
                park(entry, queue: best)
                continue
            }
            // 6. Dispatch.
            if bestUnprotected != nil {
                unprotectedCredit = protectedTiers[queues[best].tier] ? credit : max(0, credit - 1000)
            }
            held[entry.sequence] = Held(entry, queue: best, cluster: cluster, phase: .leased)
            queuedCount -= 1
            dispatchedByAccount[Int(entry.account)] += 1
            pendingByCluster[cluster] += 1
            return (entry, best)
        }
    }

    /// The worker began running the job: it no longer counts against its cluster's dispatch limit.
    public mutating func started(_ sequence: Int64) {
        guard var job = held[sequence], job.phase == .leased else { return }
        job.phase = .started
        held[sequence] = job
        pendingByCluster[Int(job.cluster)] -= 1
    }

    /// Puts a dispatched job back in its queue with its original `queuedAt` (lease expired, worker
    /// failed with a retryable error, or the lease could not be persisted).
    public mutating func requeue(_ sequence: Int64) {
        guard var job = release(sequence) else { return }
        Self.insertSorted(job.entry(sequence), into: &queues[Int(job.queue)].entries)
        job.phase = .queued
        held[sequence] = job
        queuedCount += 1
        unpark(job.account)
    }

    /// Forgets a job wherever it is (canceled, succeeded, failed).
    ///
    /// - Returns: whether the job was known.
    @discardableResult
    public mutating func remove(_ sequence: Int64) -> Bool {
        if let job = release(sequence) {
            held[sequence] = nil
            unpark(job.account)
            return true
        }
        guard let job = held.removeValue(forKey: sequence) else { return false }
        queuedCount -= 1
        if job.phase == .parked {
            if let index = parked[job.account]?.firstIndex(where: { $0.entry.sequence == sequence }) {
                parked[job.account]!.remove(at: index)
                if parked[job.account]!.isEmpty { parked[job.account] = nil }
            }
        } else if let index = Self.indexOf(job.entry(sequence), in: queues[Int(job.queue)].entries) {
            queues[Int(job.queue)].entries.remove(at: index)
        }
        return true
    }

    /// Counts a job as dispatched without its passing through a queue: one rebuilt at start-up (the
    /// store is the truth; this is its cache), or one handed to a waiting worker in its submission's
    /// own transaction. A job already known is left as it is.
    public mutating func recordDispatched(_ job: QueuedJob, cluster: String, started: Bool) throws {
        guard held[job.sequence] == nil else { return }
        guard let tier = tiers.index(of: job.tier) else {
            throw KilnError(.invalidInput, "unknown tier '\(job.tier)'")
        }
        let queue = queueFor(tier: tier, jobClass: classFor(job.requirements))
        let entry = Entry(sequence: job.sequence, account: accountFor(job.account), queuedAt: job.queuedAt)
        let clusterIndex = clusterFor(cluster)
        held[job.sequence] = Held(entry, queue: queue, cluster: clusterIndex, phase: started ? .started : .leased)
        dispatchedByAccount[Int(entry.account)] += 1
        if !started { pendingByCluster[clusterIndex] += 1 }
    }

    /// Holds, for a job not yet stored that a worker is to take outside the queue, what its
    /// dispatch will take: a running slot of its account and, unless it starts at once, a dispatch
    /// slot of the worker's cluster. Picks made meanwhile count it.
    public mutating func hold(account: AccountID, cluster: String, started: Bool) {
        dispatchedByAccount[Int(accountFor(account))] += 1
        if !started { pendingByCluster[clusterFor(cluster)] += 1 }
    }

    /// Gives back a ``hold(account:cluster:started:)``: the job was dispatched (recorded first, with
    /// ``recordDispatched(_:cluster:started:)``), or never will be. Parked jobs of the account
    /// return to their queues when it has free running slots.
    public mutating func releaseHold(account: AccountID, cluster: String, started: Bool) {
        let index = accountFor(account)
        dispatchedByAccount[Int(index)] -= 1
        if !started { pendingByCluster[clusterFor(cluster)] -= 1 }
        unpark(index)
    }

    // MARK: - Views

    public func isQueued(_ sequence: Int64) -> Bool { held[sequence]?.phase.isWaiting ?? false }
    public func isParked(_ sequence: Int64) -> Bool { held[sequence]?.phase == .parked }
    public func isDispatched(_ sequence: Int64) -> Bool { held[sequence].map { !$0.phase.isWaiting } ?? false }
    public var dispatchedCount: Int { held.count - queuedCount }

    /// Leased-but-not-started jobs of a cluster.
    public func pending(in cluster: String) -> Int { clusters[cluster].map { pendingByCluster[$0] } ?? 0 }

    public func dispatchLimit(of cluster: String) -> Int { dispatchLimits[cluster] ?? defaultDispatchLimit }

    /// Dispatched jobs of an account.
    public func dispatched(for account: AccountID) -> Int {
        accountIndex[account].map { dispatchedByAccount[Int($0)] } ?? 0
    }

    /// How many queued jobs the policy would dispatch before this one at `now`, if every worker could
    /// run every job; nil when the job is not queued. O(queues × log jobs).
    public func position(of sequence: Int64, now: Double) -> Int? {
        guard let job = held[sequence], job.phase.isWaiting else { return nil }
        let target = head(job.entry(sequence), queue: Int(job.queue))
        var ahead = 0
        for index in queues.indices {
            let entries = queues[index].entries
            // Entries of one queue are in policy order, so those ahead of the target form a prefix.
            var low = 0
            var high = entries.count
            while low < high {
                let mid = (low + high) / 2
                let candidate = head(entries[mid], queue: index)
                if candidate.sequence != target.sequence, policy.precedes(candidate, target, now: now) {
                    low = mid + 1
                } else {
                    high = mid
                }
            }
            ahead += low
        }
        return ahead
    }

    /// Up to `limit` queued jobs in the order the policy would dispatch them at `now` (parked jobs
    /// excluded). O(limit × queues).
    public func dispatchOrder(now: Double, limit: Int) -> [QueuedJob] {
        var cursors = [Int](repeating: 0, count: queues.count)
        var result: [QueuedJob] = []
        result.reserveCapacity(min(limit, queuedCount))
        while result.count < limit {
            var best: Int?
            var bestHead: QueueHead?
            for index in queues.indices where cursors[index] < queues[index].entries.count {
                let candidate = head(queues[index].entries[cursors[index]], queue: index)
                if let current = bestHead, !policy.precedes(candidate, current, now: now) { continue }
                best = index
                bestHead = candidate
            }
            guard let best else { break }
            result.append(job(queues[best].entries[cursors[best]], queue: best))
            cursors[best] += 1
        }
        return result
    }

    /// The jobs a worker could take now, per queue (tier and requirements class): how many and the
    /// oldest one's `queuedAt`. Parked jobs are left out: their accounts are at their running cap,
    /// so more workers would not start them. O(queues): what the fleet controller reads each tick.
    public func backlog() -> [QueueBacklog] {
        queues.compactMap { queue in
            guard let first = queue.entries.first else { return nil }
            return QueueBacklog(
                tier: tiers.tiers[queue.tier].name, maxWait: maxWaits[queue.tier], requirements: classes[queue.jobClass],
                jobs: queue.entries.count, oldestQueuedAt: first.queuedAt)
        }
    }

    /// Every queued job, parked ones included, in no particular order. O(queued): for a forecast,
    /// never for a dispatch.
    public func queuedJobs() -> [QueuedJob] {
        var result: [QueuedJob] = []
        result.reserveCapacity(queuedCount)
        for (index, queue) in queues.enumerated() {
            for entry in queue.entries { result.append(job(entry, queue: index)) }
        }
        for list in parked.values {
            for item in list { result.append(job(item.entry, queue: item.queue)) }
        }
        return result
    }

    /// Queued jobs per tier and model, with the urgency of the oldest.
    public func summary(now: Double) -> [QueueSummary] {
        var rows: [QueueKeyByModel: QueueSummary] = [:]
        func add(_ entry: Entry, queue: Int, parked: Bool) {
            let tier = tiers.tiers[queues[queue].tier]
            let model = classes[queues[queue].jobClass].model
            let key = QueueKeyByModel(tier: queues[queue].tier, model: model)
            var row = rows[key] ?? QueueSummary(tier: tier.name, model: model)
            row.queued += 1
            if parked { row.parked += 1 }
            if row.oldestQueuedAt.map({ entry.queuedAt < $0 }) ?? true {
                row.oldestQueuedAt = entry.queuedAt
                row.maxUrgency = Urgency.of(queuedAt: entry.queuedAt, maxWait: tier.maxWait, now: now)
            }
            rows[key] = row
        }
        for (index, queue) in queues.enumerated() {
            if let first = queue.entries.first {
                add(first, queue: index, parked: false)
                let rest = queue.entries.count - 1
                if rest > 0 { rows[QueueKeyByModel(tier: queue.tier, model: classes[queue.jobClass].model)]!.queued += rest }
            }
        }
        for list in parked.values {
            for item in list { add(item.entry, queue: item.queue, parked: true) }
        }
        return rows.sorted { $0.key.tier != $1.key.tier ? $0.key.tier < $1.key.tier : $0.key.model < $1.key.model }.map(\.value)
    }

    // MARK: - Internals

    /// The policy's order (``SchedulingPolicy/precedes(_:_:now:)``) with both priorities known.
    @inline(__always)
    private static func precedes(_ a: QueueHead, _ pa: Double, _ b: QueueHead, _ pb: Double) -> Bool {
        if pa != pb { return pa > pb }
        if a.queuedAt != b.queuedAt { return a.queuedAt < b.queuedAt }
        return a.sequence < b.sequence
    }

    /// By class: whether `worker` can run it; and the index of its cluster. Workers ask again and
    /// again with a few distinct offers, so the answers for the last few are kept until the classes
    /// change (a linear scan: offers of one fleet share their strings, so comparing is cheap).
    ///
    /// - Returns: where the offer's mask starts in `eligibilityMasks`, and its cluster's index.
    private mutating func eligibility(of worker: WorkerOffer) -> (mask: Int, cluster: Int) {
        if eligibilityClasses != classes.count {
            eligibilityCache.removeAll(keepingCapacity: true)
            eligibilityMasks.removeAll(keepingCapacity: true)
            eligibilityClasses = classes.count
        }
        for slot in eligibilityCache.indices where eligibilityCache[slot].offer == worker {
            return (slot * classes.count, eligibilityCache[slot].cluster)
        }
        let cluster = clusterFor(worker.cluster)
        if eligibilityCache.count >= 16 {
            eligibilityCache.removeFirst()
            eligibilityMasks.removeFirst(classes.count)
        }
        eligibilityCache.append(CachedOffer(offer: worker, cluster: cluster))
        for jobClass in classes { eligibilityMasks.append(jobClass.admits(worker)) }
        return ((eligibilityCache.count - 1) * classes.count, cluster)
    }

    private mutating func clusterFor(_ name: String) -> Int {
        if let index = clusters[name] { return index }
        clusterNames.append(name)
        pendingByCluster.append(0)
        limitByCluster.append(dispatchLimit(of: name))
        clusters[name] = pendingByCluster.count - 1
        return pendingByCluster.count - 1
    }

    private struct QueueKeyByModel: Hashable {
        var tier: Int
        var model: String
    }

    private mutating func classFor(_ requirements: JobRequirements) -> Int {
        if let index = classIndex[requirements] { return index }
        classes.append(requirements)
        classIndex[requirements] = classes.count - 1
        return classes.count - 1
    }

    private mutating func queueFor(tier: Int, jobClass: Int) -> Int {
        let key = QueueKey(tier: tier, jobClass: jobClass)
        if let index = queueIndex[key] { return index }
        queues.append(Queue(tier: tier, jobClass: jobClass))
        queueIndex[key] = queues.count - 1
        return queues.count - 1
    }

    private mutating func accountFor(_ id: AccountID) -> UInt32 {
        if let index = accountIndex[id] { return index }
        accounts.append(id)
        dispatchedByAccount.append(0)
        let index = UInt32(accounts.count - 1)
        accountIndex[id] = index
        return index
    }

    @inline(__always)
    private func head(_ entry: Entry, queue: Int) -> QueueHead {
        let tier = queues[queue].tier
        return QueueHead(
            queuedAt: entry.queuedAt, sequence: entry.sequence, maxWait: maxWaits[tier], tierRank: tier,
            isProtected: protectedTiers[tier])
    }

    private func job(_ entry: Entry, queue: Int) -> QueuedJob {
        QueuedJob(
            sequence: entry.sequence, account: accounts[Int(entry.account)], tier: tiers.tiers[queues[queue].tier].name,
            requirements: classes[queues[queue].jobClass], queuedAt: entry.queuedAt)
    }

    /// Gives back what a dispatched job holds (its account's running slot, its cluster's dispatch
    /// slot until it started); the caller then removes the job or puts it back in its queue.
    /// - Returns: the job, or nil when it is not dispatched.
    private mutating func release(_ sequence: Int64) -> Held? {
        guard let job = held[sequence], !job.phase.isWaiting else { return nil }
        if job.phase == .leased { pendingByCluster[Int(job.cluster)] -= 1 }
        dispatchedByAccount[Int(job.account)] -= 1
        return job
    }

    private mutating func park(_ entry: Entry, queue: Int) {
        var list = parked[entry.account] ?? []
        Self.insertSorted(Parked(entry: entry, queue: queue), into: &list)
        parked[entry.account] = list
        held[entry.sequence] = Held(entry, queue: queue, phase: .parked)
    }

    /// Returns the account's oldest parked jobs to their queues, one per free running slot.
    private mutating func unpark(_ account: UInt32) {
        guard var list = parked[account], let first = list.first else { return }
        let cap = tiers.tiers[queues[first.queue].tier].maxRunningPerAccount ?? Int.max
        var free = cap - dispatchedByAccount[Int(account)]
        while free > 0, let item = list.first {
            list.removeFirst()
            Self.insertSorted(item.entry, into: &queues[item.queue].entries)
            held[item.entry.sequence] = Held(item.entry, queue: item.queue, phase: .queued)
            free -= 1
        }
        parked[account] = list.isEmpty ? nil : list
    }

    /// The index of `entry` in a queue sorted by (queuedAt, sequence): O(log n).
    private static func indexOf(_ entry: Entry, in entries: Deque<Entry>) -> Int? {
        var low = 0
        var high = entries.count
        while low < high {
            let mid = (low + high) / 2
            if entries[mid].isBefore(entry) { low = mid + 1 } else { high = mid }
        }
        return low < entries.count && entries[low].sequence == entry.sequence ? low : nil
    }

    // Static, so that a call borrows no `self` while it mutates part of it: an instance method here
    // made Swift copy the scheduler, and with it the whole queue, on every insert.
    private static func insertSorted(_ entry: Entry, into entries: inout Deque<Entry>) {
        if let last = entries.last, entry.isBefore(last) {
            var low = 0
            var high = entries.count
            while low < high {
                let mid = (low + high) / 2
                if entries[mid].isBefore(entry) { low = mid + 1 } else { high = mid }
            }
            entries.insert(entry, at: low)
        } else {
            entries.append(entry)
        }
    }

    private static func insertSorted(_ item: Parked, into list: inout Deque<Parked>) {
        var low = 0
        var high = list.count
        while low < high {
            let mid = (low + high) / 2
            if list[mid].entry.isBefore(item.entry) { low = mid + 1 } else { high = mid }
        }
        list.insert(item, at: low)
    }
}

/// The built-in policies, each by its concrete type.
enum BuiltInPolicy: Sendable {
    case slo(SLOPolicy), fifo(FIFOPolicy), strict(StrictPriorityPolicy), edf(EarliestDeadlinePolicy)
    case protected(ProtectedPolicy)

    init?(_ policy: any SchedulingPolicy) {
        switch policy {
        case let policy as SLOPolicy: self = .slo(policy)
        case let policy as FIFOPolicy: self = .fifo(policy)
        case let policy as StrictPriorityPolicy: self = .strict(policy)
        case let policy as EarliestDeadlinePolicy: self = .edf(policy)
        case let policy as ProtectedPolicy: self = .protected(policy)
        default: return nil
        }
    }
}

/// A (tier, requirements class) queue of one ``Scheduler``, resolved once.
public struct QueueRef: Hashable, Sendable {
    let index: Int
}

/// An account known to one ``Scheduler``, resolved once.
public struct AccountRef: Hashable, Sendable {
    let index: UInt32
}

/// Accounts registered together by ``Scheduler/accounts(_:)``, in order.
public struct AccountRefs: Sendable {
    let base: UInt32
    public let count: Int

    /// The ref of the `offset`th account registered.
    public subscript(offset: Int) -> AccountRef {
        precondition(offset >= 0 && offset < count, "account \(offset) of \(count)")
        return AccountRef(index: base + UInt32(offset))
    }
}

/// The dispatchable jobs of one queue (see ``Scheduler/backlog()``).
public struct QueueBacklog: Hashable, Sendable {
    public var tier: String
    /// The tier's promised wait, in seconds.
    public var maxWait: Double
    public var requirements: JobRequirements
    public var jobs: Int
    public var oldestQueuedAt: Double
}

/// One row of the queue view: the jobs of one tier and model.
public struct QueueSummary: Hashable, Sendable {
    public var tier: String
    public var model: String
    public var queued = 0
    /// Of `queued`, those set aside because their account is at its running cap.
    public var parked = 0
    public var oldestQueuedAt: Double?
    /// The urgency of the oldest job (≥ 1: its tier's promise is already broken).
    public var maxUrgency: Double?

    public init(tier: String, model: String) {
        self.tier = tier
        self.model = model
    }
}
