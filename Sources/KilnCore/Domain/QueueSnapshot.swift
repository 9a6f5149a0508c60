import Foundation

/// Where a queued generation stands: what `queue` says of it in the API.
public struct QueuePlace: Hashable, Sendable {
    /// Jobs the scheduler would dispatch before this one now.
    public var position: Int
    /// Estimated seconds until dispatch, from recent throughput; nil before any was measured.
    public var etaSeconds: Double?
    /// The promised latest dispatch: queue time + the tier's worst-case wait.
    public var deadline: Date

    public init(position: Int, etaSeconds: Double?, deadline: Date) {
        self.position = position
        self.etaSeconds = etaSeconds
        self.deadline = deadline
    }
}

/// The dispatcher's queue as operators see it: per tier and model, and the next jobs in order.
public struct QueueSnapshot: Hashable, Sendable {
    public struct Row: Hashable, Sendable {
        public var tier: String
        public var model: String
        public var queued: Int
        /// Set aside while their account is at its running cap.
        public var parked: Int
        public var oldestQueuedAt: Date?
        public var maxUrgency: Double?

        public init(tier: String, model: String, queued: Int, parked: Int, oldestQueuedAt: Date?, maxUrgency: Double?) {
            self.tier = tier
            self.model = model
            self.queued = queued
            self.parked = parked
            self.oldestQueuedAt = oldestQueuedAt
            self.maxUrgency = maxUrgency
        }
    }

    public struct Entry: Hashable, Sendable {
        public var id: GenerationID
        public var tier: String
        public var model: String
        public var queuedAt: Date
        public var urgency: Double

        public init(id: GenerationID, tier: String, model: String, queuedAt: Date, urgency: Double) {
            self.id = id
            self.tier = tier
            self.model = model
            self.queuedAt = queuedAt
            self.urgency = urgency
        }
    }

    public var policy: String
    public var queued: Int
    public var dispatched: Int
    public var rows: [Row]
    /// The first jobs in dispatch order.
    public var next: [Entry]

    public init(policy: String, queued: Int, dispatched: Int, rows: [Row], next: [Entry]) {
        self.policy = policy
        self.queued = queued
        self.dispatched = dispatched
        self.rows = rows
        self.next = next
    }
}

/// One sample of the queue's recent history: per tier, jobs queued and the largest share of the
/// promise a queued job had used.
public struct QueueSample: Hashable, Sendable {
    public struct Tier: Hashable, Sendable {
        public var name: String
        public var queued: Int
        public var oldestShare: Double

        public init(name: String, queued: Int, oldestShare: Double) {
            self.name = name
            self.queued = queued
            self.oldestShare = oldestShare
        }
    }

    public var at: Date
    /// Every configured tier, in priority order.
    public var tiers: [Tier]

    public init(at: Date, tiers: [Tier]) {
        self.at = at
        self.tiers = tiers
    }
}
