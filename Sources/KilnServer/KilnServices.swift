import Foundation
import KilnAPI
import KilnCore
import KilnObjects
import KilnStore
import Logging

/// What every route and service of the control plane shares.
public struct KilnServices: Sendable {
    public let store: any JobStore
    public let objects: any ObjectStore
    public let dispatcher: Dispatcher
    public let signals: GenerationSignals
    public let clock: any WallClock
    public let configuration: ServerConfiguration
    public let logger: Logger

    public init(
        store: any JobStore, objects: any ObjectStore, dispatcher: Dispatcher, signals: GenerationSignals, clock: any WallClock,
        configuration: ServerConfiguration, logger: Logger
    ) {
        self.store = store
        self.objects = objects
        self.dispatcher = dispatcher
        self.signals = signals
        self.clock = clock
        self.configuration = configuration
        self.logger = logger
    }

    /// The API's view of a generation, with its queue position while queued.
    func render(_ generation: Generation) async -> GenerationObject {
        let queue = await dispatcher.queueInfo(for: generation)
        return GenerationObject(
            id: generation.id, model: generation.model, version: generation.version, alias: generation.alias,
            state: generation.state, tier: generation.tier, input: generation.input,
            progress: ProgressObject(fraction: generation.progress.fraction, stage: generation.progress.stage), queue: queue,
            output: generation.output.mapValues { OutputObject(fileID: $0.fileID, contentType: $0.contentType, size: $0.size) },
            error: generation.error.map { ErrorBody.Detail(code: $0.code, message: $0.message) }, attempts: generation.attempts,
            createdAt: generation.createdAt, startedAt: generation.startedAt, completedAt: generation.completedAt)
    }

    static func render(_ file: FileRecord) -> FileObject {
        FileObject(id: file.id, size: file.size, sha256: file.sha256, contentType: file.contentType, createdAt: file.createdAt)
    }
}
