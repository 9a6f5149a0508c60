import Foundation
import KilnCore
import KilnStore
import PostgresNIO

/// Generations: submission, the lease lifecycle, events.
extension PostgresJobStore {
    public func submit(_ batch: [SubmissionRequest], admission: Admission) async throws -> [Result<Submission, KilnError>] {
        try SubmissionRequest.checkOneAccountAndTier(batch)
        guard let first = batch.first?.generation else { return [] }
        let keyed = batch.contains { $0.idempotency != nil }
        if batch.count == 1, !keyed, batch[0].handoff == nil, admission.maxQueuedPerAccount == nil, admission.maxQueuedInTier == nil {
            // Nothing to check first nor to lease: one statement, committed on its own.
            let stored = first.asSubmitted
            return [.success(try await change { session in Submission(generation: try await Self.insert(stored, session), created: true) })]
        }
        return try await write { session in
            // Admission is serialized per account, and per tier for the tier's cap, with
            // transaction-scoped advisory locks rather than `FOR UPDATE` on the account row: the
            // tier has no row to lock, and tier changes of the account need not wait for
            // submissions. Always account before tier, so that two submissions never wait on each
            // other. The account lock also makes a repeated idempotency key find the first one.
            if keyed || admission.maxQueuedPerAccount != nil { try await session.lock(.account, first.accountID.rawValue) }
            if admission.maxQueuedInTier != nil { try await session.lock(.tier, first.tier) }
            // Each cap is counted once, at the first item that needs it, then kept up to date.
            var queuedInAccount: Int?
            var queuedInTier: Int?
            var results: [Result<Submission, KilnError>] = []
            results.reserveCapacity(batch.count)
            for request in batch {
                let stored = request.generation.asSubmitted
                if let idempotency = request.idempotency,
                    let row = try await session.row(
                        """
                        SELECT generation_id, request_hash FROM idempotency_keys
                        WHERE account_id = \(stored.accountID.rawValue) AND key = \(idempotency.key)
                        """)
                {
                    guard try row.value("request_hash", as: String.self) == idempotency.requestHash else {
                        results.append(.failure(.idempotencyKeyReused(idempotency.key)))
                        continue
                    }
                    let id = GenerationID(unchecked: try row.value("generation_id"))
                    guard let existing = try await Self.fetchGeneration(session, id: id) else {
                        throw KilnError(.internal, "Idempotency-Key '\(idempotency.key)' names generation '\(id)', which is not stored")
                    }
                    results.append(.success(Submission(generation: existing, created: false)))
                    continue
                }
                if let cap = admission.maxQueuedPerAccount {
                    let queued = try await Self.count(
                        &queuedInAccount, session,
                        "SELECT COUNT(*) FROM generations WHERE account_id = \(stored.accountID.rawValue) AND state = 'queued'")
                    if queued >= cap {
                        results.append(.failure(.accountQueueFull(queued: queued, cap: cap, tier: stored.tier)))
                        continue
                    }
                }
                if let cap = admission.maxQueuedInTier {
                    let queued = try await Self.count(
                        &queuedInTier, session, "SELECT COUNT(*) FROM generations WHERE tier = \(stored.tier) AND state = 'queued'")
                    if queued >= cap {
                        results.append(.failure(.tierQueueFull(queued: queued, cap: cap, tier: stored.tier)))
                        continue
                    }
                }
                let inserted = try await Self.insert(stored, session)
                if let idempotency = request.idempotency {
                    try await session.run(
                        """
                        INSERT INTO idempotency_keys (account_id, key, request_hash, generation_id, created_at)
                        VALUES (\(stored.accountID.rawValue), \(idempotency.key), \(idempotency.requestHash), \(stored.id.rawValue),
                            \(stored.createdAt.timeIntervalSince1970))
                        """)
                }
                if let handoff = request.handoff,
                    let leased = try await Self.leaseLocked(
                        inserted.sequence, to: handoff.worker, at: handoff.at, ttl: handoff.ttl, start: handoff.start, session)
                {
                    results.append(.success(Submission(generation: leased, created: true)))
                    continue
                }
                queuedInAccount? += 1
                queuedInTier? += 1
                results.append(.success(Submission(generation: inserted, created: true)))
            }
            return results
        }
    }

    /// `known`, or else the count `query` reads, kept in `known` for the next item of the batch.
    private static func count(_ known: inout Int?, _ session: PostgresSession, _ query: PostgresQuery) async throws -> Int {
        if let known { return known }
        let counted = try await session.value(query, as: Int.self) ?? 0
        known = counted
        return counted
    }

