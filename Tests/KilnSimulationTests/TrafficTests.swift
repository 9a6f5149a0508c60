import KilnCore
import Testing

@testable import KilnSimulation

@Suite("Traffic")
struct TrafficTests {
    /// The day's drawn jobs come in arrival order; trace jobs come in any order. The merge must
    /// give what a stable sort of both by arrival gives, drawn jobs first at the same instant.
    @Test("trace jobs merge into the drawn ones by arrival; at the same instant drawn ones go first")
    func traceMergesStably() {
        func job(_ arrival: Double, _ account: Int) -> SimJob { SimJob(arrival: arrival, tier: 0, account: account, model: 0, work: 1) }
        let drawn = [job(1, 0), job(2, 1), job(2, 2), job(5, 3), job(9, 4)]
        let trace = [job(9, 10), job(-3, 11), job(2, 12), job(2, 13), job(12, 14), job(-3, 15)]
        let merged = TrafficGenerator.merge(drawn, trace)
        #expect(merged.map(\.account) == [11, 15, 0, 1, 2, 12, 13, 3, 4, 10, 14])
        #expect(TrafficGenerator.merge(drawn, []).map(\.account) == drawn.map(\.account))
        #expect(TrafficGenerator.merge([], trace).map(\.account) == [11, 15, 12, 13, 10, 14])
    }

    @Test("a lognormal run time has the mean and spread it was given; a fixed one is its mean")
    func runTimeDraws() {
        var random = SplitMix64(seed: 3)
        let lognormal = Scenario.RunTime.Sampler(.init(distribution: .lognormal, meanSeconds: 240, stddevSeconds: 120))
        let draws = (0..<200_000).map { _ in lognormal.draw(&random) }
        let mean = draws.reduce(0, +) / Double(draws.count)
        let deviation = (draws.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(draws.count)).squareRoot()
        #expect(abs(mean - 240) < 2.4, "mean \(mean)")
        #expect(abs(deviation - 120) < 3.6, "standard deviation \(deviation)")
        let fixed = Scenario.RunTime.Sampler(.init(distribution: .fixed, meanSeconds: 30, stddevSeconds: 5))
        #expect(fixed.draw(&random) == 30)
        let tiny = Scenario.RunTime.Sampler(.init(distribution: .uniform, meanSeconds: 0.0001, stddevSeconds: 0))
        #expect(tiny.draw(&random) == 0.001, "never below a millisecond")
        // A spread too small to show still takes its normal draw: the draws after it stay the seed's.
        let narrow = Scenario.RunTime.Sampler(.init(distribution: .lognormal, meanSeconds: 240, stddevSeconds: 1e-9))
        var drawn = SplitMix64(seed: 5)
        var expected = drawn
        #expect(abs(narrow.draw(&drawn) - 240) < 1e-9)
        _ = expected.normal()
        #expect(drawn.next() == expected.next())
    }
}

@Suite("Radix sort of waits")
struct RadixSortTests {
    @Test("sorts as the standard sort does: large and small arrays, repeated values, zeros, subnormals, infinity")
    func matchesStandardSort() {
        var random = SplitMix64(seed: 11)
        for count in [0, 1, 2, 255, 256, 257, 1_000, 50_000] {
            var values = (0..<count).map { _ -> Double in
                switch random.next() % 6 {
                case 0: return 0
                case 1: return Double(random.next() % 10)  // many equal values
                case 2: return Double.leastNonzeroMagnitude * Double(random.next() % 4)
                case 3: return random.unit() * 1e9
                case 4: return count % 2 == 0 ? -0.0 : .infinity
                default: return random.exponential(mean: 300)
                }
            }
            let expected = values.sorted()
            RadixSort.sort(&values)
            #expect(values == expected, "\(count) values")
        }
    }

    @Test("values below zero take the standard sort")
    func fallsBack() {
        var values = (0..<1_000).map { Double($0 % 7) - 3 }
        RadixSort.sort(&values)
        #expect(values == (0..<1_000).map { Double($0 % 7) - 3 }.sorted())
    }
}
