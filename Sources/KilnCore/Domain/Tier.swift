/// A service tier and its promise (DESIGN §4): the worst-case wait in the queue, and the admission
/// and concurrency caps that keep one account from taking the whole fleet.
public struct Tier: Hashable, Sendable {
    public var name: String
    /// The promised worst-case wait, in seconds: urgency is waited / `maxWait`.
    public var maxWait: Double
    /// Queued jobs one account of this tier may have; beyond it, `429`.
    public var maxQueuedPerAccount: Int?
    /// Dispatched (leased or running) jobs one account of this tier may have at once.
    public var maxRunningPerAccount: Int?
    /// Queued jobs of this tier across all accounts; beyond it, `429`.
    public var maxQueued: Int?

    public init(
        name: String, maxWait: Double, maxQueuedPerAccount: Int? = nil, maxRunningPerAccount: Int? = nil,
        maxQueued: Int? = nil
    ) {
        self.name = name
        self.maxWait = maxWait
        self.maxQueuedPerAccount = maxQueuedPerAccount
        self.maxRunningPerAccount = maxRunningPerAccount
        self.maxQueued = maxQueued
    }
}

/// The tiers a deployment offers, in priority order (first = most valuable).
///
/// The order matters only to the strict-priority policy and to displays; the SLO policy ranks by
/// each tier's promise alone.
public struct TierTable: Sendable, Hashable {
    public let tiers: [Tier]
    private let indexByName: [String: Int]

    /// - Throws: ``KilnError`` when a name repeats or a promise is not positive.
    public init(_ tiers: [Tier]) throws {
        var index: [String: Int] = [:]
        for (i, tier) in tiers.enumerated() {
            guard index[tier.name] == nil else {
                throw KilnError(.invalidInput, "tier '\(tier.name)' is defined twice")
            }
            guard tier.maxWait > 0, tier.maxWait.isFinite else {
                throw KilnError(.invalidInput, "tier '\(tier.name)': max_wait_seconds must be a positive number")
            }
            for (field, value) in [
                ("max_queued_per_account", tier.maxQueuedPerAccount), ("max_running_per_account", tier.maxRunningPerAccount),
                ("max_queued", tier.maxQueued),
            ] {
                if let value, value < 1 {
                    throw KilnError(.invalidInput, "tier '\(tier.name)': \(field) must be at least 1")
                }
            }
            index[tier.name] = i
        }
        guard !tiers.isEmpty else { throw KilnError(.invalidInput, "at least one tier is needed") }
        self.tiers = tiers
        self.indexByName = index
    }

    /// The five tiers of DESIGN §3 with their default promises and caps: every tier caps what one
    /// account may queue and run, so that no single account, paying or not, takes the fleet.
    public static let standard = try! TierTable([
        Tier(name: "enterprise", maxWait: 60, maxQueuedPerAccount: 10_000, maxRunningPerAccount: 1_000),
        Tier(name: "api", maxWait: 120, maxQueuedPerAccount: 5_000, maxRunningPerAccount: 500),
        Tier(name: "unlimited", maxWait: 300, maxQueuedPerAccount: 200, maxRunningPerAccount: 20),
        Tier(name: "light", maxWait: 900, maxQueuedPerAccount: 50, maxRunningPerAccount: 5),
        Tier(name: "free", maxWait: 3_600, maxQueuedPerAccount: 20, maxRunningPerAccount: 2),
    ])

    public func index(of name: String) -> Int? { indexByName[name] }

    public subscript(name: String) -> Tier? {
        indexByName[name].map { tiers[$0] }
    }

    public var names: [String] { tiers.map(\.name) }
}
