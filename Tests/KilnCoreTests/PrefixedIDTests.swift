import Foundation
import KilnCore
import Testing

@Suite("Prefixed ids")
struct PrefixedIDTests {
    /// The same bits every draw: only the time can order the ids below.
    private struct Constant: RandomNumberGenerator {
        var value: UInt64
        mutating func next() -> UInt64 { value }
    }

    @Test("ids sort by the millisecond they were made in, whatever their random part")
    func sortByCreation() {
        var high = Constant(value: .max)
        var low = Constant(value: 0)
        let start = Date(timeIntervalSince1970: 1_796_000_000.123)
        let earlier = GenerationID.random(at: start, using: &high)
        let later = GenerationID.random(at: start + 0.001, using: &low)
        #expect(earlier < later, "\(earlier) was made a millisecond before \(later)")
        // Decades apart, the order holds across every character of the time.
        let old = GenerationID.random(at: Date(timeIntervalSince1970: 0), using: &high)
        let far = GenerationID.random(at: Date(timeIntervalSince1970: 4_000_000_000), using: &low)
        #expect(old < earlier && later < far)
    }

    @Test("an id made now parses back as its own kind only, and two made at once differ")
    func parseAndDiffer() {
        let ids = (0..<1_000).map { _ in GenerationID.random() }
        #expect(Set(ids).count == ids.count)
        for id in ids.prefix(10) {
            #expect(id.rawValue.count == 4 + 24)
            #expect(GenerationID(rawValue: id.rawValue) == id)
            #expect(FileID(rawValue: id.rawValue) == nil)
        }
    }
}
