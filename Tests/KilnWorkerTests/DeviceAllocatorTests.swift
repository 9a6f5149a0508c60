import Testing

@testable import KilnWorker

@Suite("Device allocator")
struct DeviceAllocatorTests {
    @Test("replicas get disjoint devices, keep theirs when free, and wait when too few are free")
    func allocation() async {
        let devices = DeviceAllocator(count: 4)
        let first = await devices.acquire(2)
        let second = await devices.acquire(2)
        #expect(Set(first).isDisjoint(with: second))
        #expect(Set(first + second) == [0, 1, 2, 3])

        // A replica that needs two must wait for a release.
        let waiting = Task { await devices.acquire(2, prefer: second) }
        try? await Task.sleep(for: .milliseconds(50))
        await devices.release(second)
        #expect(await waiting.value == second)

        // Nothing needed, nothing held.
        #expect(await devices.acquire(0).isEmpty)
        await devices.release(first)
        // Preferred devices are honoured when free, the lowest free ones otherwise.
        #expect(await devices.acquire(1, prefer: [first[1]]) == [first[1]])
        #expect(await devices.acquire(1, prefer: second) == [first[0]])
    }

    @Test("a worker without GPUs never waits for one")
    func noGPUs() async {
        let devices = DeviceAllocator(count: 0)
        await devices.waitForAnyFree()
        #expect(await devices.acquire(0).isEmpty)
        #expect(devices.total == 0)
    }
}
