import Foundation
import KilnCore
import KilnModels
import Testing

/// A scratch folder per test.
func scratch() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appending(path: "kiln-models-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

func write(_ text: String, to url: URL) throws {
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    try Data(text.utf8).write(to: url)
}

/// A small model folder: code, a requirements-free environment folder, two checkpoint files.
func makeModelFolder(code: String = "class Predictor: pass\n", weights: String = "weights-v1") throws -> URL {
    let folder = try scratch()
    try write("name: demo\nentrypoint: predict.py:Predictor\n", to: folder.appending(path: "kiln.yaml"))
    try write(code, to: folder.appending(path: "predict.py"))
    try write("helpers\n", to: folder.appending(path: "lib/util.py"))
    try write("cache\n", to: folder.appending(path: "__pycache__/predict.cpython-311.pyc"))
    try write(weights, to: folder.appending(path: "weights/model.bin"))
    try write("tokenizer", to: folder.appending(path: "weights/tokenizer/vocab.txt"))
    return folder
}

let spec = ModelFolderSpec(name: "demo", entrypoint: "predict.py:Predictor", accelerators: ["cpu"], gpus: 0)

@Suite("Model format")
struct ModelFormatTests {
    @Test("packing the same folder twice, anywhere, gives the same digests and version id")
    func reproducible() throws {
        let first = try makeModelFolder()
        let second = try makeModelFolder()
        // Different times and permissions bits that do not matter must not change anything.
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: 0)], ofItemAtPath: second.appending(path: "predict.py").path)
        let a = try ModelPackager.pack(folder: first, spec: spec, environments: [:], workspace: try scratch())
        let b = try ModelPackager.pack(folder: second, spec: spec, environments: [:], workspace: try scratch())
        #expect(a.id == b.id)
        #expect(a.manifest == b.manifest)
        #expect(a.manifest.layers.map(\.kind) == [.code, .weights, .weights])
        #expect(a.manifest.layers.compactMap(\.path) == ["model.bin", "tokenizer/vocab.txt"])
    }

    @Test("a change to the code changes only the code layer; weights keep their digests")
    func sharedLayers() throws {
        let v1 = try ModelPackager.pack(folder: try makeModelFolder(), spec: spec, environments: [:], workspace: try scratch())
        let v2 = try ModelPackager.pack(
            folder: try makeModelFolder(code: "class Predictor: # v2\n    pass\n"), spec: spec, environments: [:], workspace: try scratch())
        #expect(v1.id != v2.id)
        let changed = Set(v2.manifest.blobs).subtracting(v1.manifest.blobs)
        #expect(changed.count == 1)
        #expect(changed.first == v2.manifest.layers.first { $0.kind == .code }?.digest)
    }

    @Test("the code layer leaves out weights, hidden files and Python caches")
    func codeLayerContents() throws {
        let folder = try makeModelFolder()
        try write("secret", to: folder.appending(path: ".env"))
        let packed = try ModelPackager.pack(folder: folder, spec: spec, environments: [:], workspace: try scratch())
        let code = try #require(packed.manifest.layers.first { $0.kind == .code })
        let out = try scratch().appending(path: "code")
        try SafeUnpacker.unpack(try #require(packed.files[code.digest]), into: out, expected: code.digest)
        let files = try FileManager.default.subpathsOfDirectory(atPath: out.path).sorted()
        #expect(files == ["kiln.yaml", "lib", "lib/util.py", "predict.py"])
        #expect(try String(contentsOf: out.appending(path: "predict.py"), encoding: .utf8) == "class Predictor: pass\n")
    }

    @Test("an environment folder becomes one layer per platform")
    func environments() throws {
        let env = try scratch()
        try write("print('numpy')", to: env.appending(path: "numpy/__init__.py"))
        let packed = try ModelPackager.pack(
            folder: try makeModelFolder(), spec: spec, environments: ["cpu": env], workspace: try scratch())
        #expect(packed.manifest.environment(for: "cpu") != nil)
        #expect(packed.manifest.environment(for: "cuda12-x86_64") == nil)
    }

    @Test("the version id is the digest of the canonical manifest, whatever the layer order given")
    func canonicalManifest() throws {
        let code = ModelManifest.Layer(kind: .code, digest: Digest(hex: String(repeating: "a", count: 64))!, size: 1)
        let weights = ModelManifest.Layer(kind: .weights, digest: Digest(hex: String(repeating: "b", count: 64))!, size: 2, path: "w.bin")
        let one = ModelManifest(model: "m", entrypoint: "p.py:P", accelerators: ["h100", "cpu"], gpus: 1, inputs: nil, layers: [weights, code])
        let two = ModelManifest(model: "m", entrypoint: "p.py:P", accelerators: ["cpu", "h100"], gpus: 1, inputs: nil, layers: [code, weights])
        #expect(try one.versionID() == two.versionID())
        let json = String(decoding: try one.canonicalJSON(), as: UTF8.self)
        #expect(json.hasPrefix(#"{"accelerators":["cpu","h100"],"entrypoint":"p.py:P","gpus":1,"layers":[{"#))
        var other = two
        other.gpus = 2
        #expect(try other.versionID() != one.versionID())
    }

    @Test("a manifest that contradicts itself is refused with the field named")
    func manifestValidation() throws {
        let code = ModelManifest.Layer(kind: .code, digest: Digest(hex: String(repeating: "a", count: 64))!, size: 1)
        let escaping = ModelManifest.Layer(kind: .weights, digest: Digest(hex: String(repeating: "b", count: 64))!, size: 1, path: "../x")
        let bad = ModelManifest(model: "m", entrypoint: "p.py:P", accelerators: ["cpu"], gpus: 0, inputs: nil, layers: [code, escaping])
        #expect(throws: KilnError.self) { try bad.validate() }
        let noCode = ModelManifest(model: "m", entrypoint: "p.py:P", accelerators: ["cpu"], gpus: 0, inputs: nil, layers: [])
        #expect(throws: KilnError.self) { try noCode.validate() }
        let entry = ModelManifest(model: "m", entrypoint: "/etc/p.py:P", accelerators: ["cpu"], gpus: 0, inputs: nil, layers: [code])
        #expect(throws: KilnError.self) { try entry.validate() }
    }
}

