import KilnCore
import Testing

@testable import KilnSimulation

@Suite("Event queue")
struct EventQueueTests {
    /// Events scheduled as a run schedules them (on the heap at any time, on lanes mostly at a
    /// fixed delay after now, now and then earlier than the lane's last), taken in between: the
    /// order taken must be (time, order scheduled), as one sorted list gives it.
    @Test("takes events in (time, order scheduled) order, lanes and heap together", arguments: [1, 2, 3])
    func totalOrder(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var queue = EventQueue<Int>(lanes: 3)
        var pending: [(time: Double, order: Int)] = []
        var now = 0.0
        var scheduled = 0
        var taken = 0
        for _ in 0..<12_000 {
            if random.next() % 2 == 0 || pending.isEmpty {
                let lane = Int(random.next() % 4) - 1  // -1: the heap
                let time: Double
                switch lane {
                case -1: time = now + Double(random.next() % 1_000) / 10
                case 0: time = now  // ties with whatever else is due now
                default: time = random.next() % 50 == 0 ? now + 0.5 : now + Double(lane) * 5
                }
                if lane < 0 {
                    queue.schedule(scheduled, at: time)
                } else {
                    queue.schedule(scheduled, at: time, lane: lane)
                }
                pending.append((time, scheduled))
                scheduled += 1
            } else {
                let expected = pending.indices.min { a, b in
                    pending[a].time != pending[b].time ? pending[a].time < pending[b].time : pending[a].order < pending[b].order
                }!
                let event = queue.pop()
                #expect(event?.event == pending[expected].order, "take \(taken)")
                #expect(event?.time == pending[expected].time)
                now = pending[expected].time
                pending.remove(at: expected)
                taken += 1
            }
            #expect(queue.count == pending.count)
        }
        pending.sort { $0.time != $1.time ? $0.time < $1.time : $0.order < $1.order }
        for item in pending { #expect(queue.pop()?.event == item.order) }
        #expect(queue.pop() == nil)
        #expect(queue.isEmpty)
    }

    /// Entries compare by their times' bit patterns: -0 must be the same instant as +0, taken in
    /// the order scheduled, and before any later time, however small.
    @Test("minus zero is the same instant as zero, and comes before the smallest later time")
    func minusZero() {
        var queue = EventQueue<Int>(lanes: 1)
        queue.schedule(0, at: Double.leastNonzeroMagnitude)
        queue.schedule(1, at: 0)
        queue.schedule(2, at: -0.0)
        queue.schedule(3, at: max(0, -0.0), lane: 0)
        queue.schedule(4, at: 1e-300)
        var order: [Int] = []
        while let (_, event) = queue.pop() { order.append(event) }
        #expect(order == [1, 2, 3, 0, 4])
    }
}