    /// Inserts a submitted generation and its `queued` event, in one statement.
    /// - Returns: the generation with its sequence.
    static func insert(_ generation: Generation, _ session: PostgresSession) async throws -> Generation {
        guard let sequence = try await session.rows(InsertGeneration(generation: generation)).first else {
            throw KilnError(.internal, "inserting generation '\(generation.id)' returned no sequence")
        }
        var stored = generation
        stored.sequence = sequence
        return stored
    }

    public func generation(_ id: GenerationID) async throws -> Generation? {
        try await read { session in try await Self.fetchGeneration(session, id: id) }
    }

    public func generation(sequence: Int64) async throws -> Generation? {
        try await read { session in
            try await session.rows(GenerationBySequence(sequence: sequence)).first.map(Self.generation(from:))
        }
    }

    public func generations(of account: AccountID?, state: GenerationState?, limit: Int, before: Int64?) async throws
        -> [Generation]
    {
        try await read { session in
            try await session.rows(
                """
                SELECT \(unescaped: Self.generationColumns) FROM generations
                WHERE (\(account?.rawValue)::TEXT IS NULL OR account_id = \(account?.rawValue))
                    AND (\(state?.rawValue)::TEXT IS NULL OR state = \(state?.rawValue))
                    AND (\(before)::BIGINT IS NULL OR seq < \(before))
                ORDER BY seq DESC LIMIT \(limit)
                """
            ).map(Self.generation(from:))
        }
    }

    public func cancel(_ id: GenerationID, at: Date) async throws -> Generation {
        try await transition(id, at: at) { try Lifecycle.cancel($0, at: at) }
    }

    public func lease(sequences: [Int64], to worker: WorkerRecord, at: Date, ttl: Double, start: Bool) async throws -> [Generation?] {
        if sequences.count == 1 {
            // One: read and conditionally update, outside a transaction, as every single transition.
            let sequence = sequences[0]
            let leased = try await racing("generation #\(sequence)") { session -> Attempt<Generation?> in
                guard let row = try await session.rows(GenerationBySequence(sequence: sequence)).first else { return .done(nil) }
                let stored = try StoredGeneration(row)
                guard stored.generation.state == .queued else { return .done(nil) }
                let transition = try await Self.leaseTransition(stored, to: worker, at: at, ttl: ttl, start: start, session)
                return try await Self.persist(session, transition, from: stored, at: at).map { .done($0) } ?? .lostRace
            }
            return [leased]
        }
        // Several: their rows locked in one transaction, one commit for all.
        return try await write { session in
            // Every row locked first, in `seq` order as the lease reaper locks them.
            try await session.run("SELECT seq FROM generations WHERE seq = ANY(\(sequences)) ORDER BY seq FOR UPDATE")
            var leased: [Generation?] = []
            for sequence in sequences {
                leased.append(try await Self.leaseLocked(sequence, to: worker, at: at, ttl: ttl, start: start, session))
            }
            return leased
        }
    }

    /// Leases a queued generation inside the caller's transaction, its row locked: nil when it is
    /// not there or no longer queued.
    private static func leaseLocked(
        _ sequence: Int64, to worker: WorkerRecord, at: Date, ttl: Double, start: Bool, _ session: PostgresSession
    ) async throws -> Generation? {
        guard
            let row = try await session.row(
                "SELECT \(unescaped: Self.generationColumns) FROM generations WHERE seq = \(sequence) FOR UPDATE")
        else { return nil }
        let stored = try StoredGeneration(row)
        guard stored.generation.state == .queued else { return nil }
        let transition = try await leaseTransition(stored, to: worker, at: at, ttl: ttl, start: start, session)
        return try await persistLocked(session, transition, from: stored, at: at)
    }

    /// The lease of a queued generation, its alias resolved now: the generation records what it runs.
    private static func leaseTransition(
        _ stored: StoredGeneration, to worker: WorkerRecord, at: Date, ttl: Double, start: Bool, _ session: PostgresSession
    ) async throws -> Transition {
        let generation = stored.generation
        var version: String?
        if generation.version == nil, let aliasName = generation.alias, let alias = try await fetchAlias(session, aliasName, of: generation.model) {
            version = alias.resolve(for: generation.id)?.description
        }
        return try Lifecycle.lease(
            generation, to: worker.id, cluster: worker.cluster, token: FencingToken.next(after: FencingToken(stored.token)),
            version: version, at: at, ttl: ttl, start: start)
    }

