import Crypto
import Foundation
import KilnCore

/// Unpacks a layer archive without letting any entry escape its folder (DESIGN §8): absolute paths,
/// `..` components, links pointing outside, entries written through a link, hard links and special
/// files are all refused before anything is written. The archive's digest is checked while it is
/// read, and the result appears atomically: in a temporary folder renamed into place at the end.
public enum SafeUnpacker {
    /// Unpacks `archive` into `destination`, which must not exist yet.
    ///
    /// - Parameter expected: the digest the archive must have; checked before the folder is moved
    ///   into place.
    /// - Throws: ``KilnError`` (`.invalidInput`) naming the offending entry, or a digest mismatch.
    public static func unpack(_ archive: URL, into destination: URL, expected: Digest? = nil) throws {
        let manager = FileManager.default
        let staging = destination.deletingLastPathComponent().appending(path: ".unpack-\(UUID().uuidString)")
        try manager.createDirectory(at: staging, withIntermediateDirectories: true)
        var moved = false
        defer { if !moved { try? manager.removeItem(at: staging) } }

        let input = try FileHandle(forReadingFrom: archive)
        defer { try? input.close() }
        var reader = HashingReader(handle: input)
        var links = Set<String>()
        while true {
            let header = try reader.read(512)
            guard header.count == 512 else { throw KilnError(.invalidInput, "the archive ends in the middle of a header") }
            if header.allSatisfy({ $0 == 0 }) { break }
            let entry = try parseHeader(header)
            try check(entry, links: links)
            do {
                try write(entry, at: staging.appending(path: entry.path), from: &reader)
            } catch let error as KilnError {
                throw error
            } catch {
                // A path that an earlier entry took (the same name twice, a file where a folder
                // goes): refused, never overwritten.
                throw KilnError(.invalidInput, "archive entry '\(entry.path)' collides with an earlier entry (\(Self.reason(error)))")
            }
            if entry.type == UInt8(ascii: "2") { links.insert(entry.path) }
        }
        // Each link checked when it came was inside given the links before it; a later link on its
        // way can still lead it out. Resolved now against the whole tree, before it is in place.
        if let escape = try LinkCheck.firstEscape(in: staging) {
            throw KilnError(.invalidInput, "archive entry '\(escape)' is a link that leads outside its folder through other links")
        }
        // The rest of the file (the second end block, padding) counts toward the digest too.
        while try !reader.read(1 << 20).isEmpty {}
        if let expected {
            let actual = Digest(hex: reader.hasher.finalize().hexString)!
            guard actual == expected else {
                throw KilnError(.invalidInput, "the archive's digest is \(actual), not the expected \(expected)")
            }
        }
        guard rename(staging.path, destination.path) == 0 else {
            throw KilnError(.conflict, "cannot move the unpacked layer into place at '\(destination.lastPathComponent)' (errno \(errno))")
        }
        moved = true
    }

    /// Writes one checked entry: a folder, a link, or a file and its bytes (read from `reader`).
    static func write(_ entry: Header, at target: URL, from reader: inout HashingReader) throws {
        let manager = FileManager.default
        var existing = stat()
        if entry.type != UInt8(ascii: "5"), lstat(target.path, &existing) == 0 {
            throw CocoaError(.fileWriteFileExists)  // a second entry of the same name
        }
        switch entry.type {
        case UInt8(ascii: "5"):
            try manager.createDirectory(at: target, withIntermediateDirectories: true)
        case UInt8(ascii: "2"):
            try manager.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
            try manager.createSymbolicLink(atPath: target.path, withDestinationPath: entry.linkTarget)
        default:
            try manager.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
            guard manager.createFile(atPath: target.path, contents: nil, attributes: [.posixPermissions: entry.mode & 0o755]) else {
                throw CocoaError(.fileWriteFileExists)
            }
            let output = try FileHandle(forWritingTo: target)
            defer { try? output.close() }
            var remaining = entry.size
            while remaining > 0 {
                let chunk = try reader.read(Int(min(remaining, 1 << 20)))
                guard !chunk.isEmpty else { throw KilnError(.invalidInput, "the archive ends inside '\(entry.path)'") }
                try output.write(contentsOf: chunk)
                remaining -= Int64(chunk.count)
            }
            let padding = Int((512 - entry.size % 512) % 512)
            if padding > 0 { _ = try reader.read(padding) }
        }
    }

