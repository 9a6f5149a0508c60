import Foundation
import KilnCore

extension Scenario.RunTime {
    /// One draw, in seconds (never below a millisecond).
    public func sample(_ random: inout SplitMix64) -> Double {
        let value: Double
        switch distribution {
        case .fixed:
            value = meanSeconds
        case .exponential:
            value = random.exponential(mean: meanSeconds)
        case .uniform:
            let half = stddevSeconds * 3.0.squareRoot()
            value = meanSeconds - half + 2 * half * random.unit()
        case .lognormal:
            guard stddevSeconds > 0 else {
                value = meanSeconds
                break
            }
            let variance = log(1 + (stddevSeconds * stddevSeconds) / (meanSeconds * meanSeconds))
            let mu = log(meanSeconds) - variance / 2
            value = exp(mu + variance.squareRoot() * random.normal())
        }
        return max(value, 0.001)
    }
}