/// Builds raw tar archives entry by entry, including the hostile ones a packer would never write.
struct HostileTar {
    var data = Data()

    mutating func add(_ path: String, type: Character = "0", content: String = "", link: String = "") {
        var block = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: [UInt8], _ offset: Int) { for (i, b) in bytes.enumerated() { block[offset + i] = b } }
        put(Array(path.utf8), 0)
        put(Array("0000644\0".utf8), 100)
        put(Array("0000000\0".utf8), 108)
        put(Array("0000000\0".utf8), 116)
        put(Array(String(format: "%011o\0", content.utf8.count).utf8), 124)
        put(Array("00000000000\0".utf8), 136)
        put(Array(repeating: UInt8(ascii: " "), count: 8), 148)
        block[156] = UInt8(String(type).utf8.first!)
        put(Array(link.utf8), 157)
        put(Array("ustar\0".utf8), 257)
        put(Array("00".utf8), 263)
        let sum = block.reduce(0) { $0 + Int($1) }
        put(Array(String(format: "%06o\0 ", sum).utf8), 148)
        data.append(contentsOf: block)
        var body = Array(content.utf8)
        body += [UInt8](repeating: 0, count: (512 - body.count % 512) % 512)
        data.append(contentsOf: body)
    }

    func finished() -> Data { data + Data(count: 1024) }
}

@Suite("Unpacking without escapes")
struct SafeUnpackerTests {
    func unpack(_ tar: HostileTar) throws -> URL {
        let folder = try scratch()
        let archive = folder.appending(path: "layer.tar")
        try tar.finished().write(to: archive)
        let out = folder.appending(path: "out")
        try SafeUnpacker.unpack(archive, into: out)
        return out
    }

    @Test(
        "entries that escape their folder are refused and nothing is left behind",
        arguments: [
            ("../evil.txt", Character("0"), ""), ("/etc/evil", "0", ""), ("a/../../evil", "0", ""),
            ("link", "2", "../../outside"), ("abs", "2", "/etc/passwd"), ("hard", "1", "x"), ("dev", "3", ""),
        ] as [(String, Character, String)])
    func escapes(path: String, type: Character, link: String) throws {
        var tar = HostileTar()
        tar.add("ok.txt", content: "fine")
        tar.add(path, type: type, content: type == "0" ? "evil" : "", link: link)
        let folder = try scratch()
        let archive = folder.appending(path: "layer.tar")
        try tar.finished().write(to: archive)
        let out = folder.appending(path: "out")
        #expect(throws: KilnError.self) { try SafeUnpacker.unpack(archive, into: out) }
        #expect(!FileManager.default.fileExists(atPath: out.path))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: folder.path)
        #expect(leftovers == ["layer.tar"], "\(leftovers)")
    }

