import Foundation
import KilnCore
import KilnFleet
import Logging

/// Carries out the fleet controller's decisions for a kind of capacity (DESIGN §5): starts workers
/// and stops them. A started worker is a *launch* until it registers; it registers with its
/// launch id as the label ``CapacityProvider/launchLabel``, which is how the fleet service tells
/// which registered worker a launch became.
public protocol CapacityProvider: Sendable {
    /// Starts `count` workers of `pool`.
    /// - Returns: a launch id for each worker started.
    func provision(_ count: Int, pool: ServerConfiguration.Pool) async throws -> [String]
    /// Stops a launch: at once when it holds nothing (or has not registered yet); with `graceful`,
    /// by asking it to drain (finish its jobs, take no new one, then exit).
    func stop(launch: String, graceful: Bool) async
    /// The launches whose workers are still running (or queued to run), each with its pool's name;
    /// nil when the provider cannot tell now. A launch the fleet service did not start (one from
    /// before a restart, a pod its Deployment replaced) and that has not registered yet counts as
    /// provisioning in its pool.
    func running() async -> [String: String]?
    /// Stops every launch, waiting up to `grace` for them to drain.
    func shutdown(grace: Duration) async
}

extension CapacityProvider {
    /// The registration label that names a worker's launch.
    public static var launchLabel: String { "kiln.launch" }
}

/// `static`: workers someone started by hand. The controller places models on them but asks this
/// provider for nothing it can do: their number is whatever registers.
public struct StaticProvider: CapacityProvider {
    public init() {}
    public func provision(_ count: Int, pool: ServerConfiguration.Pool) async throws -> [String] { [] }
    public func stop(launch: String, graceful: Bool) async {}
    public func running() async -> [String: String]? { [:] }
    public func shutdown(grace: Duration) async {}
}
