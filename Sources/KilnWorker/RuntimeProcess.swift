import Foundation
import KilnCore
import KilnModels
import Logging

/// One model-runtime process: `python3 -m kiln_runtime` for one version, spoken to in JSON lines
/// (DESIGN §7): ``RuntimeCommand``s in, ``RuntimeEvent``s out. Its stdout carries only protocol events; the model's prints go to its stderr, which
/// the worker passes through to its own.
public final class RuntimeProcess: @unchecked Sendable {
    public let version: KilnCore.Digest
    let process = Process()
    let input = Pipe()
    let output = Pipe()
    public let events: AsyncStream<RuntimeEvent>
    private let continuation: AsyncStream<RuntimeEvent>.Continuation
    private let lock = NSLock()
    private var buffer = Data()

    /// Starts the process (it waits for `setup`).
    ///
    /// - Parameters:
    ///   - python: the interpreter.
    ///   - runtimePath: the folder holding the `kiln_runtime` package.
    ///   - devices: GPUs given to this replica (`CUDA_VISIBLE_DEVICES`); empty for none.
    public init(version: PreparedVersion, python: String, runtimePath: URL, devices: [Int], logger: Logger) throws {
        self.version = version.id
        (events, continuation) = AsyncStream.makeStream(of: RuntimeEvent.self)
        var environment = ProcessInfo.processInfo.environment
        let paths = [version.environment?.path, runtimePath.path, environment["PYTHONPATH"]].compactMap { $0 }.filter { !$0.isEmpty }
        environment["PYTHONPATH"] = paths.joined(separator: ":")
        environment["PYTHONUNBUFFERED"] = "1"
        environment["CUDA_VISIBLE_DEVICES"] = devices.map(String.init).joined(separator: ",")
        process.executableURL = URL(filePath: "/usr/bin/env")
        process.arguments = [
            python, "-m", "kiln_runtime", "--code", version.code.path, "--entrypoint", version.manifest.entrypoint,
            "--weights", version.weights.path,
        ]
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
    }

    public func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
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