    public func start(_ id: GenerationID, worker: WorkerID, token: FencingToken, at: Date, ttl: Double) async throws
        -> Generation
    {
        try await transition(id, at: at) { try Lifecycle.start($0, worker: worker, token: token, at: at, ttl: ttl) }
    }

    public func heartbeat(
        _ id: GenerationID, worker: WorkerID, token: FencingToken, progress: JobProgress?, at: Date, ttl: Double
    ) async throws -> Generation {
        try await transition(id, at: at) {
            try Lifecycle.heartbeat($0, worker: worker, token: token, progress: progress, at: at, ttl: ttl)
        }
    }

    public func attachOutput(_ id: GenerationID, worker: WorkerID, token: FencingToken, name: String, file: FileRecord)
        async throws
    {
        try await write { session in
            guard let stored = try await Self.fetchForTransition(session, id: id, lock: true) else {
                throw KilnError(.notFound, "no generation '\(id)'")
            }
            try Lifecycle.holding(stored.generation, worker: worker, token: token, allowCanceled: false)
            // An upload of the same name by the same attempt replaces the earlier one.
            if let replaced = try await session.row(
                """
                SELECT f.id, f.object_key FROM job_outputs o JOIN files f ON f.id = o.file_id
                WHERE o.generation_id = \(id.rawValue) AND o.token = \(token.value) AND o.name = \(name)
                """)
            {
                try await Self.doom(session, fileID: try replaced.value("id"), objectKey: try replaced.value("object_key"), at: file.createdAt)
            }
            try await Self.insert(file, session)
            try await session.run(
                """
                INSERT INTO job_outputs (generation_id, token, name, file_id)
                VALUES (\(id.rawValue), \(token.value), \(name), \(file.id.rawValue))
                """)
        }
    }

    public func complete(_ reports: [CompletionReport], worker: WorkerID, at: Date) async throws -> [Result<Generation, KilnError>] {
        if reports.count == 1, reports[0].outputs.isEmpty {
            // One without outputs: read and conditionally update, outside a transaction.
            let report = reports[0]
            do {
                return [
                    .success(
                        try await transition(report.id, at: at) {
                            try Lifecycle.complete($0, worker: worker, token: report.token, outputs: [:], at: at)
                        })
                ]
            } catch let error as KilnError where error.refusesItem {
                return [.failure(error)]
            }
        }
        // Several, or with outputs: under their rows' locks in one transaction, so that no upload of
        // the same name may replace an output between reading it and keeping it. Each is checked
        // before anything of it is written, so a refused one writes nothing.
        return try await write { session in
            // Every row locked first, in `seq` order as the lease reaper locks them, so that the two
            // never wait on each other; then each report in the order sent.
            try await session.run(
                "SELECT seq FROM generations WHERE id = ANY(\(reports.map(\.id.rawValue))) ORDER BY seq FOR UPDATE")
            return try await Self.completeLocked(reports, worker: worker, at: at, session)
        }
    }

    public func exchange(
        completing reports: [CompletionReport], leasing sequences: [Int64], to worker: WorkerRecord, at: Date, ttl: Double, start: Bool
    ) async throws -> (completed: [Result<Generation, KilnError>], leased: [Generation?]) {
        try await write { session in
            // Both sets of rows locked first, together, in `seq` order (as the lease reaper locks them).
            try await session.run(
                """
                SELECT seq FROM generations WHERE id = ANY(\(reports.map(\.id.rawValue))) OR seq = ANY(\(sequences))
                ORDER BY seq FOR UPDATE
                """)
            let completed = try await Self.completeLocked(reports, worker: worker.id, at: at, session)
            var leased: [Generation?] = []
            for sequence in sequences {
                leased.append(try await Self.leaseLocked(sequence, to: worker, at: at, ttl: ttl, start: start, session))
            }
            return (completed, leased)
        }
    }

    /// Ends each report, in order, inside the caller's transaction, their rows locked. Each is
    /// checked before anything of it is written, so a refused one writes nothing.
    private static func completeLocked(_ reports: [CompletionReport], worker: WorkerID, at: Date, _ session: PostgresSession)
        async throws -> [Result<Generation, KilnError>]
    {
        var results: [Result<Generation, KilnError>] = []
        for report in reports {
            do {
                results.append(.success(try await complete(report, worker: worker, at: at, session)))
            } catch let error as KilnError where error.refusesItem {
                results.append(.failure(error))
            }
        }
        return results
    }

