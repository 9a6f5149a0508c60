import DequeModule

/// Values keyed by job sequence number, held in an array that spans the live sequences.
///
/// Sequences are the store's row ids: dense and increasing, and jobs leave roughly in the order
/// they came. So a slot per sequence from the lowest live one to the highest is a lookup by index,
/// with no hashing and no pointer chasing, and the span is trimmed from both ends as jobs leave.
/// A sequence far outside the span (more than its length away, past a floor) goes to a dictionary
/// beside it instead, so that a stray outlier cannot make the span huge.
struct SequenceSlab<Value>: Sendable where Value: Sendable {
    private var base: Int64 = 0
    private var slots: Deque<Value?> = []
    private var outliers: [Int64: Value] = [:]
    /// Values held.
    private(set) var count = 0

    /// How far outside the span a sequence may land and still extend it.
    private var reach: Int64 { Int64(Swift.max(slots.count, 4096)) }

    /// A sequence lives in one place: its slot inside the span, or among the outliers outside it
    /// (when the span grows over an outlier, the outlier moves into its slot).
    @inline(__always)
    subscript(sequence: Int64) -> Value? {
        get {
            let offset = sequence &- base
            if offset >= 0, offset < Int64(slots.count) { return slots[Int(offset)] }
            return outliers.isEmpty ? nil : outliers[sequence]
        }
        set {
            let offset = sequence &- base
            if offset >= 0, offset < Int64(slots.count) {
                let old = slots[Int(offset)]
                slots[Int(offset)] = newValue
                count += (newValue == nil ? 0 : 1) - (old == nil ? 0 : 1)
                if newValue == nil { trim() }
                return
            }
            if !outliers.isEmpty, outliers[sequence] != nil {
                outliers[sequence] = newValue
                if newValue == nil { count -= 1 }
                return
            }
            guard let newValue else { return }
            count += 1
            if count == 1 {
                // Nothing else held: the span restarts here.
                slots.removeAll(keepingCapacity: true)
                base = sequence
                slots.append(newValue)
            } else if offset >= Int64(slots.count), offset - Int64(slots.count) < reach {
                let covered = base + Int64(slots.count)..<sequence
                slots.append(contentsOf: repeatElement(nil, count: Int(offset) - slots.count))
                slots.append(newValue)
                absorbOutliers(in: covered)
            } else if offset < 0, -offset <= reach {
                let covered = sequence + 1..<base
                slots.prepend(contentsOf: repeatElement(nil, count: Int(-offset)))
                base = sequence
                slots[0] = newValue
                absorbOutliers(in: covered)
            } else {
                outliers[sequence] = newValue
            }
        }
    }

    /// Moves the outliers in `covered`, which the span has just grown over, into their slots: by
    /// looking each sequence up when the span grew by fewer than there are outliers (as it does, by
    /// one, with each new job), else by going through the outliers.
    private mutating func absorbOutliers(in covered: Range<Int64>) {
        guard !outliers.isEmpty, !covered.isEmpty else { return }
        if covered.count < outliers.count {
            for sequence in covered {
                if let value = outliers.removeValue(forKey: sequence) { slots[Int(sequence - base)] = value }
            }
        } else {
            for (sequence, value) in outliers where covered.contains(sequence) {
                slots[Int(sequence - base)] = value
                outliers[sequence] = nil
            }
        }
    }

    /// Removes and returns the value of `sequence`.
    mutating func removeValue(forKey sequence: Int64) -> Value? {
        let value = self[sequence]
        if value != nil { self[sequence] = nil }
        return value
    }

    /// Drops the empty slots at the front. Those at the back stay: sequences only grow, so new ones
    /// fill them, and trimming them would make every arrival after a recent job's exit re-grow the
    /// span.
    private mutating func trim() {
        while let first = slots.first, first == nil {
            slots.removeFirst()
            base += 1
        }
    }
}
