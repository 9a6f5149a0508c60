import Crypto
import Foundation
import KilnCore

/// Writes a folder as a POSIX ustar archive that depends on the folder's content alone: entries
/// sorted by path, times zero, owners root, modes reduced to 0644 or 0755 (files) and 0755
/// (folders). The same folder gives the same bytes, hence the same digest, on any machine.
public enum ReproducibleTar {
    public struct Result: Sendable, Hashable {
        public var digest: Digest
        public var size: Int64
        public var entries: Int
    }

    /// Archives `folder` into `archive`, hashing as it writes.
    ///
    /// - Parameter include: decides for each path (relative, `/`-separated; folders end in `/`)
    ///   whether it belongs in the archive; a folder left out is not descended into.
    /// - Throws: ``KilnError`` naming a path that cannot be archived (a link pointing outside the
    ///   folder, a special file, a path too long for ustar).
    public static func write(folder: URL, to archive: URL, include: (String) -> Bool = { _ in true }) throws -> Result {
        let entries = try collect(folder: folder, include: include)
        FileManager.default.createFile(atPath: archive.path, contents: nil)
        let handle = try FileHandle(forWritingTo: archive)
        defer { try? handle.close() }
        var writer = HashingWriter(handle: handle)
        for entry in entries {
            try writer.write(try header(for: entry))
            guard entry.kind == .file else { continue }
            let input = try FileHandle(forReadingFrom: entry.url)
            defer { try? input.close() }
            var written: Int64 = 0
            while let chunk = try input.read(upToCount: 1 << 20), !chunk.isEmpty {
                written += Int64(chunk.count)
                try writer.write(chunk)
            }
            guard written == entry.size else {
                throw KilnError(.conflict, "'\(entry.path)' changed while it was being archived")
            }
            let padding = (512 - Int(written % 512)) % 512
            if padding > 0 { try writer.write(Data(count: padding)) }
        }
        try writer.write(Data(count: 1024))
        return Result(digest: Digest(hex: writer.hasher.finalize().hexString)!, size: writer.written, entries: entries.count)
    }

    struct Entry {
        enum Kind { case file, directory, symlink }
        var path: String
        var kind: Kind
        var url: URL
        var size: Int64
        var executable: Bool
        var linkTarget: String?
    }

    static func collect(folder: URL, include: (String) -> Bool) throws -> [Entry] {
        var result: [Entry] = []
        let manager = FileManager.default
        func walk(_ directory: URL, prefix: String) throws {
            let names = try manager.contentsOfDirectory(atPath: directory.path).sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
            for name in names {
                let url = directory.appending(path: name)
                let path = prefix + name
                let attributes = try manager.attributesOfItem(atPath: url.path)
                let type = attributes[.type] as? FileAttributeType
                switch type {
                case .typeDirectory:
                    guard include(path + "/") else { continue }
                    result.append(Entry(path: path + "/", kind: .directory, url: url, size: 0, executable: true, linkTarget: nil))
                    try walk(url, prefix: path + "/")
                case .typeRegular:
                    guard include(path) else { continue }
                    let permissions = (attributes[.posixPermissions] as? NSNumber)?.intValue ?? 0o644
                    let size = (attributes[.size] as? NSNumber)?.int64Value ?? 0
                    result.append(Entry(path: path, kind: .file, url: url, size: size, executable: permissions & 0o111 != 0, linkTarget: nil))
                case .typeSymbolicLink:
                    guard include(path) else { continue }
                    let target = try manager.destinationOfSymbolicLink(atPath: url.path)
                    guard LinkCheck.staysInside(link: path, target: target) else {
                        throw KilnError(.invalidInput, "'\(path)' is a link to '\(target)', outside the folder")
                    }
                    result.append(Entry(path: path, kind: .symlink, url: url, size: 0, executable: false, linkTarget: target))
                default:
                    throw KilnError(.invalidInput, "'\(path)' is not a file, folder or link and cannot be archived")
                }
            }
        }
        try walk(folder, prefix: "")
        // Lexically inside is not enough: a target may pass through another link of the folder.
        for entry in result where entry.kind == .symlink {
            guard try LinkCheck.resolvesInside(link: entry.path, root: folder) else {
                throw KilnError(.invalidInput, "'\(entry.path)' is a link to '\(entry.linkTarget ?? "")', which leads outside the folder through other links")
            }
        }
        return result
    }

