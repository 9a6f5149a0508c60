import Foundation
import KilnCore
import Testing

/// A video model's input schema as an author would write it.
private let videoSchemaJSON = #"""
    {
      "$schema": "https://json-schema.org/draft/2020-12/schema",
      "title": "Video generation input",
      "type": "object",
      "additionalProperties": false,
      "required": ["prompt", "video"],
      "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 2000, "description": "What to render"},
        "video": {"type": "string", "format": "file", "description": "The source clip"},
        "num_frames": {"type": "integer", "minimum": 1, "maximum": 240, "default": 48},
        "width": {"type": "integer", "minimum": 256, "maximum": 1920, "default": 1024},
        "height": {"type": "integer", "minimum": 256, "maximum": 1080, "default": 576},
        "fps": {"type": "number", "exclusiveMinimum": 0, "maximum": 60, "default": 24},
        "seed": {"type": "integer", "minimum": 0, "examples": [42]},
        "quality": {"type": "string", "enum": ["fast", "best"], "default": "fast"},
        "style": {"type": "string", "pattern": "^[a-z]+$"},
        "loop": {"type": "boolean", "default": false}
      }
    }
    """#

private func videoSchema() throws -> InputSchema {
    try InputSchema(JSONValue.parse(videoSchemaJSON))
}

private let validInput: [String: JSONValue] = [
    "prompt": .string("a fox running through snow"),
    "video": .string("file_01HZX3"),
    "num_frames": .number(96),
    "width": .number(1280),
    "height": .number(720),
    "fps": .number(23.976),
    "seed": .number(42),
    "quality": .string("best"),
    "style": .string("noir"),
    "loop": .bool(true),
]

private func violation(_ path: String, _ message: String) -> InputSchema.Violation {
    InputSchema.Violation(path: path, message: message)
}

/// The error `InputSchema.init` throws for `json`, or nil when it accepts the schema.
private func initError(_ json: String) throws -> KilnError? {
    let schema = try JSONValue.parse(json)
    do {
        _ = try InputSchema(schema)
        return nil
    } catch let error as KilnError {
        return error
    }
}

struct ViolationCase: Sendable, CustomTestStringConvertible {
    var field: String
    var value: JSONValue
    var message: String

    var testDescription: String { "\(field) = \(value.canonicalJSON()) → \(message)" }

    static let all: [ViolationCase] = [
        ViolationCase(field: "num_frames", value: .number(300), message: "must be at most 240"),
        ViolationCase(field: "num_frames", value: .number(0), message: "must be at least 1"),
        ViolationCase(field: "num_frames", value: .number(24.5), message: "must be an integer"),
        ViolationCase(field: "num_frames", value: .string("48"), message: "must be an integer"),
        ViolationCase(field: "width", value: .number(4096), message: "must be at most 1920"),
        ViolationCase(field: "height", value: .number(128), message: "must be at least 256"),
        ViolationCase(field: "fps", value: .number(0), message: "must be greater than 0"),
        ViolationCase(field: "fps", value: .number(60.5), message: "must be at most 60"),
        ViolationCase(field: "fps", value: .null, message: "must be a number"),
        ViolationCase(field: "seed", value: .number(-1), message: "must be at least 0"),
        ViolationCase(field: "prompt", value: .string(""), message: "must be at least 1 character long"),
        ViolationCase(
            field: "prompt", value: .string(String(repeating: "a", count: 2001)),
            message: "must be at most 2000 characters long"),
        ViolationCase(field: "prompt", value: .number(5), message: "must be a string"),
        ViolationCase(field: "video", value: .string("clip.mp4"), message: "must name an uploaded file (file_…)"),
        ViolationCase(field: "video", value: .string("file_"), message: "must name an uploaded file (file_…)"),
        ViolationCase(field: "quality", value: .string("ultra"), message: #"must be one of: "fast", "best""#),
        ViolationCase(field: "style", value: .string("Noir!"), message: "must match pattern ^[a-z]+$"),
        ViolationCase(field: "loop", value: .string("yes"), message: "must be a boolean"),
    ]
}

@Suite("Input schema")
struct InputSchemaTests {
    @Test("a valid input has no violations")
    func validInputPasses() throws {
        let schema = try videoSchema()
        #expect(schema.validate(validInput) == [])
        // Only the required fields.
        #expect(schema.validate(["prompt": .string("x"), "video": .string("file_a")]) == [])
    }

    @Test("an integer is a number with no fractional part; a number may have one")
    func integersAndNumbers() throws {
        let schema = try videoSchema()
        var input = validInput
        input["num_frames"] = .number(240.0)
        input["fps"] = .number(59.94)
        #expect(schema.validate(input) == [])
    }

    @Test("each kind of violation is reported with its path and message", arguments: ViolationCase.all)
    func reportsEachKind(_ testCase: ViolationCase) throws {
        let schema = try videoSchema()
        var input = validInput
        input[testCase.field] = testCase.value
        #expect(schema.validate(input) == [violation("input.\(testCase.field)", testCase.message)])
    }

    @Test("a missing required field is reported")
    func missingRequired() throws {
        let schema = try videoSchema()
        var input = validInput
        input["prompt"] = nil
        #expect(schema.validate(input) == [violation("input.prompt", "is required")])
    }

    @Test("an unknown field is refused when additionalProperties is false")
    func unknownFieldRefused() throws {
        let schema = try videoSchema()
        var input = validInput
        input["promt"] = .string("typo")
        #expect(schema.validate(input) == [violation("input.promt", "is not allowed (no such field)")])
    }

    @Test("an unknown field is accepted when additionalProperties is absent")
    func unknownFieldAcceptedByDefault() throws {
        let schema = try InputSchema(
            JSONValue.parse(#"{"type": "object", "properties": {"prompt": {"type": "string"}}}"#))
        #expect(schema.validate(["prompt": .string("x"), "extra": .number(1)]) == [])
    }

    @Test("several violations are all reported, sorted by path, and joined into one line")
    func severalViolationsInStableOrder() throws {
        let schema = try videoSchema()
        var input = validInput
        input["prompt"] = nil
        input["num_frames"] = .number(300)
        input["quality"] = .string("ultra")
        input["zzz"] = .bool(true)
        input["fps"] = .number(-1)
        input["video"] = .string("clip.mp4")
        let expected = [
            violation("input.fps", "must be greater than 0"),
            violation("input.num_frames", "must be at most 240"),
            violation("input.prompt", "is required"),
            violation("input.quality", #"must be one of: "fast", "best""#),
            violation("input.video", "must name an uploaded file (file_…)"),
            violation("input.zzz", "is not allowed (no such field)"),
        ]
        for _ in 0..<5 {
            #expect(schema.validate(input) == expected)
        }
        #expect(
            InputSchema.message(for: Array(expected[1...2]))
                == "input.num_frames: must be at most 240; input.prompt: is required")
    }

    @Test("several violations of one field are sorted by message")
    func severalMessagesForOneField() throws {
        let schema = try InputSchema(
            JSONValue.parse(
                #"{"type": "object", "properties": {"slug": {"type": "string", "minLength": 3, "pattern": "^[a-z]+$"}}}"#
            ))
        #expect(
            schema.validate(["slug": .string("A")]) == [
                violation("input.slug", "must be at least 3 characters long"),
                violation("input.slug", "must match pattern ^[a-z]+$"),
            ])
    }

    @Test("defaults fill absent fields only")
    func defaultsApplyToAbsentFieldsOnly() throws {
        let schema = try videoSchema()
        let input: [String: JSONValue] = [
            "prompt": .string("a fox"),
            "video": .string("file_1"),
            "num_frames": .number(100),
            "loop": .bool(true),
        ]
        let filled = schema.applyingDefaults(to: input)
        #expect(
            filled == [
                "prompt": .string("a fox"),
                "video": .string("file_1"),
                "num_frames": .number(100),
                "loop": .bool(true),
                "width": .number(1024),
                "height": .number(576),
                "fps": .number(24),
                "quality": .string("fast"),
            ])
        #expect(filled["seed"] == nil)
        #expect(schema.validate(filled) == [])
    }

    @Test("file fields are the top-level properties with format file, sorted")
    func fileFields() throws {
        #expect(try videoSchema().fileFields == ["video"])
        let schema = try InputSchema(
            JSONValue.parse(
                #"""
                {"type": "object", "properties": {
                  "mask": {"type": "string", "format": "file"},
                  "image": {"type": "string", "format": "file"},
                  "email": {"type": "string", "format": "email"},
                  "frames": {"type": "array", "items": {"type": "string", "format": "file"}}
                }}
                """#))
        #expect(schema.fileFields == ["image", "mask"])
        // Formats other than file are accepted and not checked.
        #expect(schema.validate(["email": .string("not an address")]) == [])
    }

    @Test("nested objects and arrays report full paths")
    func nestedPaths() throws {
        let schema = try InputSchema(
            JSONValue.parse(
                #"""
                {
                  "type": "object",
                  "properties": {
                    "style": {
                      "type": "object",
                      "additionalProperties": false,
                      "required": ["palette"],
                      "properties": {
                        "palette": {"type": "array", "minItems": 1, "maxItems": 4,
                                    "items": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}},
                        "strength": {"type": "number", "minimum": 0, "maximum": 1}
                      }
                    },
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}}
                  }
                }
                """#))

        let good: [String: JSONValue] = [
            "style": .object(["palette": .array([.string("#ff0000"), .string("#00ff00")]), "strength": .number(0.5)]),
            "tags": .array([.string("a"), .string("bc")]),
        ]
        #expect(schema.validate(good) == [])

        let tags = (0..<12).map { JSONValue.string($0 == 2 || $0 == 10 ? "long" : "ok") }
        let bad: [String: JSONValue] = [
            "style": .object([
                "palette": .array([.string("#ffffff"), .string("red")]),
                "strength": .number(1.5),
                "mood": .string("calm"),
            ]),
            "tags": .array(tags),
        ]
        #expect(
            schema.validate(bad) == [
                violation("input.style.mood", "is not allowed (no such field)"),
                violation("input.style.palette[1]", "must match pattern ^#[0-9a-f]{6}$"),
                violation("input.style.strength", "must be at most 1"),
                violation("input.tags[2]", "must be at most 3 characters long"),
                violation("input.tags[10]", "must be at most 3 characters long"),
            ])

        #expect(
            schema.validate(["style": .object([:])]) == [violation("input.style.palette", "is required")])
        #expect(
            schema.validate(["style": .object(["palette": .array([])])]) == [
                violation("input.style.palette", "must have at least 1 item")
            ])
        let five = JSONValue.array(Array(repeating: .string("#000000"), count: 5))
        #expect(
            schema.validate(["style": .object(["palette": five])]) == [
                violation("input.style.palette", "must have at most 4 items")
            ])
        #expect(schema.validate(["tags": .string("a,b")]) == [violation("input.tags", "must be an array")])
    }

    @Test("the author's schema is itself accepted")
    func videoSchemaAccepted() throws {
        #expect(try initError(videoSchemaJSON) == nil)
        // No type, but properties: an object schema.
        #expect(try initError(#"{"properties": {"a": {"type": "string"}}}"#) == nil)
    }

    @Test("a schema with an unknown keyword is refused, naming it and where it is")
    func unknownKeywordRefused() throws {
        let error = try #require(
            try initError(#"{"type": "object", "properties": {"num_frames": {"type": "integer", "minimun": 1}}}"#))
        #expect(error.code == .invalidInput)
        #expect(error.message.hasPrefix("input_schema"))
        #expect(error.message.contains("properties.num_frames"))
        #expect(error.message.contains("minimun"))
    }

    @Test("a file field whose name cannot be a path segment on workers is refused, naming it", arguments: ["my video", "a/b", "clip?x", "..", ""])
    func unsafeFileFieldName(_ name: String) throws {
        let json = #"{"type": "object", "properties": {"\#(name)": {"type": "string", "format": "file"}}}"#
        let error = try #require(try initError(json))
        #expect(error.code == .invalidInput)
        #expect(error.message.contains("file field '\(name)'"))
        // Any name will do for a field that is not a file, and a safe one for a file.
        #expect(try initError(#"{"type": "object", "properties": {"\#(name)": {"type": "string"}}}"#) == nil)
        #expect(try initError(#"{"type": "object", "properties": {"clip-1.mp4": {"type": "string", "format": "file"}}}"#) == nil)
    }

    @Test("a schema with a bad type name is refused, naming it")
    func badTypeRefused() throws {
        let error = try #require(
            try initError(#"{"type": "object", "properties": {"seed": {"type": "int"}}}"#))
        #expect(error.code == .invalidInput)
        #expect(error.message.contains("properties.seed.type"))
        #expect(error.message.contains(#""int""#))
        // A list of types is outside the subset.
        let list = try #require(try initError(#"{"type": "object", "properties": {"a": {"type": ["string", "null"]}}}"#))
        #expect(list.message.contains("properties.a.type"))
    }

    @Test("a schema whose pattern does not compile is refused, naming it")
    func badPatternRefused() throws {
        let error = try #require(
            try initError(#"{"type": "object", "properties": {"slug": {"type": "string", "pattern": "[a-"}}}"#))
        #expect(error.code == .invalidInput)
        #expect(error.message.contains("properties.slug.pattern"))
        #expect(error.message.contains("[a-"))
    }

    @Test("malformed keyword values are refused, naming the keyword")
    func malformedKeywordsRefused() throws {
        let cases: [(json: String, names: String)] = [
            (#"{"type": "object", "required": "prompt"}"#, "input_schema.required"),
            (#"{"type": "object", "required": ["prompt", 3]}"#, "input_schema.required"),
            (#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": "1"}}}"#, "properties.n.minimum"),
            (#"{"type": "object", "properties": {"s": {"type": "string", "maxLength": 2.5}}}"#, "properties.s.maxLength"),
            (#"{"type": "object", "additionalProperties": {"type": "string"}}"#, "input_schema.additionalProperties"),
            (#"{"type": "object", "properties": {"q": {"enum": "fast"}}}"#, "properties.q.enum"),
            (#"{"type": "object", "properties": {"a": {"type": "array", "items": [{"type": "string"}]}}}"#, "properties.a.items"),
            (#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 10, "maximum": 5}}}"#, "properties.n"),
            (#"{"type": "object", "properties": "none"}"#, "input_schema.properties"),
        ]
        for (json, names) in cases {
            let error = try initError(json)
            #expect(error?.code == .invalidInput, "\(json)")
            #expect(error?.message.contains(names) == true, "\(json) → \(error?.message ?? "accepted")")
        }
    }

    @Test("the top-level schema must describe an object")
    func topLevelMustBeObject() throws {
        #expect(try initError(#"{"type": "string"}"#)?.message.hasPrefix("input_schema") == true)
        #expect(try initError(#"{"title": "nothing"}"#) != nil)
        #expect(try initError(#"[1, 2]"#) != nil)
    }
}
