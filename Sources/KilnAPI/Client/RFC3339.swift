import Foundation
import OpenAPIRuntime

/// RFC 3339 times with milliseconds, in UTC: the form of every time on the wire.
public enum RFC3339 {
    private static let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt)
    private static let whole = Date.ISO8601FormatStyle(timeZone: .gmt)

    public static func format(_ date: Date) -> String {
        style.format(date)
    }

    /// With or without fractional seconds.
    public static func parse(_ text: String) -> Date? {
        (try? style.parse(text)) ?? (try? whole.parse(text))
    }
}

/// The generated code's dates, as RFC 3339 with milliseconds.
public struct RFC3339Transcoder: DateTranscoder {
    public init() {}

    public func encode(_ date: Date) throws -> String { RFC3339.format(date) }

    public func decode(_ text: String) throws -> Date {
        guard let date = RFC3339.parse(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "'\(text)' is not an RFC 3339 time"))
        }
        return date
    }
}

extension Configuration {
    /// How both ends of the API encode: RFC 3339 times, compact JSON with sorted keys.
    public static let kiln = Configuration(
        dateTranscoder: RFC3339Transcoder(), jsonEncodingOptions: [.sortedKeys, .withoutEscapingSlashes])
}
