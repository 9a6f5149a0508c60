import DequeModule

/// Jobs leaving the queue per second over a recent window, for queue ETAs and `Retry-After`.
///
/// Pure: the caller passes `now`. O(1) amortised per event; memory bounded by `capacity`.
public struct ThroughputEstimator: Sendable {
    public let window: Double
    public let capacity: Int
    private var times: Deque<Double> = []

    public init(window: Double = 300, capacity: Int = 50_000) {
        self.window = window
        self.capacity = capacity
    }

    public mutating func record(at now: Double) {
        times.append(now)
        if times.count > capacity { times.removeFirst() }
        trim(now: now)
    }

    /// Jobs per second over the window, or nil before two events were seen.
    public mutating func rate(now: Double) -> Double? {
        trim(now: now)
        guard times.count >= 2, let first = times.first else { return nil }
        let span = max(now - first, 1)
        return Double(times.count) / span
    }

    /// Seconds until `position` jobs ahead have left the queue, at the current rate.
    public mutating func eta(position: Int, now: Double) -> Double? {
        guard let rate = rate(now: now), rate > 0 else { return nil }
        return Double(position + 1) / rate
    }

    private mutating func trim(now: Double) {
        while let first = times.first, first < now - window { times.removeFirst() }
    }
}
