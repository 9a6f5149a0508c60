/// Submissions per tier and per model over a recent window (an hour by default), in one-minute
/// buckets: the recent arrival rate a what-if forecast runs on.
///
/// Pure: the caller passes `now`. O(1) per arrival; memory bounded by the buckets times the tiers
/// and models seen.
public struct ArrivalWindow: Sendable {
    public let bucketSeconds: Double
    public let buckets: Int
    /// When counting began: the window covers less than its length until then.
    private let started: Double
    /// Per ring slot: the bucket number it holds (time ÷ bucketSeconds), and its counts.
    private var slots: [Int]
    private var byTier: [[String: Int]]
    private var byModel: [[String: Int]]

    public init(now: Double, bucketSeconds: Double = 60, buckets: Int = 60) {
        precondition(bucketSeconds > 0 && buckets > 0, "an arrival window needs buckets")
        self.bucketSeconds = bucketSeconds
        self.buckets = buckets
        started = now
        slots = Array(repeating: Int.min, count: buckets)
        byTier = Array(repeating: [:], count: buckets)
        byModel = Array(repeating: [:], count: buckets)
    }

    public mutating func record(tier: String, model: String, at now: Double) {
        let bucket = Int((now / bucketSeconds).rounded(.down))
        let slot = ((bucket % buckets) + buckets) % buckets
        if slots[slot] != bucket {
            slots[slot] = bucket
            byTier[slot].removeAll(keepingCapacity: true)
            byModel[slot].removeAll(keepingCapacity: true)
        }
        byTier[slot][tier, default: 0] += 1
        byModel[slot][model, default: 0] += 1
    }

    /// The submissions of the window ending at `now`, and the seconds they cover: from the start of
    /// its oldest bucket, or from when counting began if that is later (at least a second).
    public func recent(now: Double) -> (byTier: [String: Int], byModel: [String: Int], seconds: Double) {
        let current = Int((now / bucketSeconds).rounded(.down))
        var tiers: [String: Int] = [:]
        var models: [String: Int] = [:]
        for slot in slots.indices where slots[slot] > current - buckets && slots[slot] <= current {
            tiers.merge(byTier[slot], uniquingKeysWith: +)
            models.merge(byModel[slot], uniquingKeysWith: +)
        }
        let covered = now - Double(current - buckets + 1) * bucketSeconds  // the oldest bucket's start to now
        return (tiers, models, max(1, min(covered, now - started)))
    }
}
