/// What the controller decided at one tick: each pool's size, and what the shell must do.
public struct FleetDecision: Hashable, Sendable {
    public var pools: [PoolDecision]
    public var actions: [FleetAction]

    public init(pools: [PoolDecision] = [], actions: [FleetAction] = []) {
        self.pools = pools
        self.actions = actions
    }
}

/// One pool's size: what it has, what it should have, and why.
public struct PoolDecision: Hashable, Sendable {
    /// The pool's index in ``FleetState/pools``.
    public var pool: Int
    /// Workers provisioning or active (draining ones no longer count).
    public var actual: Int
    public var desired: Int
    /// For a pool that lends: the workers' worth of capacity lent out once it has its desired
    /// size (`maxWorkers - desired`); 0 otherwise.
    public var lent: Int
    /// Why `desired` is what it is ("api promise at risk in 4 min: +12").
    public var reason: String

    public init(pool: Int, actual: Int, desired: Int, lent: Int = 0, reason: String) {
        self.pool = pool
        self.actual = actual
        self.desired = desired
        self.lent = lent
        self.reason = reason
    }
}

/// One thing for the shell to do, with the reason shown to operators.
public struct FleetAction: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        /// Ask the pool's provider for `workers` more workers.
        case provision(pool: Int, workers: Int)
        /// Take no new work; finish running jobs by `deadline`, then leave.
        case drain(worker: Int, deadline: Double)
        /// The drain's grace is over: the worker's jobs return to the queue with their original
        /// queued time, charged no attempt, and the worker leaves.
        case release(worker: Int)
        /// The worker holds nothing (idle, drained, or still provisioning): it leaves now.
        case retire(worker: Int)
        /// Serve `workload` (an index in ``FleetState/workloads``): load it, then take its jobs.
        case assign(worker: Int, workload: Int)
    }

    public var kind: Kind
    public var reason: String

    public init(_ kind: Kind, reason: String) {
        self.kind = kind
        self.reason = reason
    }
}
