import KilnScheduling
import Testing

@Suite("Arrival window")
struct ArrivalWindowTests {
    @Test("counts per tier and model over the last hour; older buckets fall out; the covered time is honest")
    func window() {
        var window = ArrivalWindow(now: 1_000)
        window.record(tier: "api", model: "a", at: 1_000)
        window.record(tier: "free", model: "a", at: 1_010)
        window.record(tier: "free", model: "b", at: 1_030)
        var recent = window.recent(now: 1_040)
        #expect(recent.byTier == ["api": 1, "free": 2])
        #expect(recent.byModel == ["a": 2, "b": 1])
        #expect(recent.seconds == 40)  // counting began 40 s ago

        // Two hours on: only what came in the last hour counts, over a whole hour.
        for minute in 0..<120 { window.record(tier: "api", model: "a", at: 1_040 + Double(minute) * 60) }
        recent = window.recent(now: 1_040 + 119 * 60)
        #expect(recent.byTier == ["api": 60])
        #expect(recent.byModel == ["a": 60])
        #expect(recent.seconds > 59 * 60 && recent.seconds <= 3_600)

        // A quiet hour empties it, reusing the ring's slots.
        recent = window.recent(now: 1_040 + 119 * 60 + 3_600)
        #expect(recent.byTier.isEmpty)
    }
}
