/// What happens to a job whose attempt ended without success (DESIGN §8), shared by the store and
/// the simulator so that both apply the same lease rules.
public enum RetryRule {
    /// Whether the job goes back to the queue (keeping its `queuedAt`) rather than failing: the
    /// failure was retryable (an expired lease always is) and attempts remain.
    public static func requeues(attempts: Int, maxAttempts: Int, retryable: Bool) -> Bool {
        retryable && attempts < maxAttempts
    }
}
