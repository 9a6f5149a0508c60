import Foundation
import KilnCore

extension Scenario.RunTime {
    /// Draws of this run time, with the distribution's parameters worked out once.
    struct Sampler {
        private let distribution: Scenario.RunTime.Kind
        private let mean: Double
        /// Uniform: half the width; lognormal: the underlying normal's standard deviation.
        private let spread: Double
        /// Lognormal: the underlying normal's mean.
        private let mu: Double
        /// Lognormal: whether the run time varies at all (a spread so small that it rounds to zero
        /// still draws, so that the draws after it are those of the seed).
        private let varies: Bool

        init(_ runtime: Scenario.RunTime) {
            distribution = runtime.distribution
            mean = runtime.meanSeconds
            varies = runtime.stddevSeconds > 0
            switch runtime.distribution {
            case .uniform:
                spread = runtime.stddevSeconds * 3.0.squareRoot()
                mu = 0
            case .lognormal where runtime.stddevSeconds > 0:
                let variance = log(1 + (runtime.stddevSeconds * runtime.stddevSeconds) / (mean * mean))
                spread = variance.squareRoot()
                mu = log(mean) - variance / 2
            default:
                spread = 0
                mu = 0
            }
        }

        /// One draw, in seconds (never below a millisecond).
        func draw(_ random: inout SplitMix64) -> Double {
            let value: Double
            switch distribution {
            case .fixed:
                value = mean
            case .exponential:
                value = random.exponential(mean: mean)
            case .uniform:
                value = mean - spread + 2 * spread * random.unit()
            case .lognormal:
                value = varies ? exp(mu + spread * random.normal()) : mean
            }
            return max(value, 0.001)
        }
    }
}
