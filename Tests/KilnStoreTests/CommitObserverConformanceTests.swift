import Foundation
import KilnCore
import KilnStore
import Synchronization
import Testing

/// Conformance of ``JobStore`` backends: the commit observer the server's store metrics hang on.
@Suite("JobStore conformance: commit observer")
struct CommitObserverConformanceTests {
    @Test("the commit observer is reached through as many calls at the hundredth commit as at the first", arguments: StoreBackend.allCases)
    func observerDepth(_ backend: StoreBackend) async throws {
        let store = try await backend.make()
        // The depth of the stack each time the observer runs: it must not grow with the commits
        // made (a closure rewrapped at each call would make every commit cost more than the last).
        let depths = Mutex<[Int]>([])
        store.observeCommits { _ in
            let depth = Thread.callStackSymbols.count
            depths.withLock { $0.append(depth) }
        }
        let account = try await store.seedAccount()
        for index in 0..<100 {
            _ = try await store.submitQueued(makeGeneration(account: account.id, at: Fixture.time(Double(index))))
        }
        let observed = depths.withLock { $0 }
        #expect(observed.count >= 2, "the observer was called")
        let first = try #require(observed.first)
        #expect(observed.allSatisfy { $0 <= first + 8 }, "stack depths grew from \(first) to \(observed.max() ?? 0)")
    }
}
