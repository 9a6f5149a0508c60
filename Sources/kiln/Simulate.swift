import ArgumentParser
import Foundation
import KilnCore
import KilnScheduling
import KilnSimulation
import Yams

struct Simulate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay a day of traffic on the real scheduling code and report each tier's waits.",
        discussion: "SCENARIO is a built-in scenario (\(BuiltInScenarios.all.keys.sorted().joined(separator: ", "))) or a YAML file.")

    @Argument(help: "A built-in scenario name or a YAML scenario file.")
    var scenario: String

    @Option(help: "Scheduling policy: slo, fifo, strict, edf or protected.")
    var policy: String = "slo"

    @Option(help: "Under the protected policy, the most of the dispatches its tiers may take while others wait (0 to below 1).")
    var protectedShare: Double?

    @Flag(help: "Run every policy on the same traffic and print them side by side.")
    var compare = false

    @Option(
        help: ArgumentHelp(
            "Who sizes the pools and places models: manual (the scenario's capacity script), controller (the fleet controller within each pool's autoscale bounds), or compare (both, side by side).",
            valueName: "manual|controller|compare"))
    var fleet: String?

    @Option(help: "Write the full report (every policy with --compare) as JSON to this file.")
    var json: String?

    @Option(help: "Write an SVG chart of queue depth and waits over the day to this file.")
    var chart: String?

    @Option(help: "Override the scenario's seed.")
    var seed: UInt64?

    func run() async throws {
        var loaded = try ScenarioFile.load(scenario)
        if let seed { loaded.seed = seed }
        if let protectedShare {
            loaded.protection = .init(tiers: loaded.protection?.tiers ?? ["enterprise", "api"], share: protectedShare)
        }
        let policies = compare ? SchedulingPolicies.all : [try policyNamed(policy)]
        let fleets: [Scenario.FleetSpec.Mode]
        switch fleet {
        case nil: fleets = [loaded.fleet.mode]
        case "compare": fleets = Scenario.FleetSpec.Mode.allCases
        case let name?:
            guard let mode = Scenario.FleetSpec.Mode(rawValue: name) else {
                throw ValidationError("--fleet must be manual, controller or compare, not '\(name)'")
            }
            fleets = [mode]
        }
        let variants = policies.flatMap { policy in fleets.map { (policy, $0) } }
        // The day's jobs are drawn once and replayed by every run. The runs of --compare go at once,
        // one task each: every run is independent and deterministic, so the reports are the same as
        // one after another.
        var drawn: Traffic?
        let drawing: Duration
        do {
            // Checked as the first run's scenario (the fleet a file names may not be the one asked for).
            var first = loaded
            first.fleet.mode = fleets[0]
            drawing = try ContinuousClock().measure { drawn = try Traffic(scenario: first) }
        } catch let error as KilnError {
            throw ValidationError(error.message)
        }
        let traffic = drawn!
        let runs = try await withThrowingTaskGroup(of: (Int, SimulationReport, Duration).self) { group in
            for (index, (policy, mode)) in variants.enumerated() {
                var scenario = loaded
                scenario.fleet.mode = mode
                let simulator: Simulator
                do {
                    simulator = try Simulator(scenario: scenario, policy: try scenario.configured(policy), traffic: traffic)
                } catch let error as KilnError {
                    throw ValidationError(error.message)
                }
                group.addTask {
                    var report: SimulationReport?
                    let elapsed = try ContinuousClock().measure { report = try simulator.run() }
                    return (index, report!, elapsed)
                }
            }
            var runs: [(Int, SimulationReport, Duration)] = []
            for try await run in group { runs.append(run) }
            return runs.sorted { $0.0 < $1.0 }
        }
        let reports = runs.map(\.1)
        let sideBySide = runs.count > 1
        print(String(format: "traffic: %d jobs drawn in %.2f s, replayed by every run", traffic.count, drawing.seconds))
        for (_, report, elapsed) in runs {
            if !sideBySide { print(ReportTable.render(report)) }
            let seconds = elapsed.seconds
            print(
                String(
                    format: "%@ (%@ fleet): simulated %.1f hours in %.2f s (%d events, %.0f events/s)", report.policy, report.fleet,
                    report.durationHours, seconds, report.events, Double(report.events) / max(seconds, 1e-9)))
        }
        if sideBySide {
            print("")
            print(ReportTable.compare(reports))
        }
        if let json {
            let data: Data
            if reports.count == 1 {
                data = try reports[0].json()
            } else {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
                data = try encoder.encode(reports)
            }
            try data.write(to: URL(filePath: json))
            print("report written to \(json)")
        }
        if let chart {
            try SimulationChart.svg(reports).write(toFile: chart, atomically: true, encoding: .utf8)
            print("chart written to \(chart)")
        }
    }

    private func policyNamed(_ name: String) throws -> any SchedulingPolicy {
        do {
            return try SchedulingPolicies.named(name)
        } catch let error as KilnError {
            throw ValidationError(error.message)
        }
    }
}

