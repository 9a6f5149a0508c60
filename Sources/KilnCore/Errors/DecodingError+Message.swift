extension DecodingError {
    /// A message naming the field at fault, for people: `missing field 'input.prompt'`,
    /// `field 'model' must be a string`.
    ///
    /// - Parameter noun: what the format calls a field (`field` for JSON bodies, `key` for YAML files).
    public func message(noun: String = "field") -> String {
        func path(_ codingPath: [any CodingKey]) -> String {
            codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingPrefix(".").description
        }
        func kind(_ type: Any.Type) -> String {
            switch type {
            case is String.Type: "a string"
            case is Bool.Type: "a boolean"
            case is Int.Type, is Int64.Type, is UInt64.Type, is Double.Type: "a number"
            case is [Any].Type, is [String].Type: "an array"
            default: String(describing: type).hasPrefix("Dictionary") ? "an object" : "\(type)"
            }
        }
        switch self {
        case .keyNotFound(let key, let context):
            let parent = path(context.codingPath)
            return "missing \(noun) '\(parent.isEmpty ? key.stringValue : parent + "." + key.stringValue)'"
        case .typeMismatch(let type, let context):
            return "\(noun) '\(path(context.codingPath))' must be \(kind(type))"
        case .valueNotFound(let type, let context):
            return "\(noun) '\(path(context.codingPath))' must be \(kind(type)), not null"
        case .dataCorrupted(let context):
            let field = path(context.codingPath)
            return field.isEmpty ? context.debugDescription : "\(noun) '\(field)': \(context.debugDescription)"
        @unknown default:
            return "the document does not match the expected shape"
        }
    }
}
