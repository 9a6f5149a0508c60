import ArgumentParser
import Foundation
import KilnAPI
import KilnCore
import OpenAPIRuntime

struct Generate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a generation: upload the input clip, submit, watch the progress, save the output.")

    @Option(help: "The model.") var model: String
    @Option(help: "The prompt.") var prompt: String
    @Option(help: "An input video (modify-video).") var video: String?
    @Option(help: "Where to save the output (default: <generation id>.mp4).") var out: String?
    @Option(name: .customLong("input"), help: "Another input field NAME=VALUE (numbers are numbers; repeatable).") var inputs: [String] = []
    @Option(help: "An alias of the model (default production).") var alias: String?
    @Option(help: "A version of the model, instead of an alias.") var version: String?
    @OptionGroup var connection: Connection

    func run() async throws {
        let client = try connection.client(.user)
        var input: [String: JSONValue] = ["prompt": .string(prompt)]
        for pair in inputs {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw ValidationError("--input '\(pair)' is not NAME=VALUE") }
            input[parts[0]] = Double(parts[1]).map(JSONValue.number) ?? .string(parts[1])
        }
        try await reporting {
            if let video {
                let file = try await client.transfer(contentType: "video/mp4") {
                    try await $0.uploadFile(body: .any(try HTTPBody.file(URL(filePath: video)))).created.body.json
                }
                input["video"] = .string(file.id)
                print("uploaded \(video) as \(file.id)")
            }
            let request = Components.Schemas.CreateGenerationRequest(
                model: model, alias: alias, version: version, input: .init(additionalProperties: try .init(input)))
            let created = try await client {
                // The key makes a retried submission safe: the server answers it with the same generation.
                try await $0.createGeneration(headers: .init(idempotencyKey: UUID().uuidString), body: .json(request)).created.body.json
            }
            print("generation \(created.id)")
            let done = try await Watch.follow(created.id, client: client)
            guard done.state == .succeeded else {
                throw CommandFailure("generation \(done.state.rawValue): \(done.error?.message ?? "no reason given")")
            }
            for (index, (name, output)) in done.output.additionalProperties.sorted(by: { $0.key < $1.key }).enumerated() {
                let suffix = output.contentType == "video/mp4" ? "mp4" : "bin"
                let path = index == 0 ? (out ?? "\(done.id).\(suffix)") : "\(done.id)-\(name).\(suffix)"
                try await client.transfer {
                    try await $0.downloadFile(path: .init(id: output.fileId)).ok.body.any.write(to: URL(filePath: path))
                }
                print("saved \(name) to \(path) (\(format(bytes: output.size)))")
            }
        }
    }
}

/// A live line for one generation until it ends.
enum Watch {
    static func follow(_ id: String, client: KilnAPIClient) async throws -> Components.Schemas.GenerationObject {
        let interactive = isatty(STDOUT_FILENO) == 1
        var last = ""
        while true {
            let generation = try await client { try await $0.getGeneration(path: .init(id: id)).ok.body.json }
            let line = describe(generation)
            if line != last {
                if interactive {
                    FileHandle.standardOutput.write(Data(("\r\u{1B}[2K" + line).utf8))
                } else {
                    print(line)
                }
                last = line
            }
            if GenerationState(generation.state).isFinal {
                if interactive { print("") }
                return generation
            }
            try await Task.sleep(for: .milliseconds(400))
        }
    }

    static func describe(_ generation: Components.Schemas.GenerationObject) -> String {
        switch generation.state {
        case .queued:
            let position = generation.queue.map { "position \($0.position + 1)" } ?? ""
            let eta = generation.queue?.etaSeconds.map { String(format: ", about %.0f s", $0) } ?? ""
            return "queued \(position)\(eta)"
        case .running:
            let width = 30
            let filled = Int((generation.progress.fraction * Double(width)).rounded())
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
            return String(format: "running %@ %3.0f%% %@", bar, generation.progress.fraction * 100, generation.progress.stage)
        default:
            return generation.state.rawValue + (generation.error.map { ": \($0.message)" } ?? "")
        }
    }
}

struct Jobs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List, inspect, watch and cancel generations.", subcommands: [List.self, Get.self, WatchJob.self, Cancel.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The account's generations, newest first.")
        @Option(help: "Only this state.") var state: String?
        @Option(help: "How many.") var limit: Int = 20
        @OptionGroup var connection: Connection

        func run() async throws {
            var only: Components.Schemas.GenerationState?
            if let state {
                guard let parsed = Components.Schemas.GenerationState(rawValue: state) else {
                    throw ValidationError(
                        "--state '\(state)' is not one of \(Components.Schemas.GenerationState.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                only = parsed
            }
            let (client, query) = (try connection.client(.user), Operations.ListGenerations.Input.Query(state: only, limit: limit))
            let list = try await reporting {
                try await client { try await $0.listGenerations(query: query).ok.body.json }
            }
            for generation in list.data {
                print("\(generation.id)  \(generation.state.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0))  \(generation.model)  \(RFC3339.format(generation.createdAt))")
            }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A generation, as JSON.")
        @Argument var id: String
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client(.user)
            let generation = try await reporting { try await client { try await $0.getGeneration(path: .init(id: id)).ok.body.json } }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            encoder.dateEncodingStrategy = .custom { date, encoder in
                var container = encoder.singleValueContainer()
                try container.encode(RFC3339.format(date))
            }
            print(String(decoding: try encoder.encode(generation), as: UTF8.self))
        }
    }

    struct WatchJob: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "watch", abstract: "Follow a generation until it ends.")
        @Argument var id: String
        @OptionGroup var connection: Connection

        func run() async throws {
            guard GenerationID(rawValue: id) != nil else { throw ValidationError("'\(id)' is not a generation id") }
            let done = try await reporting { try await Watch.follow(id, client: try connection.client(.user)) }
            if done.state != .succeeded { throw ExitCode(1) }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a queued or running generation.")
        @Argument var id: String
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client(.user)
            let generation = try await reporting { try await client { try await $0.cancelGeneration(path: .init(id: id)).ok.body.json } }
            print("\(generation.id) \(generation.state.rawValue)")
        }
    }
}
