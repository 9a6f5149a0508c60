import Foundation
import GRDB
import KilnCore

/// Commits the store's changes in groups (DESIGN §8): changes that arrive while a commit is on its
/// way to disk wait, then go to disk together in one transaction with one fsync. Each change runs
/// in a savepoint of its own, so one that fails (a stale token, a conflict) rolls back alone and
/// the others commit; each caller is answered only once its group is durable.
///
///     write ──▶ pending ──(no commit running)──▶ committing: one transaction, a savepoint each
///                  ▲                                   │ commit (fsync), then every caller answered
///                  └──── changes arriving meanwhile ◀──┘ next group, until none is pending
final class GroupCommit: @unchecked Sendable {
    private struct Change: Sendable {
        /// Runs the change inside the group's transaction.
        let apply: @Sendable (Database) -> Void
        /// Answers the caller: with the change's own outcome, or the commit's failure.
        let answer: @Sendable ((any Error)?) -> Void
    }

    private let pool: DatabasePool
    private let lock = NSLock()
    private var pending: [Change] = []
    private var committing = false
    private var observer: (@Sendable (CommitTiming) -> Void)?

    init(pool: DatabasePool) {
        self.pool = pool
    }

    /// Calls `observer` after each committed group (see ``JobStore/observeCommits(_:)``).
    func observe(_ observer: @escaping @Sendable (CommitTiming) -> Void) {
        lock.withLock { self.observer = observer }
    }

    /// Runs `body` in the next group and returns its result once the group is committed.
    ///
    /// The caller whose change finds no commit running leads: it commits the group itself, in its
    /// own task, so a change that arrives alone costs no hop to another task. Changes that arrived
    /// meanwhile go to disk next, led by a task of their own, so that no leader's answer waits for
    /// more than its own group.
    /// - Throws: what `body` threw (its changes rolled back), or the commit's error.
    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let outcome = Outcome<T>()
        let change = Change(
            apply: { db in
                do {
                    var value: T?
                    try db.inSavepoint {
                        value = try body(db)
                        return .commit
                    }
                    outcome.result = value.map { .success($0) }
                } catch {
                    outcome.result = .failure(error)
                }
            },
            answer: { commitError in outcome.finish(commitError) })
        let lead = lock.withLock {
            pending.append(change)
            guard !committing else { return false }
            committing = true
            return true
        }
        if lead {
            await commitGroup()
            handOff()
        }
        return try await outcome.value()
    }

    /// After a group: stop leading when nothing is pending (the next change leads itself), or
    /// commit the next group in a task of its own.
    private func handOff() {
        let more = lock.withLock {
            if pending.isEmpty { committing = false }
            return committing
        }
        if more {
            Task {
                await self.commitGroup()
                self.handOff()
            }
        }
    }

    /// Commits the changes pending now, as one group, and answers their callers.
    private func commitGroup() async {
        let group: [Change] = lock.withLock {
            let taken = pending
            pending.removeAll(keepingCapacity: true)
            return taken
        }
        guard !group.isEmpty else { return }
        do {
            let clock = ContinuousClock()
            let began = clock.now
            try await pool.write { db in
                for change in group { change.apply(db) }
            }
            let observer = lock.withLock { self.observer }
            observer?(CommitTiming(changes: group.count, seconds: (clock.now - began).seconds))
            for change in group { change.answer(nil) }
        } catch {
            for change in group { change.answer(error) }
        }
    }

    /// One change's outcome: set inside the transaction, final once its group is committed, and
    /// awaited by its caller (who may come to wait before or after that).
    private final class Outcome<T: Sendable>: @unchecked Sendable {
        private let lock = NSLock()
        var result: Result<T, any Error>?
        private var final: Result<T, any Error>?
        private var waiter: CheckedContinuation<T, any Error>?

        func finish(_ commitError: (any Error)?) {
            let final: Result<T, any Error> =
                commitError.map { .failure($0) } ?? result ?? .failure(KilnError(.internal, "a change ran without a result"))
            let waiter = lock.withLock {
                self.final = final
                defer { self.waiter = nil }
                return self.waiter
            }
            waiter?.resume(with: final)
        }

        func value() async throws -> T {
            try await withCheckedThrowingContinuation { continuation in
                let ready = lock.withLock {
                    if final == nil { waiter = continuation }
                    return final
                }
                if let ready { continuation.resume(with: ready) }
            }
        }
    }
}
