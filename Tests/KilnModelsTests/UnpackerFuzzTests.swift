import Foundation
import KilnCore
import KilnModels
import Testing

/// How many cases a fuzz test runs and from which seed: a fixed seed and a small count by default
/// (every run of the suite replays the same cases), more by hand:
///
///     KILN_FUZZ_ITERATIONS=100000 KILN_FUZZ_SEED=$RANDOM swift test --filter Fuzz
enum Fuzz {
    static var iterations: Int { ProcessInfo.processInfo.environment["KILN_FUZZ_ITERATIONS"].flatMap(Int.init) ?? 300 }
    static var seed: UInt64 { ProcessInfo.processInfo.environment["KILN_FUZZ_SEED"].flatMap(UInt64.init) ?? 1 }
}

extension SplitMix64 {
    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }
    mutating func pick<T>(_ choices: [T]) -> T { choices[below(choices.count)] }
    mutating func chance(_ probability: Double) -> Bool { unit() < probability }
}

/// Random and mutated archives against the unpacker. Whatever the archive, the unpacker either
/// refuses it with a ``KilnError`` and leaves nothing behind, or produces a folder in which every
/// entry is a plain file, a folder or a link that resolves inside it; nothing outside it changes.
@Suite("Fuzz: the archive unpacker")
struct UnpackerFuzzTests {
    static let segments = ["a", "b", "c", "..", ".", "", "link", "x y", "ü", "d/e", String(repeating: "n", count: 120)]

    static func path(_ rng: inout SplitMix64) -> String {
        var parts: [String] = []
        for _ in 0...rng.below(4) { parts.append(rng.pick(segments)) }
        let joined = (rng.chance(0.1) ? "/" : "") + parts.joined(separator: "/")
        // A tar header holds 100 bytes of name and of link target.
        return String(decoding: joined.utf8.prefix(100), as: UTF8.self)
    }

    /// An archive of random entries: files, folders, links (relative, absolute, through each
    /// other), hard links, special files and unknown types, at random paths.
    static func randomArchive(_ rng: inout SplitMix64) -> Data {
        var tar = HostileTar()
        for _ in 0...rng.below(8) {
            let type = rng.pick([Character("0"), "0", "0", "5", "2", "2", "2", "1", "3", "4", "6", "7", "g", "x", "L", "K", "\0"])
            let link = type == "2" || type == "1" ? path(&rng) : ""
            let content = type == "0" ? String(repeating: "z", count: rng.below(1_200)) : ""
            tar.add(path(&rng), type: type, content: content, link: link)
        }
        return tar.finished()
    }

    /// A well-formed archive (packed from a folder with links inside it), then damaged: bytes
    /// flipped, the end cut off, a block repeated or a header's fields overwritten.
    static func mutatedArchive(_ rng: inout SplitMix64, base: Data) -> Data {
        var bytes = [UInt8](base)
        for _ in 0...rng.below(4) {
            switch rng.below(4) {
            case 0:
                for _ in 0...rng.below(16) { bytes[rng.below(bytes.count)] = UInt8(truncatingIfNeeded: rng.next()) }
            case 1:
                bytes.removeLast(rng.below(bytes.count))
                if bytes.isEmpty { bytes = [0] }
            case 2:
                let block = rng.below(max(bytes.count / 512, 1)) * 512
                let end = min(block + 512, bytes.count)
                bytes.insert(contentsOf: bytes[block..<end], at: block)
            default:
                // A header field (name, mode, size, type, link name) set to random digits or text.
                let block = rng.below(max(bytes.count / 512, 1)) * 512
                let field = rng.pick([(0, 100), (100, 8), (124, 12), (156, 1), (157, 100), (345, 155)])
                for offset in 0..<field.1 where block + field.0 + offset < bytes.count {
                    bytes[block + field.0 + offset] = rng.pick(Array("01234567./ ..a7\0".utf8))
                }
            }
        }
        return Data(bytes)
    }

