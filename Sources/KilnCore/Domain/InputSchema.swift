import Foundation

/// The JSON Schema subset that model authors use to describe a generation's `input`.
///
/// Built once from the model's schema (refusing keywords outside the subset, so that typos surface
/// when the model is registered), then used to check each submission before anything is queued:
/// ``validate(_:)`` reports every offending field, with a path such as `input.tags[2]`.
///
/// Supported keywords: `type` (one of object, string, integer, number, boolean, array),
/// `properties`, `required`, `additionalProperties` (boolean; default true), `enum`, `default`,
/// `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (numbers), `minLength`,
/// `maxLength`, `pattern`, `items`, `minItems`, `maxItems`, `format` (only `"file"` is checked:
/// an uploaded file id, `file_…`). Annotations `title`, `description`, `examples`, `$schema` and
/// `$id` are ignored. As in JSON Schema, a keyword that does not apply to a value's kind (say
/// `minLength` on a number) is not checked.
public struct InputSchema: Sendable, Hashable {
    /// One field that does not conform: `path` names it (`input.num_frames`, `input.tags[2]`),
    /// `message` says what is wrong (`must be at most 240`).
    public struct Violation: Sendable, Hashable, CustomStringConvertible {
        public var path: String
        public var message: String

        public init(path: String, message: String) {
            self.path = path
            self.message = message
        }

        public var description: String { "\(path): \(message)" }
    }

    private let root: Node

    /// Parses and checks `schema`; throws ``KilnError/Code/invalidInput`` with a message naming the
    /// offending keyword and its path (`input_schema.properties.seed.minimum: must be a number`).
    public init(_ schema: JSONValue) throws {
        let root = try Node(parsing: schema, at: [])
        let hasProperties = schema.objectValue?["properties"] != nil
        guard root.type == .object || (root.type == nil && hasProperties) else {
            throw KilnError(.invalidInput, "input_schema: the top-level schema must have type \"object\"")
        }
        // A file field's name becomes a path segment on workers (inputs/NAME) and in the worker API.
        for (name, node) in root.properties where node.isFile && !Self.isSafeFileFieldName(name) {
            throw KilnError(
                .invalidInput,
                "input_schema: file field '\(name)' must be named with 1 to 64 letters, digits, '-', '_' or '.' (not '.' or '..'): the name is a path on workers")
        }
        self.root = root
    }

    static func isSafeFileFieldName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count) && name != "." && name != ".."
            && name.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 95 || $0 == 46 }
    }

    /// Every violation of `input`, sorted by path (array indices in numeric order), then message.
    public func validate(_ input: [String: JSONValue]) -> [Violation] {
        var found: [Finding] = []
        root.check(.object(input), at: [], into: &found)
        found.sort { a, b in
            a.path != b.path ? a.path.lexicographicallyPrecedes(b.path) : a.message < b.message
        }
        return found.map { Violation(path: render("input", $0.path), message: $0.message) }
    }

    /// The top-level property names whose schema has `format: "file"`, sorted.
    public var fileFields: [String] {
        root.properties.filter { $0.value.isFile }.keys.sorted()
    }

    /// `input` with each absent top-level property that has a `default` set to it. Present fields,
    /// `null` included, are left alone.
    public func applyingDefaults(to input: [String: JSONValue]) -> [String: JSONValue] {
        var result = input
        for (name, node) in root.properties where result[name] == nil {
            if let value = node.defaultValue { result[name] = value }
        }
        return result
    }

    /// One line for an error message: `input.num_frames: must be at most 240; input.prompt: is required`.
    public static func message(for violations: [Violation]) -> String {
        violations.map(\.description).joined(separator: "; ")
    }
}

// MARK: - Paths

/// One step of a path into a JSON value. Comparable so that `tags[2]` sorts before `tags[10]`.
private enum Segment: Hashable, Comparable, Sendable {
    case key(String)
    case index(Int)
}

/// `input.style.palette[1]`; a key that is not a plain name is written `input["a b"]`.
private func render(_ root: String, _ path: [Segment]) -> String {
    var text = root
    for segment in path {
        switch segment {
        case .key(let key):
            if isPlainName(key) {
                text += "." + key
            } else {
                text += "[" + JSONValue.string(key).canonicalJSON() + "]"
            }
        case .index(let index):
            text += "[\(index)]"
        }
    }
    return text
}

private func isPlainName(_ key: String) -> Bool {
    !key.isEmpty && key.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
}

private func schemaError(_ path: [Segment], _ message: String) -> KilnError {
    KilnError(.invalidInput, "\(render("input_schema", path)): \(message)")
}

private func quoted(_ text: String) -> String {
    JSONValue.string(text).canonicalJSON()
}