    @Test("a link that leads out through a link coming later in the archive is refused, and nothing is left behind")
    func escapeThroughLaterLink() throws {
        // `up` is dir/l/..: lexically `dir`. But dir/l, which comes later, is `..`: the root; so up
        // is the root's parent.
        var tar = HostileTar()
        tar.add("dir", type: "5")
        tar.add("up", type: "2", link: "dir/l/..")
        tar.add("dir/l", type: "2", link: "..")
        let folder = try scratch()
        let archive = folder.appending(path: "layer.tar")
        try tar.finished().write(to: archive)
        let out = folder.appending(path: "out")
        #expect {
            try SafeUnpacker.unpack(archive, into: out)
        } throws: { error in
            (error as? KilnError)?.message.contains("'up' is a link that leads outside its folder") == true
        }
        #expect(!FileManager.default.fileExists(atPath: out.path))
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["layer.tar"])
    }

    @Test("the packer refuses a link that leads out through another link, and a loop of links")
    func packerResolvesLinks() throws {
        let folder = try makeModelFolder()
        try FileManager.default.createDirectory(at: folder.appending(path: "dir"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: folder.appending(path: "dir/l").path, withDestinationPath: "..")
        try FileManager.default.createSymbolicLink(atPath: folder.appending(path: "up").path, withDestinationPath: "dir/l/..")
        #expect {
            _ = try ModelPackager.pack(folder: folder, spec: spec, environments: [:], workspace: try scratch())
        } throws: { error in
            (error as? KilnError)?.message.contains("'up' is a link to 'dir/l/..', which leads outside the folder") == true
        }
        // dir/l alone stays inside.
        try FileManager.default.removeItem(at: folder.appending(path: "up"))
        _ = try ModelPackager.pack(folder: folder, spec: spec, environments: [:], workspace: try scratch())
        try FileManager.default.createSymbolicLink(atPath: folder.appending(path: "a").path, withDestinationPath: "b")
        try FileManager.default.createSymbolicLink(atPath: folder.appending(path: "b").path, withDestinationPath: "a")
        #expect(throws: KilnError.self) { _ = try ModelPackager.pack(folder: folder, spec: spec, environments: [:], workspace: try scratch()) }
    }

    @Test("a file may not be written through a link, even one pointing inside")
    func writeThroughLink() throws {
        var tar = HostileTar()
        tar.add("dir", type: "5")
        tar.add("alias", type: "2", link: "dir")
        tar.add("alias/file.txt", content: "through the link")
        #expect(throws: KilnError.self) { try unpack(tar) }
    }

    @Test("an entry whose path an earlier one took is refused with a KilnError naming it, never overwritten",
          arguments: [("a", Character("0"), "a", Character("0")), ("a", "0", "a/b", "0"), ("l", "2", "l", "0"), ("d", "5", "d", "2")]
              as [(String, Character, String, Character)])
    func collisions(first: String, firstType: Character, second: String, secondType: Character) throws {
        var tar = HostileTar()
        tar.add(first, type: firstType, content: firstType == "0" ? "first" : "", link: firstType == "2" ? "x" : "")
        tar.add(second, type: secondType, content: secondType == "0" ? "second" : "", link: secondType == "2" ? "x" : "")
        let error = #expect(throws: KilnError.self) { try self.unpack(tar) }
        #expect(error?.code == .invalidInput)
        // (A file over a link is refused earlier, as written through a link.)
        #expect(error?.message.contains("'\(second)'") == true, "\(String(describing: error))")
    }

    @Test("a link that stays inside is kept")
    func insideLink() throws {
        var tar = HostileTar()
        tar.add("lib/real.py", content: "x = 1")
        tar.add("lib/alias.py", type: "2", link: "real.py")
        let out = try unpack(tar)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: out.appending(path: "lib/alias.py").path) == "real.py")
        #expect(try String(contentsOf: out.appending(path: "lib/alias.py"), encoding: .utf8) == "x = 1")
    }

    @Test("an archive whose bytes do not match the expected digest is refused")
    func digestMismatch() throws {
        var tar = HostileTar()
        tar.add("a.txt", content: "a")
        let folder = try scratch()
        let archive = folder.appending(path: "layer.tar")
        try tar.finished().write(to: archive)
        let wrong = Digest(hex: String(repeating: "0", count: 64))!
        #expect(throws: KilnError.self) { try SafeUnpacker.unpack(archive, into: folder.appending(path: "out"), expected: wrong) }
        #expect(!FileManager.default.fileExists(atPath: folder.appending(path: "out").path))
    }

    @Test("a packed folder unpacks to the same files, and packs again to the same digest")
    func roundTrip() throws {
        let folder = try makeModelFolder()
        let work = try scratch()
        let first = try ReproducibleTar.write(folder: folder, to: work.appending(path: "a.tar"))
        try SafeUnpacker.unpack(work.appending(path: "a.tar"), into: work.appending(path: "copy"), expected: first.digest)
        let second = try ReproducibleTar.write(folder: work.appending(path: "copy"), to: work.appending(path: "b.tar"))
        #expect(first.digest == second.digest)
        #expect(try String(contentsOf: work.appending(path: "copy/weights/model.bin"), encoding: .utf8) == "weights-v1")
    }
}
