import Foundation
import KilnCore
import KilnStore
import Testing

/// Conformance of ``LeaderElection``: the lease several servers on one store elect their leader by.
@Suite("JobStore conformance: leadership")
struct LeadershipConformanceTests {
    @Test("the first claim leads; others are refused while it runs, take it with the next epoch once it lapses, and a resignation frees it", arguments: StoreBackend.allCases)
    func lease(_ backend: StoreBackend) async throws {
        let store = try #require(try await backend.make() as? any LeaderElection, "\(backend) does not elect a leader")
        let first = try await store.claimLeadership(holder: "a", url: "http://a", at: Fixture.time(0), ttl: 10)
        #expect(first == LeaderLease(holder: "a", epoch: 1, url: "http://a", expiresAt: Fixture.time(10)))
        // Another server, while the lease runs: told who leads, and nothing changes.
        #expect(try await store.claimLeadership(holder: "b", url: "http://b", at: Fixture.time(5), ttl: 10) == first)
        // The holder renews: same epoch, later expiry.
        let renewed = try await store.claimLeadership(holder: "a", url: "http://a", at: Fixture.time(6), ttl: 10)
        #expect(renewed == LeaderLease(holder: "a", epoch: 1, url: "http://a", expiresAt: Fixture.time(16)))
        // It lapses: the next claim takes it, with the next epoch.
        let taken = try await store.claimLeadership(holder: "b", url: "http://b", at: Fixture.time(16), ttl: 10)
        #expect(taken == LeaderLease(holder: "b", epoch: 2, url: "http://b", expiresAt: Fixture.time(26)))
        // The old leader, back late, learns it no longer leads.
        #expect(try await store.claimLeadership(holder: "a", url: "http://a", at: Fixture.time(17), ttl: 10).holder == "b")
        // A resignation frees it at once; only the holder's counts.
        try await store.resignLeadership(holder: "a")
        #expect(try await store.claimLeadership(holder: "c", url: "http://c", at: Fixture.time(18), ttl: 10).holder == "b")
        try await store.resignLeadership(holder: "b")
        let third = try await store.claimLeadership(holder: "c", url: "http://c", at: Fixture.time(18), ttl: 10)
        #expect(third == LeaderLease(holder: "c", epoch: 3, url: "http://c", expiresAt: Fixture.time(28)))
    }

    @Test("servers racing for a free lease: exactly one wins, and all agree on it", arguments: StoreBackend.allCases)
    func race(_ backend: StoreBackend) async throws {
        let store = try #require(try await backend.make() as? any LeaderElection, "\(backend) does not elect a leader")
        let leases = try await withThrowingTaskGroup(of: LeaderLease.self) { group in
            for index in 0..<8 {
                group.addTask { try await store.claimLeadership(holder: "s\(index)", url: "http://s\(index)", at: Fixture.time(0), ttl: 10) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(Set(leases).count == 1)
        #expect(leases.first?.epoch == 1)
    }
}
