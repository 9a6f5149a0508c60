import Foundation
import KilnCore

/// What the worker tells a model runtime, one JSON line each (DESIGN §7). The Python side reads
/// them in `kiln_runtime/protocol.py`.
public enum RuntimeCommand: Sendable, Equatable {
    /// Load the model (`Predictor.setup`); answered by ``RuntimeEvent/ready`` or
    /// ``RuntimeEvent/setupFailed(_:)``.
    case setup
    /// Run one job: its input, the paths of its input files, the folder for its outputs.
    case predict(id: String, inputs: [String: JSONValue], files: [String: String], outputDirectory: String)
    /// Stop the job `id`: its `progress` call raises, and it ends as ``RuntimeEvent/canceled(id:)``.
    case cancel(id: String)
    /// Exit once the current job, if any, is over.
    case shutdown

    /// The command as its JSON line (without the newline).
    public var line: String {
        let object: [String: JSONValue]
        switch self {
        case .setup: object = ["op": .string("setup")]
        case .predict(let id, let inputs, let files, let outputDirectory):
            object = [
                "op": .string("predict"), "id": .string(id), "inputs": .object(inputs), "files": .object(files.mapValues(JSONValue.string)),
                "output_dir": .string(outputDirectory),
            ]
        case .cancel(let id): object = ["op": .string("cancel"), "id": .string(id)]
        case .shutdown: object = ["op": .string("shutdown")]
        }
        return JSONValue.object(object).canonicalJSON()
    }
}

/// What a model runtime tells the worker, one JSON line each; anything else on its stdout is
/// ignored.
public enum RuntimeEvent: Sendable, Equatable {
    case ready
    case setupFailed(String)
    case progress(id: String, fraction: Double, stage: String)
    case done(id: String, outputs: [String: String])
    case canceled(id: String)
    case error(id: String, code: String, message: String)
    /// The process ended.
    case exited(Int32)

    /// The event a line holds; nil for a line that is not one.
    public init?(line: Data) {
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: line), let object = value.objectValue,
            let kind = object["event"]?.stringValue
        else { return nil }
        let id = object["id"]?.stringValue ?? ""
        switch kind {
        case "ready": self = .ready
        case "setup_failed": self = .setupFailed(object["message"]?.stringValue ?? "")
        case "progress":
            guard case .number(let fraction) = object["fraction"] else { return nil }
            self = .progress(id: id, fraction: fraction, stage: object["stage"]?.stringValue ?? "")
        case "done": self = .done(id: id, outputs: (object["outputs"]?.objectValue ?? [:]).compactMapValues(\.stringValue))
        case "canceled": self = .canceled(id: id)
        case "error":
            self = .error(id: id, code: object["code"]?.stringValue ?? "model_error", message: object["message"]?.stringValue ?? "")
        default: return nil
        }
    }
}