    static func header(for entry: Entry) throws -> Data {
        var block = [UInt8](repeating: 0, count: 512)
        let pathBytes = Array(entry.path.utf8)
        var name = pathBytes
        var prefix: [UInt8] = []
        if pathBytes.count > 100 {
            // Split at a '/' so that the prefix fits 155 bytes and the name 100.
            let slashes = pathBytes.indices.filter { pathBytes[$0] == UInt8(ascii: "/") && $0 < pathBytes.count - 1 }
            guard let split = slashes.last(where: { $0 <= 155 && pathBytes.count - $0 - 1 <= 100 }) else {
                throw KilnError(.invalidInput, "'\(entry.path)' is too long to archive (ustar allows 255 bytes)")
            }
            prefix = Array(pathBytes[..<split])
            name = Array(pathBytes[(split + 1)...])
        }
        func put(_ bytes: [UInt8], at offset: Int) {
            for (index, byte) in bytes.enumerated() { block[offset + index] = byte }
        }
        func octal(_ value: Int64, width: Int) -> [UInt8] {
            Array(String(format: "%0\(width - 1)llo", value).utf8) + [0]
        }
        put(name, at: 0)
        let mode: Int64 = entry.kind == .file && !entry.executable ? 0o644 : entry.kind == .symlink ? 0o777 : 0o755
        put(octal(mode, width: 8), at: 100)
        put(octal(0, width: 8), at: 108)
        put(octal(0, width: 8), at: 116)
        if entry.size < 0o77777777777 {
            put(octal(entry.size, width: 12), at: 124)
        } else {
            // Base-256 for sizes of 8 GiB and more.
            var size = UInt64(entry.size)
            for index in stride(from: 135, through: 125, by: -1) {
                block[index] = UInt8(size & 0xff)
                size >>= 8
            }
            block[124] = 0x80
        }
        put(octal(0, width: 12), at: 136)
        put(Array(repeating: UInt8(ascii: " "), count: 8), at: 148)
        block[156] = switch entry.kind {
        case .file: UInt8(ascii: "0")
        case .directory: UInt8(ascii: "5")
        case .symlink: UInt8(ascii: "2")
        }
        if let target = entry.linkTarget {
            let bytes = Array(target.utf8)
            guard bytes.count <= 100 else { throw KilnError(.invalidInput, "the link target of '\(entry.path)' is too long to archive") }
            put(bytes, at: 157)
        }
        put(Array("ustar".utf8) + [0], at: 257)
        put(Array("00".utf8), at: 263)
        put(prefix, at: 345)
        let checksum = block.reduce(0) { $0 + Int64($1) }
        put(Array(String(format: "%06llo", checksum).utf8) + [0, UInt8(ascii: " ")], at: 148)
        return Data(block)
    }
}

/// Writes through a file handle while hashing and counting.
struct HashingWriter {
    let handle: FileHandle
    var hasher = SHA256()
    var written: Int64 = 0

    mutating func write(_ data: Data) throws {
        hasher.update(data: data)
        written += Int64(data.count)
        try handle.write(contentsOf: data)
    }
}

/// Whether a symbolic link's target, resolved from the link's folder, stays inside the root.
enum LinkCheck {
    /// Whether the link at `link` (relative to `root`) resolves inside `root` in the tree as it
    /// stands: every link on the way followed (at most 40), as the kernel would.
    /// - Throws: `.invalidInput` on a loop of links.
    static func resolvesInside(link: String, root: URL) throws -> Bool {
        var followed = 0
        var resolved: [String] = []
        var pending = link.split(separator: "/").map(String.init)
        while !pending.isEmpty {
            let part = pending.removeFirst()
            switch part {
            case ".", "": continue
            case "..":
                guard !resolved.isEmpty else { return false }
                resolved.removeLast()
            default:
                resolved.append(part)
                let path = root.appending(path: resolved.joined(separator: "/")).path
                var info = stat()
                // The link itself is followed, and every link its target passes through.
                guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFLNK else { continue }
                followed += 1
                guard followed <= 40 else { throw KilnError(.invalidInput, "'\(link)' is a loop of links") }
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path), !target.hasPrefix("/") else {
                    return false
                }
                resolved.removeLast()
                pending = target.split(separator: "/", omittingEmptySubsequences: true).map(String.init) + pending
            }
        }
        return true
    }

    /// The first link under `root` that leads outside it through the tree as it stands; nil when
    /// none does.
    static func firstEscape(in root: URL) throws -> String? {
        let manager = FileManager.default
        func walk(_ prefix: String) throws -> String? {
            let folder = prefix.isEmpty ? root : root.appending(path: prefix)
            for name in try manager.contentsOfDirectory(atPath: folder.path).sorted() {
                let path = prefix.isEmpty ? name : prefix + "/" + name
                var info = stat()
                guard lstat(root.appending(path: path).path, &info) == 0 else { continue }
                switch info.st_mode & S_IFMT {
                case S_IFLNK: if try !resolvesInside(link: path, root: root) { return path }
                case S_IFDIR: if let found = try walk(path) { return found }
                default: continue
                }
            }
            return nil
        }
        return try walk("")
    }

    /// The paths a link's target passes through, resolved lexically from the link's folder.
    static func resolvedPrefixes(link: String, target: String) -> [String] {
        var components = link.split(separator: "/").dropLast().map(String.init)
        var prefixes: [String] = []
        for part in target.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..": if !components.isEmpty { components.removeLast() }
            default: components.append(String(part))
            }
            prefixes.append(components.joined(separator: "/"))
        }
        return prefixes
    }

    static func staysInside(link: String, target: String) -> Bool {
        guard !target.isEmpty, !target.hasPrefix("/") else { return false }
        var components = link.split(separator: "/").dropLast().map(String.init)
        for part in target.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..":
                guard !components.isEmpty else { return false }
                components.removeLast()
            default: components.append(String(part))
            }
        }
        return true
    }
}