    private static func complete(_ report: CompletionReport, worker: WorkerID, at: Date, _ session: PostgresSession) async throws
        -> Generation
    {
        let (id, token, outputs) = (report.id, report.token, report.outputs)
        guard let stored = try await fetchForTransition(session, id: id, lock: true) else {
            throw KilnError(.notFound, "no generation '\(id)'")
        }
        // The lease first: a stale token is told so, whatever outputs it names.
        try Lifecycle.holding(stored.generation, worker: worker, token: token, allowCanceled: false)
        var files: [String: OutputFile] = [:]
        if !outputs.isEmpty {
            let attached = try await session.rows(
                """
                SELECT o.name, f.id, f.content_type, f.size FROM job_outputs o JOIN files f ON f.id = o.file_id
                WHERE o.generation_id = \(id.rawValue) AND o.token = \(token.value) AND o.name = ANY(\(outputs))
                """)
            for row in attached {
                files[try row.value("name")] = OutputFile(
                    fileID: FileID(unchecked: try row.value("id")), contentType: try row.value("content_type"), size: try row.value("size"))
            }
            if let missing = outputs.first(where: { files[$0] == nil }) {
                throw KilnError(.invalidInput, "outputs: '\(missing)' was not uploaded for this lease")
            }
        }
        let transition = try Lifecycle.complete(stored.generation, worker: worker, token: token, outputs: files, at: at)
        return try await persistLocked(session, transition, from: stored, at: at)
    }

    public func fail(
        _ id: GenerationID, worker: WorkerID, token: FencingToken, error: JobFailure, retryable: Bool, at: Date
    ) async throws -> Generation {
        try await transition(id, at: at) {
            try Lifecycle.fail($0, worker: worker, token: token, error: error, retryable: retryable, at: at)
        }
    }

    public func expireLeases(at now: Date) async throws -> [Generation] {
        try await write { session in
            // Rows another server is changing are waited for, then checked again against the
            // condition (read committed): one that was heartbeated meanwhile is not expired.
            let expired = try await session.rows(
                """
                SELECT \(unescaped: Self.generationColumns) FROM generations
                WHERE state = 'running' AND lease_expires_at < \(now.timeIntervalSince1970) ORDER BY seq FOR UPDATE
                """)
            var changed: [Generation] = []
            for row in expired {
                let stored = try StoredGeneration(row)
                changed.append(try await Self.persistLocked(session, Lifecycle.expire(stored.generation, at: now), from: stored, at: now))
            }
            return changed
        }
    }

    public func renewLeases(until expiry: Date) async throws -> Int {
        try await change { session in
            try await session.run(
                """
                UPDATE generations SET lease_expires_at = \(expiry.timeIntervalSince1970)
                WHERE state = 'running' AND lease_expires_at < \(expiry.timeIntervalSince1970) RETURNING 1
                """)
        }
    }

    public func releaseLeases(of worker: WorkerID, reason: String, at: Date) async throws -> [Generation] {
        try await write { session in
            let held = try await session.rows(
                """
                SELECT \(unescaped: Self.generationColumns) FROM generations
                WHERE lease_worker = \(worker.rawValue) AND state = 'running' ORDER BY seq FOR UPDATE
                """)
            var released: [Generation] = []
            for row in held {
                let stored = try StoredGeneration(row)
                released.append(
                    try await Self.persistLocked(session, Lifecycle.release(stored.generation, reason: reason), from: stored, at: at))
            }
            return released
        }
    }

    public func oldestQueuedGeneration(of account: AccountID) async throws -> Generation? {
        try await read { session in
            try await session.row(
                """
                SELECT \(unescaped: Self.generationColumns) FROM generations
                WHERE account_id = \(account.rawValue) AND state = 'queued' ORDER BY queued_at, seq LIMIT 1
                """
            ).map(Self.generation(from:))
        }
    }

    public func queuedGenerations() async throws -> [Generation] {
        try await read { session in
            try await session.rows("SELECT \(unescaped: Self.generationColumns) FROM generations WHERE state = 'queued' ORDER BY seq")
                .map(Self.generation(from:))
        }
    }

    public func runningGenerations() async throws -> [Generation] {
        try await read { session in
            try await session.rows("SELECT \(unescaped: Self.generationColumns) FROM generations WHERE state = 'running' ORDER BY seq")
                .map(Self.generation(from:))
        }
    }

