import Foundation
import KilnCore
import KilnModels
import Logging

/// One model-runtime process: `python3 -m kiln_runtime` for one version, spoken to in JSON lines
/// (DESIGN §7): ``RuntimeCommand``s in, ``RuntimeEvent``s out. Its stdout carries only protocol
/// events; the model's prints go to its stderr, which the worker passes through to its own.
///
/// Model code is fenced off from the worker: the runtime gets a scrubbed environment (see
/// ``environment(from:passing:)``: never the worker's key or any `KILN_` variable), runs as
/// ``RuntimeUser`` when one is set, and leads a process group that ``kill()`` ends whole.
public final class RuntimeProcess: @unchecked Sendable {
    /// The unprivileged account a runtime runs as, and the folder it may write (its `HOME` and
    /// `TMPDIR`).
    public struct RuntimeUser: Sendable, Hashable {
        public var name: String
        public var uid: UInt32
        public var gid: UInt32

        /// Looks `name` up in the system's accounts. - Throws: `.invalidInput` when there is none.
        public init(named name: String) throws {
            guard let entry = getpwnam(name) else { throw KilnError(.invalidInput, "--runtime-user: no user named '\(name)' on this machine") }
            self.name = name
            self.uid = entry.pointee.pw_uid
            self.gid = entry.pointee.pw_gid
        }

        /// Makes `url` (and, with `recursive`, what is in it) this user's.
        public func own(_ url: URL, recursive: Bool = false) throws {
            guard chown(url.path, uid, gid) == 0 else {
                throw KilnError(.unavailable, "cannot give \(url.path) to \(name): \(String(cString: strerror(errno)))")
            }
            guard recursive, let items = FileManager.default.enumerator(atPath: url.path) else { return }
            for case let item as String in items { try own(url.appending(path: item)) }
        }
    }

    /// Variables the runtime keeps from the worker's environment: the system's basics and those
    /// accelerators and numeric libraries read. Anything else (keys, tokens, cloud credentials) it
    /// does not see unless passed by name.
    static let keptNames: Set<String> = ["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH", "OMP_NUM_THREADS"]
    static let keptPrefixes = ["NVIDIA_", "CUDA_", "NCCL_", "HIP_", "ROCR_", "HSA_", "ROCM_", "MKL_", "OPENBLAS_", "PYTORCH_", "TORCH_"]

    /// The runtime's environment: the kept variables of `worker`, and those named in `passing`;
    /// never a `KILN_` variable.
    public static func environment(from worker: [String: String], passing: Set<String> = []) -> [String: String] {
        worker.filter { name, _ in
            !name.hasPrefix("KILN_")
                && (keptNames.contains(name) || passing.contains(name) || keptPrefixes.contains { name.hasPrefix($0) })
        }
    }

    public let version: KilnCore.Digest
    let process = Process()
    let input = Pipe()
    let output = Pipe()
    public let events: AsyncStream<RuntimeEvent>
    /// The runtime user's scratch folder, removed when the runtime stops.
    private let scratch: URL?
    private let continuation: AsyncStream<RuntimeEvent>.Continuation
    private let lock = NSLock()
    private var buffer = Data()

    /// Starts the process (it waits for `setup`).
    ///
    /// - Parameters:
    ///   - python: the interpreter.
    ///   - runtimePath: the folder holding the `kiln_runtime` package.
    ///   - devices: GPUs given to this replica (`CUDA_VISIBLE_DEVICES`); empty for none.
    ///   - user: the account it runs as, with the folder made its `HOME` and `TMPDIR`; nil: the
    ///     worker's own.
    ///   - passing: more variables of the worker's environment it sees, by name.
    public init(
        version: PreparedVersion, python: String, runtimePath: URL, devices: [Int], user: (RuntimeUser, home: URL)? = nil,
        passing: Set<String> = [], logger: Logger
    ) throws {
        self.version = version.id
        self.scratch = user?.home
        (events, continuation) = AsyncStream.makeStream(of: RuntimeEvent.self)
        let worker = ProcessInfo.processInfo.environment
        var environment = Self.environment(from: worker, passing: passing)
        let paths = [version.environment?.path, runtimePath.path, worker["PYTHONPATH"]].compactMap { $0 }.filter { !$0.isEmpty }
        environment["PYTHONPATH"] = paths.joined(separator: ":")
        environment["PYTHONUNBUFFERED"] = "1"
        // Nothing is written beside the cached (read-only, sealed) code.
        environment["PYTHONDONTWRITEBYTECODE"] = "1"
        environment["CUDA_VISIBLE_DEVICES"] = devices.map(String.init).joined(separator: ",")
        process.executableURL = URL(filePath: "/usr/bin/env")
        process.arguments = [
            python, "-m", "kiln_runtime", "--code", version.code.path, "--entrypoint", version.manifest.entrypoint,
            "--weights", version.weights.path,
        ]
        if let (user, home) = user {
            process.arguments? += ["--user", user.name]
            environment["HOME"] = home.path
            environment["TMPDIR"] = home.path
            environment["USER"] = user.name
        }
        process.environment = environment
        process.standardInput = input
        process.standardOutput = output
        process.standardError = FileHandle.standardError
        let continuation = self.continuation
        output.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self else { return }
            if data.isEmpty {
                handle.readabilityHandler = nil
                return
            }
            for line in self.lines(appending: data) {
                if let event = RuntimeEvent(line: line) { continuation.yield(event) }
            }
        }
        process.terminationHandler = { process in
            continuation.yield(.exited(process.terminationStatus))
            continuation.finish()
        }
        try process.run()
        logger.info("runtime started", metadata: ["version": "\(version.id.short)", "pid": "\(process.processIdentifier)"])
    }

    public var isRunning: Bool { process.isRunning }
    public var pid: Int32 { process.processIdentifier }

    public func send(_ command: RuntimeCommand) {
        guard process.isRunning else { return }
        try? input.fileHandleForWriting.write(contentsOf: Data((command.line + "\n").utf8))
    }

    /// Ends the process: asks first, kills after `grace` seconds.
    public func stop(grace: Double = 5) async {
        send(.shutdown)
        let deadline = ContinuousClock.now + .milliseconds(Int(grace * 1000))
        while process.isRunning, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        kill()
        // Whatever the model left of its group once the runtime has exited (a pid still used as a
        // group id is not given to another process).
        let pid = process.processIdentifier
        if pid > 0 { Foundation.kill(-pid, SIGKILL) }
        if let scratch { try? FileManager.default.removeItem(at: scratch) }
    }

    /// Kills the runtime and its process group: every process the model started with it.
    public func kill() {
        let pid = process.processIdentifier
        guard pid > 0 else { return }
        // The group is the runtime's own once it has called setsid; until then, only the process.
        if getpgid(pid) == pid { Foundation.kill(-pid, SIGKILL) }
        if process.isRunning { Foundation.kill(pid, SIGKILL) }
    }

    private func lines(appending data: Data) -> [Data] {
        lock.withLock {
            buffer.append(data)
            var lines: [Data] = []
            while let newline = buffer.firstIndex(of: 0x0A) {
                lines.append(buffer[buffer.startIndex..<newline])
                buffer = Data(buffer[buffer.index(after: newline)...])
            }
            return lines
        }
    }
}
