import Foundation
import KilnCore
import Testing

/// Random schemas and documents against the input-schema validator, from a fixed seed (more cases
/// by hand: `KILN_FUZZ_ITERATIONS=100000 KILN_FUZZ_SEED=$RANDOM swift test --filter Fuzz`).
///
/// A schema is refused with a ``KilnError`` naming `input_schema…`, or accepted; an accepted one
/// validates any document without crashing, the same way twice, and agrees with a small
/// independent judge of the top-level keywords (`type`, `required`, `additionalProperties`).
@Suite("Fuzz: the input-schema validator")
struct InputSchemaFuzzTests {
    static var iterations: Int { ProcessInfo.processInfo.environment["KILN_FUZZ_ITERATIONS"].flatMap(Int.init) ?? 2_000 }
    static var seed: UInt64 { ProcessInfo.processInfo.environment["KILN_FUZZ_SEED"].flatMap(UInt64.init) ?? 1 }

    struct Generator {
        var rng: SplitMix64
        static let names = ["a", "b", "prompt", "video", "x y", "", "..", "é", "tags", "seed"]

        mutating func below(_ bound: Int) -> Int { Int(rng.next() % UInt64(bound)) }
        mutating func pick<T>(_ choices: [T]) -> T { choices[below(choices.count)] }
        mutating func chance(_ probability: Double) -> Bool { rng.unit() < probability }

        mutating func value(depth: Int = 0) -> JSONValue {
            switch below(depth > 2 ? 4 : 6) {
            case 0: return .null
            case 1: return .bool(chance(0.5))
            case 2: return .number(pick([0, -1, 1.5, 1e300, -1e-300, 42, 9_007_199_254_740_993, 240, -0.0, 1e15]))
            case 3: return .string(pick(["", "file_x", "file_", "abc", "ABC", "üüü", "fast", String(repeating: "long ", count: 500)]))
            case 4: return .array((0..<below(4)).map { _ in value(depth: depth + 1) })
            default:
                var object: [String: JSONValue] = [:]
                for _ in 0..<below(4) { object[pick(Self.names)] = value(depth: depth + 1) }
                return .object(object)
            }
        }

