import Foundation
import KilnCore

/// Wakes the event streams of a generation when its log grows. Streams re-read the store, so a
/// missed signal only delays an event until the stream's next poll.
public actor GenerationSignals {
    private var waiters: [GenerationID: [UUID: CheckedContinuation<Void, Never>]] = [:]
    /// Set when the server shuts down: every wait ends, and new ones return at once.
    public private(set) var isClosing = false

    public init() {}

    /// Ends every wait for good: the server is shutting down, and open event streams must close.
    public func close() {
        isClosing = true
        let all = waiters
        waiters.removeAll()
        for list in all.values { for continuation in list.values { continuation.resume() } }
    }

    public func signal(_ id: GenerationID) {
        guard let list = waiters.removeValue(forKey: id) else { return }
        for continuation in list.values { continuation.resume() }
    }

    /// ``signal(_:)`` of each, in one call.
    public func signal(_ ids: [GenerationID]) {
        for id in ids { signal(id) }
    }

    /// Returns when `id` is signalled or after `seconds`.
    public func wait(_ id: GenerationID, seconds: Double) async {
        guard !isClosing else { return }
        let token = UUID()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            waiters[id, default: [:]][token] = continuation
            Task { [weak self] in
                try? await Task.sleep(for: .seconds(seconds))
                await self?.timeout(id, token)
            }
        }
    }

    private func timeout(_ id: GenerationID, _ token: UUID) {
        guard let continuation = waiters[id]?.removeValue(forKey: token) else { return }
        if waiters[id]?.isEmpty == true { waiters[id] = nil }
        continuation.resume()
    }
}
