import KilnCore
import Testing

@testable import KilnScheduling

@Suite("Sequence slab")
struct SequenceSlabTests {
    /// Random sets and removals, mostly near the newest sequence as in a queue, some far below or
    /// above it (outliers), checked after every step against a dictionary.
    @Test("holds exactly what a dictionary would, outliers and spans that grow over them included", arguments: [1, 2, 3])
    func matchesDictionary(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var slab = SequenceSlab<Int>()
        var model: [Int64: Int] = [:]
        var newest: Int64 = 1_000
        for step in 0..<60_000 {
            let sequence: Int64
            switch random.next() % 20 {
            case 0: sequence = Int64(random.next() % 2_000_000)  // anywhere, often far outside the span
            case 1, 2, 3, 4, 5, 6, 7, 8:
                newest += Int64(random.next() % 3)
                sequence = newest
            default:
                // An existing key, to read over or remove.
                sequence = model.keys.randomElement(using: &random) ?? newest
            }
            if random.next() % 3 == 0 {
                #expect(slab.removeValue(forKey: sequence) == model.removeValue(forKey: sequence), "step \(step)")
            } else {
                slab[sequence] = step
                model[sequence] = step
            }
            #expect(slab.count == model.count, "step \(step)")
            if step % 997 == 0 {
                for (key, value) in model { #expect(slab[key] == value, "step \(step), sequence \(key)") }
            }
        }
        for (key, value) in model { #expect(slab[key] == value) }
        for probe in stride(from: Int64(0), to: 2_000_000, by: 9_973) { #expect(slab[probe] == model[probe]) }
    }
}
