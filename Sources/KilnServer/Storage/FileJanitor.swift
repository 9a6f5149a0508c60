import Foundation
import KilnCore
import KilnObjects
import KilnStore
import Logging
import ServiceLifecycle

/// Deletes what no one needs any more: files past the retention (`limits.file_retention_hours`),
/// then the objects of every deleted file record (a user's delete, the retention, outputs of
/// attempts that did not count). The records go first, in the store's transactions; the objects
/// after, so a crash between the two only deletes an object again.
public struct FileJanitor: Service {
    let store: any JobStore
    let objects: any ObjectStore
    let clock: any WallClock
    /// Seconds a file is kept; nil keeps files until deleted.
    let retention: Double?
    let interval: Duration
    let logger: Logger
    /// Files and objects handled per store call.
    static let batch = 500

    public init(
        store: any JobStore, objects: any ObjectStore, clock: any WallClock, retention: Double?, interval: Duration = .seconds(60),
        logger: Logger
    ) {
        self.store = store
        self.objects = objects
        self.clock = clock
        self.retention = retention
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                let (expired, deleted) = try await sweep()
                if expired + deleted > 0 {
                    logger.info("files swept", metadata: ["expired": "\(expired)", "objects_deleted": "\(deleted)"])
                }
            } catch {
                logger.error("file janitor: \(error)")
            }
            // A minute's wait must not hold up a shutdown.
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }

    /// One pass. - Returns: the files it expired and the objects it deleted.
    @discardableResult
    public func sweep() async throws -> (expired: Int, objectsDeleted: Int) {
        var expired = 0
        if let retention {
            let cutoff = clock.now() - retention
            while true {
                let count = try await store.expireFiles(createdBefore: cutoff, limit: Self.batch)
                expired += count
                guard count == Self.batch else { break }
            }
        }
        var deleted = 0
        while true {
            let keys = try await store.doomedObjects(limit: Self.batch)
            guard !keys.isEmpty else { break }
            for key in keys { try await objects.delete(key) }
            try await store.forgetDoomedObjects(keys)
            deleted += keys.count
            guard keys.count == Self.batch else { break }
        }
        return (expired, deleted)
    }
}
