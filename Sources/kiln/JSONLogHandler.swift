import ArgumentParser
import Foundation
import Logging

/// Logs as one JSON object per line on standard error (`--log-format json`): `time`, `level`,
/// `logger`, `message`, then the metadata (`generation`, `worker`, `version`, … where they apply),
/// for log pipelines that index fields rather than parse text.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: [String: String] = [:]
        let provided = metadataProvider?.get() ?? [:]
        for (key, value) in metadata.merging(provided, uniquingKeysWith: { $1 }).merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            fields[key] = "\(value)"
        }
        var line = "{\"time\":\(Self.quoted(Self.timestamp()))"
        line += ",\"level\":\(Self.quoted(event.level.rawValue)),\"logger\":\(Self.quoted(label))"
        line += ",\"message\":\(Self.quoted("\(event.message)"))"
        for key in fields.keys.sorted() where !["time", "level", "logger", "message"].contains(key) {
            line += ",\(Self.quoted(key)):\(Self.quoted(fields[key]!))"
        }
        line += "}\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    /// Now, as RFC 3339 with milliseconds in UTC.
    static func timestamp() -> String {
        Date.now.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    /// `text` as a JSON string.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20: out += String(format: "\\u%04x", c.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// How a command writes its logs: `--log-format text` (the default) or `json`.
enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json

    /// Makes every logger of the process write in this format (once, before any logger exists).
    func bootstrap() {
        guard self == .json else { return }
        LoggingSystem.bootstrap { label in JSONLogHandler(label: label) }
    }
}
