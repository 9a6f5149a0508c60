import Foundation
import KilnCore
import KilnFleet
import Logging

/// `local`: `kiln worker` processes on this machine, the default under `kiln up`.
///
/// Each worker gets a slot of its pool (`POOL-N`, the smallest free), whose folder keeps its
/// version cache and its log across restarts. Its launch id adds this server run's nonce, so that
/// a worker of an earlier run registered with the same slot is never taken for it. Its key reaches it through the environment, never its
/// command line; it inherits no admin key. Stopping it gracefully is SIGTERM, on which `kiln worker`
/// drains.
public actor LocalProvider: CapacityProvider {
    public struct Settings: Sendable {
        /// The `kiln` program.
        public var executable: URL
        /// Where each slot's folder goes.
        public var folder: URL
        public init(executable: URL, folder: URL) {
            self.executable = executable
            self.folder = folder
        }
    }

    private let settings: Settings
    private let logger: Logger
    private var server: String?
    private var key: String?
    private var processes: [String: Process] = [:]
    /// By launch: its slot, and its pool.
    private var slots: [String: String] = [:]
    private var pools: [String: String] = [:]
    private let nonce = String(UInt64.random(in: 0..<(1 << 40)), radix: 36)

    public init(settings: Settings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    /// Where the workers find the server, and the worker key they use: known once the server runs.
    public func connect(server: String, key: String) {
        self.server = server
        self.key = key
    }

    public func provision(_ count: Int, pool: ServerConfiguration.Pool) async throws -> [String] {
        // Until the server listens there is nowhere to send workers: the next tick asks again.
        guard let server, let key else { return [] }
        var launched: [String] = []
        for _ in 0..<count {
            let taken = Set(slots.values)
            var index = 0
            while taken.contains("\(pool.spec.name)-\(index)") { index += 1 }
            let slot = "\(pool.spec.name)-\(index)"
            let launch = "\(slot).\(nonce)"
            let folder = settings.folder.appending(path: slot)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            let log = folder.appending(path: "worker.log")
            if !FileManager.default.fileExists(atPath: log.path) { FileManager.default.createFile(atPath: log.path, contents: nil) }
            let output = try FileHandle(forWritingTo: log)
            output.seekToEndOfFile()
            let process = Process()
            process.executableURL = settings.executable
            process.arguments = [
                "worker", "--cluster", pool.spec.cluster, "--pool", pool.spec.name, "--accelerator", pool.spec.accelerator,
                "--gpus", "\(pool.spec.gpusPerWorker)", "--cache", folder.appending(path: "cache").path,
                "--label", "\(Self.launchLabel)=\(launch)",
            ]
            var environment = ProcessInfo.processInfo.environment
            environment["KILN_ADMIN_KEY"] = nil
            environment["KILN_URL"] = server
            environment["KILN_WORKER_KEY"] = key
            process.environment = environment
            process.standardOutput = output
            process.standardError = output
            process.standardInput = FileHandle.nullDevice
            process.terminationHandler = { [weak self] finished in
                try? output.close()
                Task { await self?.exited(launch, status: finished.terminationStatus) }
            }
            try process.run()
            processes[launch] = process
            slots[launch] = slot
            pools[launch] = pool.spec.name
            launched.append(launch)
            logger.info("local worker started", metadata: ["launch": "\(launch)", "pid": "\(process.processIdentifier)"])
        }
        return launched
    }

    public func stop(launch: String, graceful: Bool) async {
        guard let process = processes[launch], process.isRunning else { return }
        if graceful {
            process.terminate()
        } else {
            kill(process.processIdentifier, SIGKILL)
        }
    }

    public func running() async -> [String: String]? {
        var result: [String: String] = [:]
        for (launch, process) in processes where process.isRunning { result[launch] = pools[launch] }
        return result
    }

    public func shutdown(grace: Duration) async {
        let all = Array(processes.values)
        for process in all where process.isRunning { process.terminate() }
        // Waited for outside any cancellation: a server being cancelled still lets its workers drain.
        await Task.detached {
            let deadline = ContinuousClock.now + grace
            while all.contains(where: \.isRunning), ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(100))
            }
            for process in all where process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }.value
    }

    private func exited(_ launch: String, status: Int32) {
        guard let process = processes[launch], !process.isRunning else { return }
        processes[launch] = nil
        slots[launch] = nil
        pools[launch] = nil
        logger.info("local worker exited", metadata: ["launch": "\(launch)", "status": "\(status)"])
    }
}