        /// A schema node: mostly well-formed keywords, sometimes a value of the wrong kind, an
        /// unknown keyword or a pattern that does not compile.
        mutating func schema(depth: Int = 0) -> JSONValue {
            var fields: [String: JSONValue] = [:]
            if depth == 0 || chance(0.7) {
                fields["type"] =
                    depth == 0 && chance(0.9)
                    ? .string("object")
                    : pick([
                        .string("object"), .string("string"), .string("integer"), .string("number"), .string("boolean"),
                        .string("array"), .string("nul"), .number(5), .array([.string("string")]),
                    ])
            }
            if depth < 3, chance(0.6) {
                var properties: [String: JSONValue] = [:]
                for _ in 0..<below(5) { properties[pick(Self.names)] = schema(depth: depth + 1) }
                fields["properties"] = chance(0.95) ? .object(properties) : .string("no")
            }
            if chance(0.4) {
                fields["required"] = chance(0.9) ? .array((0..<below(3)).map { _ in .string(pick(Self.names)) }) : .string("a")
            }
            if chance(0.3) { fields["additionalProperties"] = chance(0.9) ? .bool(chance(0.5)) : .object([:]) }
            if chance(0.15) { fields["enum"] = chance(0.9) ? .array((0..<below(4)).map { _ in value(depth: 2) }) : .number(1) }
            if chance(0.2) { fields["default"] = value(depth: 1) }
            for keyword in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] where chance(0.1) {
                fields[keyword] = chance(0.9) ? .number(pick([0, 1, -5, 0.5, 1e308, 240])) : .string("1")
            }
            for keyword in ["minLength", "maxLength", "minItems", "maxItems"] where chance(0.1) {
                fields[keyword] = pick([.number(0), .number(1), .number(3), .number(-1), .number(1.5), .number(1e20), .string("x")])
            }
            if chance(0.1) { fields["pattern"] = .string(pick(["^[a-z]+$", "(", "a{2,}", "", "\\d+", "[", "(?<n>x)", "^(a+)+$"])) }
            if depth < 3, chance(0.2) { fields["items"] = schema(depth: depth + 1) }
            if chance(0.1) { fields["format"] = pick([.string("file"), .string("date"), .number(3)]) }
            if chance(0.03) { fields["maxlength"] = .number(3) }
            if chance(0.1) { fields["description"] = .string("what it is") }
            return .object(fields)
        }
    }

    @Test("random schemas and documents: clean refusals, no crash, stable answers that agree with an independent judge")
    func schemasAndDocuments() throws {
        var generator = Generator(rng: SplitMix64(seed: Self.seed))
        var (refused, accepted, documents) = (0, 0, 0)
        for iteration in 0..<Self.iterations {
            let schemaValue = generator.schema()
            let context = "iteration \(iteration), seed \(Self.seed): \(schemaValue.canonicalJSON())"
            let schema: InputSchema
            do {
                schema = try InputSchema(schemaValue)
                accepted += 1
            } catch let error as KilnError {
                refused += 1
                #expect(error.code == .invalidInput && error.message.hasPrefix("input_schema"), "\(context): \(error)")
                continue
            }
            for _ in 0..<5 {
                documents += 1
                let document = generator.value().objectValue ?? [:]
                let violations = schema.validate(document)
                #expect(violations == schema.validate(document), "\(context): not deterministic")
                #expect(violations.allSatisfy { $0.path.hasPrefix("input") && !$0.message.isEmpty }, "\(context)")
                for expected in Self.judge(schemaValue, document) {
                    #expect(violations.contains { $0.path == expected }, "\(context): \(document) has no violation at \(expected)")
                }
                if violations.isEmpty { #expect(InputSchema.message(for: violations).isEmpty) }
            }
        }
        #expect(refused > 0 && accepted > 0, "the cases reach both outcomes (\(refused) refused, \(accepted) accepted)")
        #expect(documents > 0)
    }

    /// The top-level paths that must have a violation, judged without the validator: the whole
    /// input when it is not one of the schema's `enum`; otherwise a required property that is
    /// absent, a present one of the wrong kind, an unexpected one.
    static func judge(_ schema: JSONValue, _ document: [String: JSONValue]) -> [String] {
        guard let fields = schema.objectValue else { return [] }
        // A value outside its enum is reported as that alone (what is inside it is not checked).
        if case .array(let allowed) = fields["enum"], !allowed.contains(.object(document)) { return ["input"] }
        let properties = fields["properties"]?.objectValue ?? [:]
        var paths: [String] = []
        func path(_ name: String) -> String? {
            !name.isEmpty && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") } ? "input.\(name)" : nil
        }
        if case .array(let required) = fields["required"] {
            for case .string(let name) in required where document[name] == nil { paths += [path(name)].compactMap { $0 } }
        }
        for (name, value) in document {
            guard let property = properties[name]?.objectValue else {
                if fields["additionalProperties"] == .bool(false) { paths += [path(name)].compactMap { $0 } }
                continue
            }
            guard case .string(let type) = property["type"] else { continue }
            let fits: Bool
            switch (type, value) {
            case ("string", .string), ("boolean", .bool), ("number", .number), ("array", .array), ("object", .object): fits = true
            case ("integer", .number(let number)): fits = number.rounded() == number
            default: fits = false
            }
            if !fits { paths += [path(name)].compactMap { $0 } }
        }
        return paths
    }

    @Test("documents nested far deeper than any schema are refused or checked, never a crash")
    func deepDocuments() throws {
        for depth in [100, 10_000, 100_000] {
            let text = #"{"a":"# + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "}"
            // The parser refuses nesting past its limit; what it accepts the validator walks only as
            // deep as the schema goes.
            guard let parsed = try? JSONValue.parse(text), let document = parsed.objectValue else { continue }
            let schema = try InputSchema(JSONValue.parse(#"{"type":"object","properties":{"a":{"type":"array","items":{"type":"array"}}}}"#))
            #expect(schema.validate(document).isEmpty, "depth \(depth)")
        }
        #expect(throws: (any Error).self) { try JSONValue.parse(String(repeating: "[", count: 100_000)) }
    }
}