    public func events(of id: GenerationID, after: Int64, limit: Int) async throws -> [GenerationEvent] {
        try await read { session in
            try await session.rows(
                """
                SELECT seq, generation_id, kind, at, state, progress_fraction, progress_stage, message FROM generation_events
                WHERE generation_id = \(id.rawValue) AND seq > \(after) ORDER BY seq LIMIT \(limit)
                """
            ).map { row in
                GenerationEvent(
                    sequence: try row.value("seq"), generationID: GenerationID(unchecked: try row.value("generation_id")),
                    kind: GenerationEvent.Kind(rawValue: try row.value("kind")) ?? .progress, at: try row.date("at"),
                    state: GenerationState(rawValue: try row.value("state")) ?? .queued,
                    progress: JobProgress(fraction: try row.value("progress_fraction"), stage: try row.value("progress_stage")),
                    message: try row.value("message"))
            }
        }
    }

    // MARK: Transitions

    /// The outcome of one try of a change made without locks.
    enum Attempt<T> {
        case done(T)
        /// The generation changed between reading it and writing it: read it again and retry.
        case lostRace
    }

    /// How many times a change is tried against a generation that keeps changing under it.
    static let raceAttempts = 50

    /// Runs `body` outside a transaction until it does not lose a race: each try reads the
    /// generation, decides, and writes with one conditional statement (see ``persist``).
    /// - Throws: `.conflict` when every try lost.
    func racing<T: Sendable>(_ subject: String, _ body: (PostgresSession) async throws -> Attempt<T>) async throws -> T {
        try await change { session in
            for _ in 0..<Self.raceAttempts {
                if case .done(let value) = try await body(session) { return value }
            }
            throw KilnError(
                .conflict, "\(subject) kept changing while this change was tried \(Self.raceAttempts) times; nothing was applied")
        }
    }

    /// Reads the generation, applies `decide` (one of ``Lifecycle``'s functions) and persists it,
    /// in two round trips and no transaction; a change that loses a race with another is decided
    /// again on the generation as the other left it, as if it had waited for it.
    func transition(_ id: GenerationID, at: Date, _ decide: (Generation) throws -> Transition) async throws -> Generation {
        try await racing("generation '\(id)'") { session in
            guard let stored = try await Self.fetchForTransition(session, id: id, lock: false) else {
                throw KilnError(.notFound, "no generation '\(id)'")
            }
            return try await Self.persist(session, decide(stored.generation), from: stored, at: at).map { .done($0) } ?? .lostRace
        }
    }

    static func fetchGeneration(_ session: PostgresSession, id: GenerationID) async throws -> Generation? {
        try await session.rows(GenerationByID(id: id)).first.map(generation(from:))
    }

    /// The generation as read for a change; with `lock`, its row is locked until the transaction
    /// ends.
    static func fetchForTransition(_ session: PostgresSession, id: GenerationID, lock: Bool) async throws -> StoredGeneration? {
        let row =
            lock
            ? try await session.row("SELECT \(unescaped: generationColumns) FROM generations WHERE id = \(id.rawValue) FOR UPDATE")
            : try await session.rows(GenerationByID(id: id)).first
        return try row.map(StoredGeneration.init)
    }

    /// ``persist`` for a generation whose row this transaction has locked: it cannot have changed.
    static func persistLocked(_ session: PostgresSession, _ transition: Transition, from stored: StoredGeneration, at: Date)
        async throws -> Generation
    {
        guard let after = try await persist(session, transition, from: stored, at: at) else {
            throw KilnError.generationChanged(stored.generation.id)
        }
        return after
    }

    /// Writes a transition of a generation as it was read, in one statement (``PersistTransition``
    /// or ``PersistEndingTransition``): the conditional update of every column a transition may
    /// change, which applies only while the row is the revision that was read (with the state and
    /// token it had), and, only if it applied, the event, the settling of outputs when the
    /// generation ends and the webhook delivery the event owes.
    /// - Returns: the generation as written; nil when the row had changed and nothing was written.
    static func persist(_ session: PostgresSession, _ transition: Transition, from stored: StoredGeneration, at: Date)
        async throws -> Generation?
    {
        let before = stored.generation
        let after = transition.generation
        guard after != before || transition.event != nil else { return after }
        let plain = PersistTransition(transition: transition, before: stored, at: at)
        // Most transitions neither end the generation nor owe a webhook: a statement that leaves
        // outputs and deliveries alone costs PostgreSQL less.
        let settles = after.state.isFinal && !before.state.isFinal
        let deliveryType = transition.event?.webhookType(for: after)
        let written =
            settles || deliveryType != nil
            ? try await session.rows(PersistEndingTransition(base: plain, settles: settles, deliveryType: deliveryType)).count
            : try await session.rows(plain).count
        return written == 1 ? after : nil
    }
}
