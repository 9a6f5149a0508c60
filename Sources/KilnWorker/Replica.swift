import Foundation

/// One replica of a worker: its model-runtime process, that process's events, and the devices the
/// runtime was started on. A worker with G GPUs runs up to G replicas, one without GPUs runs one.
final class Replica: @unchecked Sendable {
    let index: Int
    var runtime: RuntimeProcess?
    var runtimeEvents: AsyncStream<RuntimeEvent>.Iterator?
    var devices: [Int] = []

    init(index: Int) { self.index = index }
}