/// `240`, `0.5`: integral values without a fractional part.
private func format(_ number: Double) -> String {
    if number.rounded() == number, abs(number) < 1e15 { return String(Int64(number)) }
    return "\(number)"
}

private func plural(_ count: Int, _ noun: String) -> String {
    count == 1 ? "1 \(noun)" : "\(count) \(noun)s"
}

// MARK: - Parsed schema

private struct Finding {
    var path: [Segment]
    var message: String
}

/// One parsed (sub)schema.
private struct Node: Sendable, Hashable {
    enum Kind: String, CaseIterable, Sendable {
        case object, string, integer, number, boolean, array

        var phrase: String {
            switch self {
            case .object: "an object"
            case .string: "a string"
            case .integer: "an integer"
            case .number: "a number"
            case .boolean: "a boolean"
            case .array: "an array"
            }
        }

        func admits(_ value: JSONValue) -> Bool {
            switch (self, value) {
            case (.object, .object), (.string, .string), (.number, .number), (.boolean, .bool), (.array, .array):
                true
            case (.integer, .number(let number)):
                number.isFinite && number.rounded(.towardZero) == number
            default:
                false
            }
        }
    }

    static let keywords: Set<String> = [
        "type", "properties", "required", "additionalProperties", "enum", "default",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
        "minLength", "maxLength", "pattern", "format",
        "items", "minItems", "maxItems",
        // Annotations, ignored.
        "title", "description", "examples", "$schema", "$id",
    ]

    var type: Kind?
    var properties: [String: Node] = [:]
    var required: [String] = []
    var additionalProperties = true
    var allowed: [JSONValue]?
    var defaultValue: JSONValue?
    var minimum: Double?
    var maximum: Double?
    var exclusiveMinimum: Double?
    var exclusiveMaximum: Double?
    var minLength: Int?
    var maxLength: Int?
    /// Kept as text: `NSRegularExpression` is not Sendable, so it is compiled when checking.
    var pattern: String?
    var isFile = false
    /// Zero or one element: the schema of array items (an array, as a struct cannot hold itself).
    var itemSchemas: [Node] = []
    var minItems: Int?
    var maxItems: Int?

    var items: Node? { itemSchemas.first }

    init(parsing json: JSONValue, at path: [Segment]) throws {
        guard case .object(let fields) = json else {
            throw schemaError(path, "must be a schema (a JSON object)")
        }
        let unknown = fields.keys.filter { !Self.keywords.contains($0) }.sorted()
        if !unknown.isEmpty {
            let names = unknown.map(quoted).joined(separator: ", ")
            throw schemaError(path, "unknown keyword\(unknown.count == 1 ? "" : "s") \(names)")
        }

        func at(_ keyword: String) -> [Segment] { path + [.key(keyword)] }

        func number(_ keyword: String) throws -> Double? {
            guard let value = fields[keyword] else { return nil }
            guard case .number(let number) = value, number.isFinite else {
                throw schemaError(at(keyword), "must be a number")
            }
            return number
        }

        func count(_ keyword: String) throws -> Int? {
            guard let value = fields[keyword] else { return nil }
            guard case .number(let number) = value, number >= 0, number < 1e15, number.rounded() == number else {
                throw schemaError(at(keyword), "must be a non-negative integer")
            }
            return Int(number)
        }

        if let value = fields["type"] {
            let expected = Kind.allCases.map(\.rawValue).joined(separator: ", ")
            guard case .string(let name) = value else {
                throw schemaError(at("type"), "must be a single type name (one of: \(expected))")
            }
            guard let kind = Kind(rawValue: name) else {
                throw schemaError(at("type"), "unknown type \(quoted(name)) (expected one of: \(expected))")
            }
            type = kind
        }

        if let value = fields["properties"] {
            guard case .object(let members) = value else {
                throw schemaError(at("properties"), "must be an object mapping field names to schemas")
            }
            for (name, member) in members.sorted(by: { $0.key < $1.key }) {
                properties[name] = try Node(parsing: member, at: at("properties") + [.key(name)])
            }
        }

        if let value = fields["required"] {
            guard case .array(let elements) = value else {
                throw schemaError(at("required"), "must be an array of field names (strings)")
            }
            var names: Set<String> = []
            for element in elements {
                guard case .string(let name) = element else {
                    throw schemaError(at("required"), "must be an array of field names (strings)")
                }
                names.insert(name)
            }
            required = names.sorted()
        }

        if let value = fields["additionalProperties"] {
            guard case .bool(let flag) = value else {
                throw schemaError(at("additionalProperties"), "must be true or false (schemas are not supported)")
            }
            additionalProperties = flag
        }

        if let value = fields["enum"] {
            guard case .array(let values) = value, !values.isEmpty else {
                throw schemaError(at("enum"), "must be a non-empty array of allowed values")
            }
            allowed = values
        }

        defaultValue = fields["default"]

        minimum = try number("minimum")
        maximum = try number("maximum")
        exclusiveMinimum = try number("exclusiveMinimum")
        exclusiveMaximum = try number("exclusiveMaximum")
        if let minimum, let maximum, minimum > maximum {
            throw schemaError(path, "minimum \(format(minimum)) is greater than maximum \(format(maximum))")
        }

        minLength = try count("minLength")
        maxLength = try count("maxLength")
        if let minLength, let maxLength, minLength > maxLength {
            throw schemaError(path, "minLength \(minLength) is greater than maxLength \(maxLength)")
        }

        if let value = fields["pattern"] {
            guard case .string(let text) = value else {
                throw schemaError(at("pattern"), "must be a string (a regular expression)")
            }
            guard (try? NSRegularExpression(pattern: text)) != nil else {
                throw schemaError(at("pattern"), "\(quoted(text)) is not a valid regular expression")
            }
            pattern = text
        }

        if let value = fields["format"] {
            guard case .string(let name) = value else {
                throw schemaError(at("format"), "must be a string")
            }
            // Only "file" is checked; other formats are accepted as annotations.
            isFile = name == "file"
        }

        if let value = fields["items"] {
            itemSchemas = try [Node(parsing: value, at: at("items"))]
        }

        minItems = try count("minItems")
        maxItems = try count("maxItems")
        if let minItems, let maxItems, minItems > maxItems {
            throw schemaError(path, "minItems \(minItems) is greater than maxItems \(maxItems)")
        }
    }

