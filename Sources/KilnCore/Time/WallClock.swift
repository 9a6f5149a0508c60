import Foundation

/// The source of "now" for everything that decides by time.
///
/// The scheduler, the lease rules and the simulator never read the system clock themselves: the
/// server injects ``SystemWallClock``, tests and the simulator a ``ManualWallClock``.
public protocol WallClock: Sendable {
    func now() -> Date
}

public struct SystemWallClock: WallClock {
    public init() {}
    public func now() -> Date { Date() }
}

/// A clock that moves only when told to.
public final class ManualWallClock: WallClock, @unchecked Sendable {
    private let lock = NSLock()
    private var current: Date

    public init(_ start: Date = Date(timeIntervalSince1970: 1_800_000_000)) {
        self.current = start
    }

    public func now() -> Date {
        lock.withLock { current }
    }

    public func advance(by seconds: TimeInterval) {
        lock.withLock { current += seconds }
    }

    public func set(_ date: Date) {
        lock.withLock { current = date }
    }
}
