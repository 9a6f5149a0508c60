/// The GPUs of a worker, handed to replicas: a version that needs N GPUs runs on N devices of its
/// own, so a worker with G GPUs runs G/N replicas of it at once.
actor DeviceAllocator {
    nonisolated let total: Int
    private var free: Set<Int>
    private var waiters: [(count: Int, prefer: [Int], continuation: CheckedContinuation<[Int], Never>)] = []
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []

    /// Devices held by replicas now.
    var busy: Int { total - free.count }

    init(count: Int) {
        total = max(count, 0)
        free = Set(0..<max(count, 0))
    }

    /// `count` devices, the ones in `prefer` first (a replica keeps its devices when it can, so its
    /// runtime stays warm); waits until that many are free.
    /// - Precondition: `count <= total`.
    func acquire(_ count: Int, prefer: [Int] = []) async -> [Int] {
        guard count > 0 else { return [] }
        if free.count >= count { return take(count, prefer: prefer) }
        return await withCheckedContinuation { continuation in
            waiters.append((count, prefer, continuation))
        }
    }

    func release(_ devices: [Int]) {
        free.formUnion(devices)
        while let first = waiters.first, free.count >= first.count {
            waiters.removeFirst()
            first.continuation.resume(returning: take(first.count, prefer: first.prefer))
        }
        if !free.isEmpty {
            let idle = idleWaiters
            idleWaiters.removeAll()
            for continuation in idle { continuation.resume() }
        }
    }

    /// Returns once some device is free (at once on a worker without GPUs): a replica asks for
    /// work only when it could run some.
    func waitForAnyFree() async {
        guard total > 0, free.isEmpty else { return }
        await withCheckedContinuation { idleWaiters.append($0) }
    }

    private func take(_ count: Int, prefer: [Int]) -> [Int] {
        var chosen = prefer.filter { free.contains($0) }.prefix(count).map { $0 }
        for device in free.sorted() where chosen.count < count && !chosen.contains(device) { chosen.append(device) }
        free.subtract(chosen)
        return chosen.sorted()
    }
}