/// Reads a scenario: a built-in name, or a YAML file whose every key is checked against the format.
enum ScenarioFile {
    static func load(_ nameOrPath: String) throws -> Scenario {
        if let builtIn = BuiltInScenarios.all[nameOrPath] { return builtIn }
        let text: String
        do {
            text = try String(contentsOfFile: nameOrPath, encoding: .utf8)
        } catch {
            throw ValidationError(
                "'\(nameOrPath)' is neither a built-in scenario (\(BuiltInScenarios.all.keys.sorted().joined(separator: ", "))) nor a readable file")
        }
        let tree = try Yams.load(yaml: text)
        try checkKeys(tree, schema: .scenario, path: "")
        do {
            return try YAMLDecoder().decode(Scenario.self, from: text)
        } catch let error as DecodingError {
            throw ValidationError("\(nameOrPath): \(error.message(noun: "key"))")
        }
    }

    /// The keys each part of a YAML format allows, so a misspelt key is named rather than ignored.
    indirect enum Schema: Sendable {
        case object([String: Schema])
        case list(Schema)
        case map(Schema)
        case value

        static let runtime = Schema.object(["distribution": .value, "mean_seconds": .value, "stddev_seconds": .value])
        static let scenario = Schema.object([
            "name": .value, "seed": .value, "duration_hours": .value, "start_clock": .value, "sample_every_seconds": .value,
            "protection": .object(["tiers": .list(.value), "share": .value]),
            "tiers": .list(.object(["name": .value, "max_wait_seconds": .value, "share": .value, "accounts": .value, "max_running_per_account": .value])),
            "arrivals": .list(.object(["from_hours": .value, "to_hours": .value, "per_hour": .value])),
            "bursts": .list(.object(["at_hours": .value, "jobs": .value, "over_seconds": .value])),
            "trace": .list(.object(["at_seconds": .value, "tier": .value, "model": .value, "gpu_seconds": .value, "account": .value])),
            "models": .list(
                .object([
                    "name": .value, "share": .value, "gpus": .value, "runtime": runtime, "accelerator_speed": .map(.value),
                    "switch_seconds": .value,
                ])),
            "clusters": .list(
                .object([
                    "name": .value, "dispatch_limit": .value, "start_delay_seconds": .value,
                    "pools": .list(
                        .object([
                            "name": .value, "kind": .value, "accelerator": .value, "gpus_per_worker": .value,
                            "capacity": .list(.object(["at_hours": .value, "workers": .value, "over_hours": .value])),
                            "autoscale": .object([
                                "min_workers": .value, "max_workers": .value, "cooldown_seconds": .value, "provision_seconds": .value,
                                "drain_grace_seconds": .value,
                            ]),
                        ])),
                ])),
            "fleet": .object([
                "mode": .value, "tick_seconds": .value, "headroom": .value, "dwell_seconds": .value, "minimum_horizon_seconds": .value,
            ]),
            "failures": .object(["mean_hours_between_failures": .value, "recovery_seconds": .value]),
            "leases": .object(["ttl_seconds": .value, "max_attempts": .value]),
        ])
    }

    static func checkKeys(_ value: Any?, schema: Schema, path: String) throws {
        switch schema {
        case .value:
            return
        case .object(let fields):
            guard let dictionary = value as? [String: Any] else {
                if value == nil { return }
                throw ValidationError("\(path.isEmpty ? "the scenario" : path) must be a mapping")
            }
            for (key, child) in dictionary {
                guard let childSchema = fields[key] else {
                    throw ValidationError(
                        "\(path.isEmpty ? "the scenario" : path): unknown key '\(key)'; expected one of \(fields.keys.sorted().joined(separator: ", "))")
                }
                try checkKeys(child, schema: childSchema, path: path.isEmpty ? key : "\(path).\(key)")
            }
        case .list(let element):
            guard let array = value as? [Any] else { throw ValidationError("\(path) must be a list") }
            for (index, item) in array.enumerated() { try checkKeys(item, schema: element, path: "\(path)[\(index)]") }
        case .map(let element):
            guard let dictionary = value as? [String: Any] else { throw ValidationError("\(path) must be a mapping") }
            for (key, item) in dictionary { try checkKeys(item, schema: element, path: "\(path).\(key)") }
        }
    }
}