    /// Appends to `found` every way `value` (at `path`) fails this schema. A value of the wrong type
    /// or outside `enum` gets that one message; the keywords below would only add noise.
    func check(_ value: JSONValue, at path: [Segment], into found: inout [Finding]) {
        if let type, !type.admits(value) {
            found.append(Finding(path: path, message: "must be \(type.phrase)"))
            return
        }
        if let allowed, !allowed.contains(value) {
            let list = allowed.map { $0.canonicalJSON() }.joined(separator: ", ")
            found.append(Finding(path: path, message: "must be one of: \(list)"))
            return
        }

        switch value {
        case .number(let number):
            if let minimum, number < minimum {
                found.append(Finding(path: path, message: "must be at least \(format(minimum))"))
            }
            if let maximum, number > maximum {
                found.append(Finding(path: path, message: "must be at most \(format(maximum))"))
            }
            if let exclusiveMinimum, number <= exclusiveMinimum {
                found.append(Finding(path: path, message: "must be greater than \(format(exclusiveMinimum))"))
            }
            if let exclusiveMaximum, number >= exclusiveMaximum {
                found.append(Finding(path: path, message: "must be less than \(format(exclusiveMaximum))"))
            }

        case .string(let text):
            // JSON Schema counts Unicode code points.
            let length = text.unicodeScalars.count
            if let minLength, length < minLength {
                found.append(Finding(path: path, message: "must be at least \(plural(minLength, "character")) long"))
            }
            if let maxLength, length > maxLength {
                found.append(Finding(path: path, message: "must be at most \(plural(maxLength, "character")) long"))
            }
            if let pattern, let regex = try? NSRegularExpression(pattern: pattern),
                regex.firstMatch(in: text, range: NSRange(location: 0, length: text.utf16.count)) == nil
            {
                found.append(Finding(path: path, message: "must match pattern \(pattern)"))
            }
            if isFile, !(text.hasPrefix("file_") && text.count > "file_".count) {
                found.append(Finding(path: path, message: "must name an uploaded file (file_…)"))
            }

        case .array(let elements):
            if let minItems, elements.count < minItems {
                found.append(Finding(path: path, message: "must have at least \(plural(minItems, "item"))"))
            }
            if let maxItems, elements.count > maxItems {
                found.append(Finding(path: path, message: "must have at most \(plural(maxItems, "item"))"))
            }
            if let items {
                for (index, element) in elements.enumerated() {
                    items.check(element, at: path + [.index(index)], into: &found)
                }
            }

        case .object(let fields):
            for name in required where fields[name] == nil {
                found.append(Finding(path: path + [.key(name)], message: "is required"))
            }
            for (name, member) in fields {
                if let schema = properties[name] {
                    schema.check(member, at: path + [.key(name)], into: &found)
                } else if !additionalProperties {
                    found.append(Finding(path: path + [.key(name)], message: "is not allowed (no such field)"))
                }
            }

        case .null, .bool:
            break
        }
    }
}
