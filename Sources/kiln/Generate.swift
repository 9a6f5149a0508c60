import ArgumentParser
import Foundation
import KilnAPI
import KilnCore

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
                let file: FileObject = try await client.upload(
                    URL(filePath: video), method: .POST, to: "/v1/files", contentType: "video/mp4")
                input["video"] = .string(file.id.rawValue)
                print("uploaded \(video) as \(file.id)")
            }
            let created: GenerationObject = try await client.call(
                .POST, "/v1/generations", body: CreateGenerationRequest(model: model, alias: alias, version: version, input: input))
            print("generation \(created.id)")
            let done = try await Watch.follow(created.id, client: client)
            guard done.state == .succeeded else {
                throw CommandFailure("generation \(done.state.rawValue): \(done.error?.message ?? "no reason given")")
            }
            for (index, (name, output)) in done.output.sorted(by: { $0.key < $1.key }).enumerated() {
                let suffix = output.contentType == "video/mp4" ? "mp4" : "bin"
                let path = index == 0 ? (out ?? "\(done.id).\(suffix)") : "\(done.id)-\(name).\(suffix)"
                try await client.download("/v1/files/\(output.fileID)", to: URL(filePath: path))
                print("saved \(name) to \(path) (\(format(bytes: output.size)))")
            }
        }
    }
}

/// A live line for one generation until it ends.
enum Watch {
    static func follow(_ id: GenerationID, client: KilnAPIClient) async throws -> GenerationObject {
        let interactive = isatty(STDOUT_FILENO) == 1
        var last = ""
        while true {
            let generation: GenerationObject = try await client.call(.GET, "/v1/generations/\(id)")
            let line = describe(generation)
            if line != last {
                if interactive {
                    FileHandle.standardOutput.write(Data(("\r\u{1B}[2K" + line).utf8))
                } else {
                    print(line)
                }
                last = line
            }
            if generation.state.isFinal {
                if interactive { print("") }
                return generation
            }
            try await Task.sleep(for: .milliseconds(400))
        }
    }

    static func describe(_ generation: GenerationObject) -> String {
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
            let query = "?limit=\(limit)" + (state.map { "&state=\($0)" } ?? "")
            let list: GenerationList = try await reporting { try await connection.client(.user).call(.GET, "/v1/generations\(query)") }
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
            let generation: GenerationObject = try await reporting { try await connection.client(.user).call(.GET, "/v1/generations/\(id)") }
            let encoder = WireFormat.encoder()
            encoder.outputFormatting.insert(.prettyPrinted)
            print(String(decoding: try encoder.encode(generation), as: UTF8.self))
        }
    }

    struct WatchJob: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "watch", abstract: "Follow a generation until it ends.")
        @Argument var id: String
        @OptionGroup var connection: Connection

        func run() async throws {
            guard let generationID = GenerationID(rawValue: id) else { throw ValidationError("'\(id)' is not a generation id") }
            let done = try await reporting { try await Watch.follow(generationID, client: try connection.client(.user)) }
            if done.state != .succeeded { throw ExitCode(1) }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a queued or running generation.")
        @Argument var id: String
        @OptionGroup var connection: Connection

        func run() async throws {
            let generation: GenerationObject = try await reporting { try await connection.client(.user).call(.POST, "/v1/generations/\(id)/cancel") }
            print("\(generation.id) \(generation.state.rawValue)")
        }
    }
}
