import Foundation
import KilnCore
import KilnFleet
import Logging

/// `slurm`: a worker is a Slurm job on a partition of a training cluster (DESIGN §5).
///
/// Each launch is one `sbatch` of a small script that `exec`s `kiln worker` with the pool's
/// cluster, accelerator and GPUs (`--gres=gpu:N`); the job's name is its launch id, so the jobs
/// are found again with `squeue` after a restart of the server. The worker key is read from a file
/// in the shared folder (mode 0600) by the script, never passed on a command line that `ps` or
/// `scontrol show job` would show. Stopping gracefully sends SIGTERM to the running job's batch
/// step, on which `kiln worker` drains; a pending job is cancelled. With a time limit, Slurm itself
/// sends SIGTERM the pool's drain grace before it.
public actor SlurmProvider: CapacityProvider {
    public struct Settings: Sendable {
        /// The `kiln` program as the cluster's nodes see it.
        public var program: String
        /// A folder shared by this server and the nodes: scripts, logs, the key, caches.
        public var folder: URL
        /// This server's URL as the nodes reach it; nil: the one it listens on.
        public var serverURL: String?

        public init(program: String, folder: URL, serverURL: String? = nil) {
            self.program = program
            self.folder = folder
            self.serverURL = serverURL
        }
    }

    /// Job names of Kiln's workers start with this.
    public static let jobPrefix = "kiln-"

    private let settings: Settings
    private let logger: Logger
    private var server: String?
    private var keyFile: URL?
    private let nonce = String(UInt64.random(in: 0..<(1 << 40)), radix: 36)
    private var launched = 0

    public init(settings: Settings, logger: Logger) {
        self.settings = settings
        self.logger = logger
    }

    /// The server's URL and the worker key the jobs use: known once the server runs.
    public func connect(server: String, key: String) throws {
        self.server = settings.serverURL ?? server
        try FileManager.default.createDirectory(at: settings.folder, withIntermediateDirectories: true)
        let file = settings.folder.appending(path: "worker.key")
        FileManager.default.createFile(atPath: file.path, contents: nil, attributes: [.posixPermissions: 0o600])
        try Data(key.utf8).write(to: file)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file.path)
        keyFile = file
    }

    public func provision(_ count: Int, pool: ServerConfiguration.Pool) async throws -> [String] {
        guard let server, let keyFile, let slurm = pool.slurm else { return [] }
        var result: [String] = []
        for _ in 0..<count {
            launched += 1
            let launch = "\(Self.jobPrefix)\(pool.spec.name)-\(launched).\(nonce)"
            let script = settings.folder.appending(path: "\(launch).sh")
            let spec = pool.spec
            let text = """
                #!/bin/sh
                # A Kiln worker of pool \(spec.name), submitted by the server's fleet controller.
                KILN_WORKER_KEY="$(cat \(Self.quoted(keyFile.path)))" KILN_URL=\(Self.quoted(server)) exec \(Self.quoted(settings.program)) worker \\
                  --cluster \(Self.quoted(spec.cluster)) --pool \(Self.quoted(spec.name)) --accelerator \(Self.quoted(spec.accelerator)) \\
                  --gpus \(spec.gpusPerWorker) --cache \(Self.quoted(settings.folder.appending(path: "\(launch)/cache").path)) \\
                  --label \(Self.quoted("\(StaticProvider.launchLabel)=\(launch)"))

                """
            try Data(text.utf8).write(to: script)
            try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: script.path)
            var arguments = [
                "--parsable", "--job-name=\(launch)", "--partition=\(slurm.partition)", "--cpus-per-task=\(slurm.cpusPerTask)",
                "--output=\(settings.folder.appending(path: "\(launch).log").path)", "--chdir=\(settings.folder.path)",
            ]
            if spec.gpusPerWorker > 0 { arguments.append("--gres=gpu:\(spec.gpusPerWorker)") }
            if let minutes = slurm.timeLimitMinutes {
                arguments += ["--time=\(minutes)", "--signal=B:TERM@\(Int(spec.drainGraceSeconds))"]
            }
            let answer = try await Self.run("sbatch", arguments + [script.path])
            let job = answer.split(separator: ";").first.map(String.init)?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            logger.info("slurm worker submitted", metadata: ["launch": "\(launch)", "job": "\(job)"])
            result.append(launch)
        }
        return result
    }

    public func stop(launch: String, graceful: Bool) async {
        do {
            guard let job = try await jobs()[launch] else { return }
            if graceful, job.state == "RUNNING" {
                _ = try await Self.run("scancel", ["--signal=TERM", "--batch", job.id])
            } else {
                _ = try await Self.run("scancel", [job.id])
            }
        } catch {
            logger.error("slurm: could not stop \(launch): \(error)")
        }
    }

    public func running() async -> [String: String]? {
        do {
            var result: [String: String] = [:]
            for launch in try await jobs().keys { result[launch] = Self.pool(of: launch) }
            return result
        } catch {
            // Unknown: a passing error must not make the fleet think its workers are gone.
            logger.error("slurm: squeue failed: \(error)")
            return nil
        }
    }

    /// The workers are jobs of the training cluster: they outlive this server, which finds them
    /// again by name when it comes back.
    public func shutdown(grace: Duration) async {}

    /// Kiln's jobs in the queue (pending, running, completing), by name: their id and state.
    func jobs() async throws -> [String: (id: String, state: String)] {
        let output = try await Self.run("squeue", ["--noheader", "--me", "--format=%j|%i|%T"])
        var result: [String: (id: String, state: String)] = [:]
        for line in output.split(separator: "\n") {
            let fields = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard fields.count == 3, fields[0].hasPrefix(Self.jobPrefix) else { continue }
            result[fields[0]] = (fields[1], fields[2])
        }
        return result
    }

    /// The pool in a launch id `kiln-POOL-N.NONCE`.
    static func pool(of launch: String) -> String {
        let name = launch.dropFirst(jobPrefix.count)
        return String(name[..<(name.lastIndex(of: "-") ?? name.endIndex)])
    }

    static func quoted(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: #"'\''"#) + "'" }

    /// Runs a Slurm command found on `PATH` and returns its standard output.
    /// - Throws: `.unavailable` with its standard error when it fails.
    static func run(_ command: String, _ arguments: [String]) async throws -> String {
        let process = Process()
        process.executableURL = URL(filePath: "/usr/bin/env")
        process.arguments = [command] + arguments
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: error)
            }
        }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard status == 0 else {
            let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw KilnError(.unavailable, "\(command) failed (status \(status)): \(message.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return text
    }
}