    static func packedBase() throws -> Data {
        let folder = try makeModelFolder()
        let manager = FileManager.default
        try manager.createSymbolicLink(atPath: folder.appending(path: "lib/alias.py").path, withDestinationPath: "util.py")
        try manager.createSymbolicLink(atPath: folder.appending(path: "weights/current").path, withDestinationPath: "tokenizer")
        let archive = try scratch().appending(path: "base.tar")
        _ = try ReproducibleTar.write(folder: folder, to: archive)
        return try Data(contentsOf: archive)
    }

    @Test("random and mutated archives: refused cleanly, or unpacked with nothing outside the folder")
    func archives() throws {
        var rng = SplitMix64(seed: Fuzz.seed)
        let base = try Self.packedBase()
        var (refused, unpacked) = (0, 0)
        for iteration in 0..<Fuzz.iterations {
            let data = rng.chance(0.5) ? Self.randomArchive(&rng) : Self.mutatedArchive(&rng, base: base)
            let root = try scratch()
            let outside = root.appending(path: "outside")
            try write("untouched", to: outside.appending(path: "sentinel.txt"))
            let archive = root.appending(path: "layer.tar")
            try data.write(to: archive)
            let destination = root.appending(path: "out")
            let context = "iteration \(iteration), seed \(Fuzz.seed)"
            do {
                try SafeUnpacker.unpack(archive, into: destination)
                unpacked += 1
                try Self.expectContained(destination, context)
            } catch let error as KilnError {
                refused += 1
                #expect(!error.message.isEmpty, "\(context)")
                #expect(!FileManager.default.fileExists(atPath: destination.path), "\(context): a refused archive left its folder")
            } catch {
                Issue.record("\(context): not a KilnError: \(error)")
            }
            let left = try FileManager.default.contentsOfDirectory(atPath: root.path).sorted()
            #expect(left == ["layer.tar", "outside"] || left == ["layer.tar", "out", "outside"], "\(context): \(left)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: outside.path) == ["sentinel.txt"], "\(context)")
            #expect(try String(contentsOf: outside.appending(path: "sentinel.txt"), encoding: .utf8) == "untouched", "\(context)")
            try? FileManager.default.removeItem(at: root)
        }
        #expect(refused > 0 && unpacked > 0, "the cases reach both outcomes (\(refused) refused, \(unpacked) unpacked)")
    }

    /// Every entry under `folder` is a plain file with one link, a folder, or a symbolic link whose
    /// target, resolved through every link on its way, is inside `folder`.
    static func expectContained(_ folder: URL, _ context: String) throws {
        let root = folder.resolvingSymlinksInPath().path
        let manager = FileManager.default
        for relative in try manager.subpathsOfDirectory(atPath: folder.path) {
            let path = folder.appending(path: relative).path
            var info = stat()
            #expect(lstat(path, &info) == 0, "\(context): \(relative)")
            switch info.st_mode & S_IFMT {
            case S_IFREG:
                #expect(info.st_nlink == 1, "\(context): '\(relative)' is hard-linked")
            case S_IFDIR:
                break
            case S_IFLNK:
                var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                if realpath(path, &buffer) != nil {
                    let resolved = String(cString: buffer)
                    #expect(resolved == root || resolved.hasPrefix(root + "/"), "\(context): '\(relative)' leads to \(resolved)")
                } else {
                    // A dangling link: its target, read as written, must still be inside.
                    let target = try manager.destinationOfSymbolicLink(atPath: path)
                    var depth = relative.split(separator: "/").count - 1
                    var escapes = target.hasPrefix("/")
                    for part in target.split(separator: "/") where part != "." {
                        depth += part == ".." ? -1 : 1
                        escapes = escapes || depth < 0
                    }
                    #expect(!escapes, "\(context): '\(relative)' points at \(target)")
                }
            default:
                Issue.record("\(context): '\(relative)' is a special file")
            }
        }
    }
}
