import Foundation

/// What `kiln worker` is told.
public struct WorkerOptions: Sendable {
    public var server: String
    public var key: String
    public var cluster: String = "default"
    public var accelerator: String = "cpu"
    public var gpus: Int = 0
    public var labels: [String: String] = [:]
    /// The server's capacity pool this worker belongs to; nil joins none.
    public var pool: String?
    /// The environment layer this worker uses (`cpu`, `cuda12-x86_64`, …).
    public var platform: String = "cpu"
    public var cache: URL
    public var cacheBudgetBytes: Int64 = 50 << 30
    public var python: String = "python3"
    /// The folder holding the `kiln_runtime` package.
    public var runtimePath: URL
    public var leaseWaitSeconds: Double = 20
    /// A job running longer than this, counted from its start, is stopped and failed (retryable).
    public var jobTimeoutSeconds: Double = 3600
    /// The account model runtimes run as (they can then write nothing of the worker's but their
    /// job's outputs and a scratch folder); nil: the worker's own.
    public var runtimeUser: RuntimeProcess.RuntimeUser?
    /// Variables of the worker's environment that runtimes see besides the kept ones.
    public var runtimeEnvironment: Set<String> = []

    public init(server: String, key: String, cache: URL, runtimePath: URL) {
        self.server = server
        self.key = key
        self.cache = cache
        self.runtimePath = runtimePath
    }
}
