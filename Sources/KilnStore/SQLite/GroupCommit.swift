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

    init(pool: DatabasePool) {
        self.pool = pool
    }

    /// Runs `body` in the next group and returns its result once the group is committed.
    /// - Throws: what `body` threw (its changes rolled back), or the commit's error.
    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
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
                answer: { commitError in
                    if let commitError {
                        continuation.resume(throwing: commitError)
                    } else {
                        continuation.resume(with: outcome.result ?? .failure(KilnError(.internal, "a change ran without a result")))
                    }
                })
            let lead = lock.withLock {
                pending.append(change)
                guard !committing else { return false }
                committing = true
                return true
            }
            if lead { Task { await self.commitPending() } }
        }
    }

    /// Commits groups until none is pending.
    private func commitPending() async {
        while true {
            let group: [Change] = lock.withLock {
                let taken = pending
                pending.removeAll(keepingCapacity: true)
                if taken.isEmpty { committing = false }
                return taken
            }
            guard !group.isEmpty else { return }
            do {
                try await pool.write { db in
                    for change in group { change.apply(db) }
                }
                for change in group { change.answer(nil) }
            } catch {
                for change in group { change.answer(error) }
            }
        }
    }

    /// One change's outcome, set inside the transaction and read after its commit.
    private final class Outcome<T: Sendable>: @unchecked Sendable {
        var result: Result<T, any Error>?
    }
}
