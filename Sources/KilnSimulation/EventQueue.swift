import DequeModule

/// The events of a run in time order, then in the order they were scheduled: the total order that
/// makes a run reproducible.
///
/// Most events come at a fixed delay after the event that schedules them (the next arrival, a
/// lease's start after its cluster's delay), so they arrive in time order already. Those go to a
/// *lane*, a FIFO queue, where scheduling and taking cost O(1); the rest go to a heap. Taking the
/// next event compares the heap's top with each lane's head. The order is the same as that of one
/// heap: each event carries the sequence number it was scheduled with.
///
/// The heap has four children a node, so that a pop touches half the levels of a binary heap and
/// the four siblings it compares sit side by side; both sifts move a hole rather than swap. Keep
/// `Event` small (16 bytes or less): it travels with its key.
///
/// Times are zero or more: an entry keeps its time's bit pattern, which orders such times as the
/// times themselves, so that comparing two entries is integer work the compiler does without a
/// branch (a sift compares entries whose order no branch predictor can guess).
struct EventQueue<Event> {
    private struct Entry {
        var key: UInt64
        var sequence: UInt64
        var event: Event

        init(time: Double, sequence: UInt64, event: Event) {
            precondition(time >= 0, "an event's time must be zero or more, not \(time)")
            self.key = (time + 0).bitPattern  // -0 + 0 is +0
            self.sequence = sequence
            self.event = event
        }

        var time: Double { Double(bitPattern: key) }

        @inline(__always)
        func isBefore(_ other: Entry) -> Bool {
            key != other.key ? key < other.key : sequence < other.sequence
        }
    }

    private var heap: [Entry] = []
    private var lanes: [Deque<Entry>]
    private var nextSequence: UInt64 = 0

    /// - Parameter lanes: how many FIFO lanes ``schedule(_:at:lane:)`` may use.
    init(lanes: Int = 0) {
        self.lanes = Array(repeating: [], count: lanes)
    }

    var isEmpty: Bool { heap.isEmpty && lanes.allSatisfy(\.isEmpty) }
    var count: Int { lanes.reduce(heap.count) { $0 + $1.count } }

    /// Schedules an event at any time.
    mutating func schedule(_ event: Event, at time: Double) {
        let entry = Entry(time: time, sequence: nextSequence, event: event)
        nextSequence += 1
        push(entry)
    }

    /// Schedules an event on a lane: O(1) when `time` is no earlier than the lane's last event, as it
    /// is when every event of the lane comes at the same delay after the current time; otherwise the
    /// event goes to the heap, in the same order.
    mutating func schedule(_ event: Event, at time: Double, lane: Int) {
        let entry = Entry(time: time, sequence: nextSequence, event: event)
        nextSequence += 1
        if let last = lanes[lane].last, entry.isBefore(last) {
            push(entry)
        } else {
            lanes[lane].append(entry)
        }
    }

    mutating func pop() -> (time: Double, event: Event)? {
        var lane = -1
        var best = heap.first
        for index in lanes.indices {
            guard let head = lanes[index].first else { continue }
            if let current = best, !head.isBefore(current) { continue }
            best = head
            lane = index
        }
        guard let best else { return nil }
        if lane >= 0 {
            lanes[lane].removeFirst()
        } else {
            popHeap()
        }
        return (best.time, best.event)
    }

    private mutating func push(_ entry: Entry) {
        heap.append(entry)
        heap.withUnsafeMutableBufferPointer { heap in
            var child = heap.count - 1
            while child > 0 {
                let parent = (child - 1) / 4
                guard entry.isBefore(heap[parent]) else { break }
                heap[child] = heap[parent]
                child = parent
            }
            heap[child] = entry
        }
    }

    /// Removes the heap's top.
    private mutating func popHeap() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap.withUnsafeMutableBufferPointer { heap in
            // The last entry moves down from the root's hole.
            let count = heap.count
            var hole = 0
            while true {
                let first = 4 * hole + 1
                guard first < count else { break }
                var child = first
                var sibling = first + 1
                let end = min(first + 4, count)
                while sibling < end {
                    child = heap[sibling].isBefore(heap[child]) ? sibling : child
                    sibling += 1
                }
                guard heap[child].isBefore(last) else { break }
                heap[hole] = heap[child]
                hole = child
            }
            heap[hole] = last
        }
    }
}
