import Foundation

/// Plain-text tables of simulation reports, for the terminal.
public enum ReportTable {
    /// One run: a row per tier, then the fleet.
    public static func render(_ report: SimulationReport) -> String {
        var lines: [String] = []
        lines.append(
            "\(report.scenario) · policy \(report.policy) · fleet \(report.fleet) · seed \(report.seed) · \(format(report.durationHours, 1)) h · \(grouped(report.jobs)) jobs"
        )
        let header = ["tier", "promise", "jobs", "served", "within", "p50", "p95", "p99", "max", "p50×", "p95×", "p99×", "max×"]
        var rows: [[String]] = [header]
        for tier in report.tiers {
            rows.append([
                tier.name, duration(tier.maxWaitSeconds), grouped(tier.jobs), grouped(tier.completed), percent(tier.attainment),
                duration(tier.waitSeconds.p50), duration(tier.waitSeconds.p95), duration(tier.waitSeconds.p99),
                duration(tier.waitSeconds.max), multiple(tier.waitMultiple.p50), multiple(tier.waitMultiple.p95),
                multiple(tier.waitMultiple.p99), multiple(tier.waitMultiple.max),
            ])
        }
        lines.append(contentsOf: align(rows))
        lines.append(
            "GPU utilisation \(percent(report.gpuUtilisation)) of \(grouped(Int(report.gpuHoursAvailable))) GPU-hours (\(grouped(Int(report.gpuHoursBorrowed))) borrowed, \(grouped(Int(report.gpuHoursLent))) more lent) · idle \(grouped(Int(report.gpuHoursIdle))) · model switches \(grouped(report.modelSwitches)) (\(grouped(Int(report.gpuHoursSwitching))) GPU-hours) · cold loads \(grouped(Int(report.gpuHoursColdLoading))) GPU-hours · worker failures \(grouped(report.workerFailures)) · retries \(grouped(report.retries))"
        )
        if report.fleet == "controller" {
            lines.append(
                "fleet controller: \(grouped(report.workersProvisioned)) workers asked for · \(grouped(report.placementMoves)) placement moves · \(grouped(report.releasedJobs)) jobs released by drains"
            )
        }
        return lines.joined(separator: "\n")
    }

    /// Several policies on the same traffic, side by side: per tier, the share within the promise
    /// and the p95 and max waits as multiples of it.
    public static func compare(_ reports: [SimulationReport]) -> String {
        guard let first = reports.first else { return "" }
        var lines = ["\(first.scenario) · seed \(first.seed) · \(grouped(first.jobs)) jobs · within = dispatched within the promise; p95×, max× = wait / promise"]
        var header = ["tier", "promise"]
        let fleets = Set(reports.map(\.fleet)).count > 1
        for report in reports { header += ["\(report.policy)\(fleets ? " " + report.fleet : "") within", "p95×", "max×"] }
        var rows = [header]
        for (index, tier) in first.tiers.enumerated() {
            var row = [tier.name, duration(tier.maxWaitSeconds)]
            for report in reports {
                let result = report.tiers[index]
                row += [percent(result.attainment), multiple(result.waitMultiple.p95), multiple(result.waitMultiple.max)]
            }
            rows.append(row)
        }
        var utilisation = ["GPU use", ""]
        var used = ["GPU-hours", ""]
        var borrowed = ["borrowed", ""]
        var lent = ["lent", ""]
        var switching = ["switching", ""]
        var idle = ["idle", ""]
        for report in reports {
            utilisation += [percent(report.gpuUtilisation), "", ""]
            used += [grouped(Int(report.gpuHoursAvailable.rounded())), "", ""]
            borrowed += [grouped(Int(report.gpuHoursBorrowed.rounded())), "", ""]
            lent += [grouped(Int(report.gpuHoursLent.rounded())), "", ""]
            switching += [grouped(Int(report.gpuHoursSwitching.rounded())), "", ""]
            idle += [grouped(Int(report.gpuHoursIdle.rounded())), "", ""]
        }
        rows += [utilisation, used, borrowed, lent, switching, idle]
        lines.append(contentsOf: align(rows))
        return lines.joined(separator: "\n")
    }

    private static func align(_ rows: [[String]]) -> [String] {
        let columns = rows.map(\.count).max() ?? 0
        var widths = Array(repeating: 0, count: columns)
        for row in rows {
            for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
        }
        return rows.map { row in
            row.enumerated().map { index, cell in
                index == 0 ? cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[index] - cell.count) + cell
            }.joined(separator: "  ")
        }
    }

    static func format(_ value: Double, _ decimals: Int) -> String {
        String(format: "%.\(decimals)f", value)
    }

    static func percent(_ value: Double) -> String { format(value * 100, 1) + "%" }

    static func multiple(_ value: Double) -> String { value < 10 ? format(value, 2) : format(value, 1) }

    /// 45s, 12.5m, 3.2h.
    static func duration(_ seconds: Double) -> String {
        if seconds < 100 { return format(seconds, 0) + "s" }
        if seconds < 6000 { return format(seconds / 60, 1) + "m" }
        return format(seconds / 3600, 1) + "h"
    }

    static func grouped(_ value: Int) -> String {
        let digits = String(value)
        var result = ""
        for (index, character) in digits.reversed().enumerated() {
            if index > 0, index % 3 == 0 { result.append(",") }
            result.append(character)
        }
        return String(result.reversed())
    }
}
