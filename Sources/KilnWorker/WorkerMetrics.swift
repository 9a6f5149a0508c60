import Foundation
import Prometheus

/// A worker's Prometheus metrics (`kiln worker --metrics-port`): what ran on it, by model and
/// version, and what its version switches cost. Labels are models, versions (short ids) and
/// outcomes, never job ids.
public final class WorkerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()

    static let runBuckets: [Double] = [0.1, 1, 5, 15, 30, 60, 120, 300, 600, 1_800, 3_600]
    static let prepareBuckets: [Double] = [0.01, 0.1, 1, 5, 15, 60, 300, 900, 1_800]

    static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "kiln_worker", metricName: metric, unitName: unit, helpText: help)
    }

    static var runs: MetricNameDescriptor { name("runs", "total", "Jobs this worker ran, by model, version and outcome (succeeded, failed, crashed, canceled).") }
    static var run: MetricNameDescriptor { name("run", "seconds", "The model's own time per job, from predict to its answer.") }
    static var switches: MetricNameDescriptor { name("version_switches", "total", "Times a replica's runtime changed to another version.") }
    static var setup: MetricNameDescriptor { name("setup", "seconds", "A runtime's start and setup: the model loading its weights.") }
    static var prepare: MetricNameDescriptor { name("prepare", "seconds", "Getting a version ready on disk: a pull and unpack, or a check of the cached copy.") }
    static var gpus: MetricNameDescriptor { name("gpus", "", "This worker's GPUs, busy or idle.") }

    /// Every metric family a worker exposes.
    public static var families: [MetricNameDescriptor] { [runs, run, switches, setup, prepare, gpus] }

    public init() {}

    func ran(model: String, version: String, outcome: String, seconds: Double) {
        registry.makeCounter(descriptor: Self.runs, labels: [("model", model), ("version", version), ("outcome", outcome)]).increment()
        registry.makeValueHistogram(descriptor: Self.run, labels: [("model", model)], buckets: Self.runBuckets).record(seconds)
    }

    func switched(model: String) {
        registry.makeCounter(descriptor: Self.switches, labels: [("model", model)]).increment()
    }

    func setUp(model: String, seconds: Double) {
        registry.makeValueHistogram(descriptor: Self.setup, labels: [("model", model)], buckets: Self.runBuckets).record(seconds)
    }

    func prepared(model: String, seconds: Double) {
        registry.makeValueHistogram(descriptor: Self.prepare, labels: [("model", model)], buckets: Self.prepareBuckets).record(seconds)
    }

    /// Every metric in the Prometheus text format, the GPU gauges set from `busy` of `total` first.
    public func exposition(busyGPUs busy: Int, totalGPUs total: Int) -> [UInt8] {
        registry.makeGauge(descriptor: Self.gpus, labels: [("state", "busy")]).set(Double(busy))
        registry.makeGauge(descriptor: Self.gpus, labels: [("state", "idle")]).set(Double(total - busy))
        var bytes: [UInt8] = []
        registry.emit(into: &bytes)
        return bytes
    }
}
