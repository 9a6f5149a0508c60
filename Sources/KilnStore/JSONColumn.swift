import Foundation

/// The JSON text columns of every backend (labels, outputs, alias targets, input files): keys
/// sorted, so that equal values are stored as equal text, and empty collections read back without
/// a decoder.
public enum JSONColumn {
    /// The value as JSON text with sorted keys; `{}` if it cannot be encoded.
    public static func encode<T: Encodable>(_ value: T) -> String { encoded(value) }

    /// An array as JSON text. Most rows hold empty collections: `[]` needs no encoder.
    public static func encode<Element: Encodable>(_ value: [Element]) -> String { value.isEmpty ? "[]" : encoded(value) }

    /// An object as JSON text, its keys sorted; `{}` needs no encoder.
    public static func encode<Value: Encodable>(_ value: [String: Value]) -> String { value.isEmpty ? "{}" : encoded(value) }

    private static func encoded<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    /// The value a column holds; nil for NULL or text that does not decode as `T`.
    public static func decode<T: Decodable & EmptyDecodable>(_ text: String?) -> T? {
        guard let text else { return nil }
        // Most rows hold empty collections: no decoder for those.
        if text == "{}" || text == "[]", let empty = T.empty { return empty }
        return try? JSONDecoder().decode(T.self, from: Data(text.utf8))
    }
}

/// A collection whose empty value needs no decoder.
public protocol EmptyDecodable {
    static var empty: Self? { get }
}

extension Dictionary: EmptyDecodable {
    public static var empty: Self? { [:] }
}

extension Array: EmptyDecodable {
    public static var empty: Self? { [] }
}
