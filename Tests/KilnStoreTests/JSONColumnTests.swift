import Foundation
import KilnStore
import Testing

@Suite("JSON columns")
struct JSONColumnTests {
    /// The text a sorted-keys `JSONEncoder` writes: what every column held before empty collections
    /// skipped the encoder, and what rows already stored hold.
    private func encoderText<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    @Test("empty and full collections are written as the encoder writes them, and read back equal")
    func sameTextAsTheEncoder() throws {
        let arrays: [[String]] = [[], ["h100", "a100"]]
        for value in arrays {
            #expect(JSONColumn.encode(value) == (try encoderText(value)))
            #expect(JSONColumn.decode(JSONColumn.encode(value)) == value)
        }
        let objects: [[String: String]] = [[:], ["video": "file_2", "audio": "file_1"]]
        for value in objects {
            #expect(JSONColumn.encode(value) == (try encoderText(value)))
            #expect(JSONColumn.decode(JSONColumn.encode(value)) == value)
        }
        #expect(JSONColumn.encode(["b": 1, "a": 2]) == #"{"a":2,"b":1}"#, "keys sorted")
        #expect(JSONColumn.encode([String]()) == "[]")
        #expect(JSONColumn.encode([String: Int]()) == "{}")
    }
}