    /// What the file system said, in a few words: `File exists`, `Not a directory`.
    static func reason(_ error: any Error) -> String {
        let underlying = (error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError
        return underlying?.localizedDescription ?? (error as NSError).localizedDescription
    }

    struct Header {
        var path: String
        var type: UInt8
        var mode: Int
        var size: Int64
        var linkTarget: String
    }

    static func parseHeader(_ block: [UInt8]) throws -> Header {
        func string(_ range: Range<Int>) -> String {
            let bytes = block[range].prefix { $0 != 0 }
            return String(decoding: bytes, as: UTF8.self)
        }
        func octal(_ range: Range<Int>) -> Int64? {
            let text = string(range).trimmingCharacters(in: CharacterSet(charactersIn: " "))
            return text.isEmpty ? 0 : Int64(text, radix: 8)
        }
        var stored = block
        for index in 148..<156 { stored[index] = UInt8(ascii: " ") }
        guard let checksum = octal(148..<156), checksum == stored.reduce(0, { $0 + Int64($1) }) else {
            throw KilnError(.invalidInput, "an archive header has a bad checksum")
        }
        var size: Int64
        if block[124] & 0x80 != 0 {
            size = 0
            for index in 125..<136 { size = size << 8 | Int64(block[index]) }
        } else {
            guard let value = octal(124..<136) else { throw KilnError(.invalidInput, "an archive header has a bad size") }
            size = value
        }
        let name = string(0..<100)
        let prefix = string(345..<500)
        var path = prefix.isEmpty ? name : prefix + "/" + name
        if path.hasSuffix("/") { path.removeLast() }
        return Header(path: path, type: block[156], mode: Int(octal(100..<108) ?? 0o644), size: size, linkTarget: string(157..<257))
    }

    static func check(_ entry: Header, links: Set<String>) throws {
        guard RelativePath.isSafe(entry.path) else {
            throw KilnError(.invalidInput, "archive entry '\(entry.path)' escapes its folder (absolute path or '..')")
        }
        switch entry.type {
        case UInt8(ascii: "0"), 0, UInt8(ascii: "5"): break
        case UInt8(ascii: "2"):
            guard LinkCheck.staysInside(link: entry.path, target: entry.linkTarget) else {
                throw KilnError(.invalidInput, "archive entry '\(entry.path)' is a link to '\(entry.linkTarget)', outside its folder")
            }
            // The lexical check holds only if the target does not pass through an earlier link.
            if let through = LinkCheck.resolvedPrefixes(link: entry.path, target: entry.linkTarget).first(where: links.contains) {
                throw KilnError(.invalidInput, "archive entry '\(entry.path)' is a link through the link '\(through)'")
            }
        case UInt8(ascii: "1"):
            throw KilnError(.invalidInput, "archive entry '\(entry.path)' is a hard link; layers may not contain them")
        default:
            throw KilnError(.invalidInput, "archive entry '\(entry.path)' is of a type layers may not contain (\(Character(UnicodeScalar(entry.type))))")
        }
        // Nothing may be written through a link extracted earlier.
        var prefix = ""
        for component in entry.path.split(separator: "/").dropLast() {
            prefix += prefix.isEmpty ? String(component) : "/" + component
            if links.contains(prefix) {
                throw KilnError(.invalidInput, "archive entry '\(entry.path)' would be written through the link '\(prefix)'")
            }
        }
        if links.contains(entry.path) {
            throw KilnError(.invalidInput, "archive entry '\(entry.path)' would replace a link")
        }
    }
}

/// Reads a file handle in order while hashing everything read.
struct HashingReader {
    let handle: FileHandle
    var hasher = SHA256()

    /// Up to `count` bytes; fewer only at the end of the file.
    mutating func read(_ count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        while result.count < count, let data = try handle.read(upToCount: count - result.count), !data.isEmpty {
            hasher.update(data: data)
            result.append(contentsOf: data)
        }
        return result
    }
}
