import Foundation
import KilnCore
import KilnScheduling
import KilnStore

/// Runs the pure ``Scheduler`` against the store: the I/O shell around the policy.
///
/// The scheduler's pick is a proposal; the store's conditional lease (`queued → running`) is the
/// decision. When the store refuses (the job was canceled meanwhile) the proposal is dropped and the
/// next one is tried. The scheduler is a cache of the store, rebuilt by ``load()`` at start.
///
/// Workers asking for work while nothing is eligible wait (long-poll), oldest first. A submission
/// leases its job to the oldest waiting worker that can run it in the submission's own transaction
/// (``reserveHandoffs(for:)``); a requeue wakes that worker to pick its job, waking no other; a
/// start that frees a dispatch slot and an end that frees an account slot wake them all to look
/// again, when anything is queued.
public actor Dispatcher {
    private struct Waiter {
        var continuation: CheckedContinuation<WaitOutcome, Never>
        var timer: Task<Void, Never>
        var offer: WorkerOffer
        var worker: WorkerRecord
        /// Whether the lease it waits for starts its job at once.
        var start: Bool
        /// The long poll's connection, watched while it waits: a wait whose client went away ends.
        var client: ClientConnection?
        var watch: Int?

        /// Its timer and its connection's watch stop: the wait is ending.
        func stop() {
            timer.cancel()
            if let watch { client?.unwatch(watch) }
        }
    }

    /// How a long poll's wait ended.
    private enum WaitOutcome {
        /// Something changed that may bring it a job, or its time ran out: it looks again.
        case changed
        /// Its worker's offer changed, or the server is closing: it answers with nothing.
        case recalled
        /// A submission leased it this job in its own transaction.
        case handed(Generation)
    }

    /// A waiter set aside for a submission being committed, to take its job. What the job's
    /// dispatch takes (a running slot of its account, a dispatch slot of the cluster) is held in
    /// the scheduler meanwhile, so that no pick takes it too.
    private struct Reservation {
        var waiter: Waiter
        var account: AccountID
        /// The scheduler the hold is in (``reset()`` replaces it).
        var epoch: Int
    }

    private var scheduler: Scheduler
    private var throughput = ThroughputEstimator()
    /// Submissions per model since start: the fleet controller turns them into arrival rates.
    private var arrivals: [String: Int] = [:]
    /// Mean run time per model (start to end of succeeded generations), weighted to the recent.
    private var runSeconds: [String: Double] = [:]
    /// Submissions of the last hour per tier and model: the arrival rate of a forecast.
    private var recentArrivals: ArrivalWindow
    /// The queue's last hour, one sample per ``sampleInterval``: the dashboard's chart.
    private var history: [QueueSample] = []
    /// How often ``sample()`` is called, and so how many samples an hour keeps.
    public static let sampleInterval: Duration = .seconds(30)
    private var identifiers: [Int64: GenerationID] = [:]
    /// Waiting workers by the number of their wait (a counter, not a random id: a `UUID` reads the
    /// system's random source, one system call a long poll).
    private var waiters: [Int: Waiter] = [:]
    private var lastWait = 0
    /// Shutting down: no long poll waits.
    private var closing = false
    /// Waiting workers, oldest first.
    private var waitOrder: [Int] = []
    /// Waiters reserved by ``reserveHandoffs(for:)``, by the generation each is to take.
    private var reserved: [GenerationID: Reservation] = [:]
    /// How many times ``reset()`` replaced the scheduler.
    private var epoch = 0
    /// Waiting workers woken by an event (not by the end of their wait): how hard each change
    /// shakes the fleet.
    public private(set) var wakeups = 0
    /// Workers waiting in a long poll now.
    public var waiting: Int { waiters.count }
    private let store: any JobStore
    private let clock: any WallClock
    private let configuration: ServerConfiguration

    public init(store: any JobStore, clock: any WallClock, configuration: ServerConfiguration) throws {
        self.store = store
        self.clock = clock
        self.configuration = configuration
        self.recentArrivals = ArrivalWindow(now: clock.now().timeIntervalSince1970)
        self.scheduler = try Self.emptyScheduler(configuration)
    }

    /// A scheduler with nothing queued, as the configuration sets it up.
    private static func emptyScheduler(_ configuration: ServerConfiguration) throws -> Scheduler {
        Scheduler(
            tiers: configuration.tiers, policy: try configuration.schedulingPolicy(),
            dispatchLimits: configuration.clusters.mapValues(\.dispatchLimit),
            defaultDispatchLimit: configuration.defaultDispatchLimit)
    }

    /// Rebuilds the queues from the store.
    ///
    /// - Returns: the generations left out because their tier is no longer configured (they stay in
    ///   the store, untouched, until the tier is configured again).
    @discardableResult
    public func load() async throws -> [Generation] {
        var skipped: [Generation] = []
        for generation in try await store.queuedGenerations() {
            guard configuration.tiers[generation.tier] != nil else {
                skipped.append(generation)
                continue
            }
            try enqueue(generation)
        }
        for generation in try await store.runningGenerations() {
            guard let lease = generation.lease else { continue }
            guard configuration.tiers[generation.tier] != nil else {
                skipped.append(generation)
                continue
            }
            identifiers[generation.sequence] = generation.id
            try scheduler.recordDispatched(Self.job(generation), cluster: lease.cluster, started: lease.startedAt != nil)
        }
        return skipped
    }

    // MARK: Events from the API

    /// A committed transition of each generation (see ``TransitionSink``).
    ///
    /// - Throws: a submission's error whose tier is unknown, after applying all the others.
    public func apply(_ effect: Transition.Effect, _ generations: [Generation]) throws {
        switch effect {
        case .submitted: try submitted(generations)
        case .started: for generation in generations { started(generation) }
        case .requeued: for generation in generations { requeued(generation) }
        case .ended: for generation in generations { ended(generation) }
        case .leased, .progressed: break  // the dispatcher leased it itself; progress is for the streams
        }
    }

    /// New generations, each counted: one leased in its submission's transaction goes to the waiter
    /// reserved for it; a queued one wakes one waiting worker that can run it.
    ///
    /// - Throws: the first generation's error whose tier is unknown, after queueing all the others.
    public func submitted(_ generations: [Generation]) throws {
        var refused: (any Error)?
        for generation in generations {
            do {
                if let lease = generation.lease {
                    try handedOff(generation, lease)
                } else {
                    try enqueue(generation)
                    wakeOne(for: Self.job(generation).requirements)
                }
            } catch {
                refused = refused ?? error
                continue
            }
            arrivals[generation.model, default: 0] += 1
            recentArrivals.record(tier: generation.tier, model: generation.model, at: now)
        }
        if let refused { throw refused }
    }

    /// Reserves, for each new generation in order, the oldest waiting worker that can run it now,
    /// so that its submission leases it to that worker in the same transaction (``Handoff``): one
    /// commit from submission to lease instead of two, and no pick by the woken worker.
    ///
    /// A worker waits only while nothing queued is eligible for it, so the new job is the one the
    /// scheduler would give it. The rules of a pick still hold: the worker can run the job, its
    /// cluster is under its dispatch limit, the job's account under its tier's running cap; and
    /// what the job will take is held in the scheduler until the reservation ends, so that no pick
    /// meanwhile takes it too.
    ///
    /// Every reservation ends in ``submitted(_:)`` (its job leased) or ``releaseHandoffs(of:)``.
    public func reserveHandoffs(for generations: [Generation]) -> [Handoff?] {
        generations.map { generation -> Handoff? in
            guard !waitOrder.isEmpty, !closing, let tier = configuration.tiers[generation.tier] else { return nil }
            if let cap = tier.maxRunningPerAccount, scheduler.dispatched(for: generation.accountID) >= cap { return nil }
            guard let waiter = takeWaiter(for: Self.job(generation).requirements) else { return nil }
            scheduler.hold(account: generation.accountID, cluster: waiter.offer.cluster, started: waiter.start)
            reserved[generation.id] = Reservation(waiter: waiter, account: generation.accountID, epoch: epoch)
            return Handoff(worker: waiter.worker, at: clock.now(), ttl: configuration.leases.ttlSeconds, start: waiter.start)
        }
    }

    /// Ends the reservations of these generations that no lease took (the submission failed, or
    /// was refused or replayed): each waiter looks again, and waits on if it finds nothing; what
    /// was held for them is free again.
    public func releaseHandoffs(of ids: [GenerationID]) {
        var released = false
        for id in ids {
            guard let reservation = reserved.removeValue(forKey: id) else { continue }
            releaseHold(reservation)
            released = true
            reservation.waiter.continuation.resume(returning: .changed)
        }
        if released { wakeAllIfQueued() }
    }

    private func releaseHold(_ reservation: Reservation) {
        guard reservation.epoch == epoch else { return }
        scheduler.releaseHold(account: reservation.account, cluster: reservation.waiter.offer.cluster, started: reservation.waiter.start)
    }

    public func started(_ generation: Generation) {
        scheduler.started(generation.sequence)
        wakeAllIfQueued()
    }

    /// The generation went back to the queue (lease expired, retryable failure). One the scheduler
    /// no longer holds as dispatched has ended meanwhile (a cancel won the race): it stays gone.
    public func requeued(_ generation: Generation) {
        guard scheduler.isDispatched(generation.sequence) else { return }
        scheduler.requeue(generation.sequence)
        wakeOne(for: Self.job(generation).requirements)
    }

    /// The generation ended (succeeded, failed, canceled).
    public func ended(_ generation: Generation) {
        if generation.state == .succeeded, let started = generation.startedAt, let completed = generation.completedAt {
            let seconds = max(0, completed.timeIntervalSince(started))
            runSeconds[generation.model] = runSeconds[generation.model].map { $0 + 0.1 * (seconds - $0) } ?? seconds
        }
        scheduler.remove(generation.sequence)
        identifiers[generation.sequence] = nil
        wakeAllIfQueued()
    }

    // MARK: Leasing

    /// The next job for `worker`, waiting up to `wait` seconds for one; nil when none came.
    /// - Parameter model: the model placement put the worker on; nil takes any.
    public func lease(for worker: WorkerRecord, wait: Double, model: String? = nil) async throws -> Generation? {
        try await lease(for: worker, wait: wait, max: 1, start: false, model: model).first
    }

    /// Up to `max` jobs for `worker`, waiting up to `wait` seconds for the first; none when none
    /// came. With `start`, each is started as it is leased.
    /// - Parameter model: the model placement put the worker on; nil takes any.
    public func lease(for worker: WorkerRecord, wait: Double, max: Int, start: Bool, model: String? = nil) async throws
        -> [Generation]
    {
        let offer = Self.offer(of: worker, model: model)
        // The long poll's timeout is real time (the I/O shell's), not the injected decision clock.
        let deadline = ContinuousClock.now + .milliseconds(Int(Swift.max(0, wait) * 1000))
        var leased: [Generation] = []
        while leased.count < max {
            // A canceled request (the server stopping) takes no job it could not deliver. A client
            // that went away ends the wait instead (``ClientConnection``): nothing cancels its task.
            if Task.isCancelled {
                if leased.isEmpty { throw CancellationError() }
                return leased
            }
            // Every job the worker may take now, leased in one store transaction.
            let picked = pick(for: offer, max: max - leased.count)
            if !picked.isEmpty {
                let generations: [Generation?]
                do {
                    generations = try await store.lease(
                        sequences: picked, to: worker, at: clock.now(), ttl: configuration.leases.ttlSeconds, start: start)
                } catch {
                    for sequence in picked { scheduler.requeue(sequence) }
                    if leased.isEmpty { throw error }
                    return leased
                }
                leased += follow(picked, generations, start: start)
                continue
            }
            // Wait only for a first job; with one in hand, answer now.
            let remaining = deadline - ContinuousClock.now
            guard leased.isEmpty, remaining > .zero, !closing else { return leased }
            switch await waitForChange(for: remaining, offer: offer, worker: worker, start: start) {
            case .recalled: return leased
            case .changed: try Task.checkCancellation()
            case .handed(let generation): leased.append(generation)
            }
        }
        return leased
    }

    /// A worker's round (`exchange`): ends `reports` and, in the same store transaction, leases up
    /// to `max` jobs the worker may take now, as ``lease(for:wait:max:start:model:)`` would without
    /// waiting: one durable commit for both. With nothing to take now, the reports commit alone.
    /// The caller applies the ended generations as transitions, then, when no job came, waits for
    /// one with ``lease(for:wait:max:start:model:)``.
    ///
    /// The jobs are picked while the reports' generations still count as dispatched (they leave the
    /// scheduler when their transitions are applied): a pick may take fewer jobs of an account at
    /// its running cap than it could, never more than the cap allows.
    public func exchange(completing reports: [CompletionReport], for worker: WorkerRecord, max: Int, start: Bool, model: String?)
        async throws -> (completed: [Result<Generation, KilnError>], leased: [Generation])
    {
        // A request canceled (the server stopping) takes no job it could not deliver.
        let picked = Task.isCancelled ? [] : pick(for: Self.offer(of: worker, model: model), max: max)
        guard !picked.isEmpty else { return (try await store.complete(reports, worker: worker.id, at: clock.now()), []) }
        let round: (completed: [Result<Generation, KilnError>], leased: [Generation?])
        do {
            round = try await store.exchange(
                completing: reports, leasing: picked, to: worker, at: clock.now(), ttl: configuration.leases.ttlSeconds, start: start)
        } catch {
            for sequence in picked { scheduler.requeue(sequence) }
            throw error
        }
        return (round.completed, follow(picked, round.leased, start: start))
    }

    /// What a worker offers the scheduler: its cluster, accelerator and GPUs, and the model
    /// placement put it on (nil: any).
    private static func offer(of worker: WorkerRecord, model: String?) -> WorkerOffer {
        WorkerOffer(cluster: worker.cluster, accelerator: worker.accelerator, gpus: worker.gpus, models: model.map { [$0] })
    }

    /// Up to `max` jobs the scheduler gives `offer` now, each counted as dispatched until the store
    /// says what became of it (``follow(_:_:start:)``).
    private func pick(for offer: WorkerOffer, max: Int) -> [Int64] {
        var picked: [Int64] = []
        while picked.count < max, let sequence = scheduler.nextSequence(for: offer, now: now) { picked.append(sequence) }
        return picked
    }

    /// The scheduler follows what the store's lease did with picked jobs: each leased one stays
    /// dispatched (started, with `start`); one canceled between its pick and the lease is forgotten.
    /// - Returns: the leased generations, in order.
    private func follow(_ picked: [Int64], _ generations: [Generation?], start: Bool) -> [Generation] {
        var leased: [Generation] = []
        for (sequence, generation) in zip(picked, generations) {
            guard let generation else {
                scheduler.remove(sequence)
                identifiers[sequence] = nil
                continue
            }
            if start { scheduler.started(sequence) }
            throughput.record(at: now)
            leased.append(generation)
        }
        return leased
    }

    // MARK: Views

    /// What the fleet controller reads each tick: the dispatchable backlog per queue, submissions
    /// per model since start, and the mean run time per model.
    public func fleetDemand() -> (backlog: [QueueBacklog], arrivals: [String: Int], runSeconds: [String: Double]) {
        (scheduler.backlog(), arrivals, runSeconds)
    }

    /// What a what-if forecast starts from: every queued job, the last hour's submissions, and the
    /// mean run time per model.
    func forecastDemand() -> ForecastDemand {
        let now = self.now
        let recent = recentArrivals.recent(now: now)
        return ForecastDemand(
            queued: scheduler.queuedJobs(), now: now, arrivalsByTier: recent.byTier, arrivalsByModel: recent.byModel,
            arrivalSeconds: recent.seconds, runSeconds: runSeconds)
    }

    /// Records the queue as it is now in its history, which keeps the last hour.
    public func sample() {
        let now = self.now
        var queued: [String: Int] = [:]
        var share: [String: Double] = [:]
        for row in scheduler.summary(now: now) {
            queued[row.tier, default: 0] += row.queued
            share[row.tier] = max(share[row.tier] ?? 0, row.maxUrgency ?? 0)
        }
        history.append(
            QueueSample(
                at: Date(timeIntervalSince1970: now),
                tiers: configuration.tiers.tiers.map { .init(name: $0.name, queued: queued[$0.name] ?? 0, oldestShare: share[$0.name] ?? 0) }))
        history.removeAll { $0.at.timeIntervalSince1970 < now - 3_600 }
    }

    /// The queue's samples over the last hour, oldest first.
    public var recentHistory: [QueueSample] { history }

    /// The scheduling policy in use.
    public var policy: any SchedulingPolicy { scheduler.policy }

    /// Position, ETA and deadline of a queued generation.
    private func queuePlace(for generation: Generation) -> QueuePlace? {
        guard generation.state == .queued, let position = scheduler.position(of: generation.sequence, now: now) else {
            return nil
        }
        let maxWait = configuration.tiers[generation.tier]?.maxWait ?? 0
        return QueuePlace(
            position: position, etaSeconds: throughput.eta(position: position, now: now).map { ($0 * 10).rounded() / 10 },
            deadline: generation.queuedAt + maxWait)
    }

    /// ``queuePlace(for:)`` of each generation, in one call.
    public func queuePlaces(for generations: [Generation]) -> [QueuePlace?] {
        generations.map(queuePlace(for:))
    }

    /// Seconds after which a refused submission may be admitted: when the account's oldest queued
    /// job is expected to leave the queue, or one job's worth of throughput for a tier-wide cap.
    public func retryAfter(oldestQueued: Generation?, tier: String) -> Int {
        let maxWait = configuration.tiers[tier]?.maxWait ?? 60
        let position = oldestQueued.flatMap { scheduler.position(of: $0.sequence, now: now) } ?? 0
        let estimate = throughput.eta(position: position, now: now) ?? maxWait / 10
        return Int(min(max(estimate, 1), maxWait).rounded(.up))
    }

    public func view(limit: Int) -> QueueSnapshot {
        let now = self.now
        let rows = scheduler.summary(now: now).map { row in
            QueueSnapshot.Row(
                tier: row.tier, model: row.model, queued: row.queued, parked: row.parked,
                oldestQueuedAt: row.oldestQueuedAt.map(Date.init(timeIntervalSince1970:)), maxUrgency: row.maxUrgency)
        }
        let next = scheduler.dispatchOrder(now: now, limit: limit).compactMap { job -> QueueSnapshot.Entry? in
            guard let id = identifiers[job.sequence], let tier = configuration.tiers[job.tier] else { return nil }
            return QueueSnapshot.Entry(
                id: id, tier: job.tier, model: job.requirements.model, queuedAt: Date(timeIntervalSince1970: job.queuedAt),
                urgency: Urgency.of(queuedAt: job.queuedAt, maxWait: tier.maxWait, now: now))
        }
        return QueueSnapshot(
            policy: scheduler.policy.name, queued: scheduler.queuedCount, dispatched: scheduler.dispatchedCount, rows: rows,
            next: next)
    }

    // MARK: Internals

    private var now: Double { clock.now().timeIntervalSince1970 }

    /// A generation leased in its submission's own transaction: dispatched, and given to the
    /// waiter reserved for it.
    private func handedOff(_ generation: Generation, _ lease: LeaseInfo) throws {
        identifiers[generation.sequence] = generation.id
        let reservation = reserved.removeValue(forKey: generation.id)
        // Dispatched first, then the hold given back: the account's count never dips below it.
        defer { if let reservation { releaseHold(reservation) } }
        try scheduler.recordDispatched(Self.job(generation), cluster: lease.cluster, started: lease.startedAt != nil)
        throughput.record(at: now)
        guard let reservation else { return }
        wakeups += 1
        reservation.waiter.continuation.resume(returning: .handed(generation))
    }

    private func enqueue(_ generation: Generation) throws {
        identifiers[generation.sequence] = generation.id
        try scheduler.enqueue(Self.job(generation))
    }

    static func job(_ generation: Generation) -> QueuedJob {
        QueuedJob(
            sequence: generation.sequence, account: generation.accountID, tier: generation.tier,
            requirements: JobRequirements(
                model: generation.model, version: generation.version, accelerators: Set(generation.accelerators), gpus: generation.gpus),
            queuedAt: generation.queuedAt.timeIntervalSince1970)
    }

    /// Ends every long poll with nothing, and makes new ones answer at once: the server is shutting
    /// down, and must not wait out a minute's poll.
    public func close() {
        closing = true
        for id in Array(waiters.keys) {
            removeWaiter(id)?.continuation.resume(returning: .recalled)
        }
    }

    /// Forgets the queue (this server stopped leading, or is about to rebuild it from the store):
    /// long polls waiting find nothing until it is loaded again.
    public func reset() throws {
        scheduler = try Self.emptyScheduler(configuration)
        epoch += 1
        identifiers.removeAll()
        throughput = ThroughputEstimator()
        history.removeAll()
    }

    /// Ends the long polls `worker` is waiting in, with nothing: its offer changed (the fleet
    /// placed it on a model), and it must ask again under the new one.
    public func recall(_ worker: WorkerID) {
        for (id, waiter) in waiters where waiter.worker.id == worker {
            removeWaiter(id)?.continuation.resume(returning: .recalled)
        }
    }

    /// Waits for a change that may bring `offer` a job, or for a job handed to it, at most `duration`.
    private func waitForChange(for duration: Duration, offer: WorkerOffer, worker: WorkerRecord, start: Bool) async
        -> WaitOutcome
    {
        lastWait += 1
        let id = lastWait
        return await withCheckedContinuation { (continuation: CheckedContinuation<WaitOutcome, Never>) in
            let timer = Task { [weak self] in
                try? await Task.sleep(for: duration)
                if !Task.isCancelled { await self?.timedOut(id) }
            }
            let client = ClientConnection.current
            waiters[id] = Waiter(continuation: continuation, timer: timer, offer: offer, worker: worker, start: start, client: client)
            waitOrder.append(id)
            waiters[id]?.watch = client?.watch { [weak self] in
                Task { await self?.abandoned(id) }
            }
        }
    }

    private func timedOut(_ id: Int) {
        removeWaiter(id)?.continuation.resume(returning: .changed)
    }

    /// Takes a wait out of the waiting ones, its timer and watch stopped; nil when it has ended.
    private func removeWaiter(_ id: Int) -> Waiter? {
        guard let waiter = waiters.removeValue(forKey: id) else { return nil }
        waitOrder.removeAll { $0 == id }
        waiter.stop()
        return waiter
    }

    /// Wakes the oldest waiting worker that can take a job of `requirements`.
    private func wakeOne(for requirements: JobRequirements) {
        guard let waiter = takeWaiter(for: requirements) else { return }
        wakeups += 1
        waiter.continuation.resume(returning: .changed)
    }

    /// Takes the oldest waiting worker that can take a job of `requirements` out of the wait, its
    /// timer canceled. A wait met on the way whose client has gone (and whose end is on its way)
    /// ends now, with nothing.
    private func takeWaiter(for requirements: JobRequirements) -> Waiter? {
        for id in waitOrder {
            guard let waiter = waiters[id] else { continue }
            if waiter.client?.isGone == true {
                abandoned(id)
            } else if canTake(requirements, waiter.offer), let taken = removeWaiter(id) {
                return taken
            }
        }
        return nil
    }

    /// Ends a wait whose client went away, with nothing.
    private func abandoned(_ id: Int) {
        removeWaiter(id)?.continuation.resume(returning: .recalled)
    }

    /// Whether a worker of `offer` can run a job of `requirements` and its cluster may take one more.
    private func canTake(_ requirements: JobRequirements, _ offer: WorkerOffer) -> Bool {
        requirements.admits(offer) && scheduler.pending(in: offer.cluster) < scheduler.dispatchLimit(of: offer.cluster)
    }

    /// Wakes every waiting worker, when there is anything queued for them to look at.
    private func wakeAllIfQueued() {
        guard scheduler.queuedCount > 0 else { return }
        let all = waiters
        waiters.removeAll()
        waitOrder.removeAll()
        for waiter in all.values {
            waiter.stop()
            wakeups += 1
            waiter.continuation.resume(returning: .changed)
        }
    }
}
