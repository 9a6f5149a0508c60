import Foundation

/// An identifier with a type prefix (`gen_`, `file_`, `acct_`, `wrk_`, `key_`), as DESIGN §3 asks.
///
/// The body is 24 characters of Crockford base32 taken from 120 random bits, so ids are unguessable
/// and never collide in practice. Parsing checks the prefix and the alphabet, so an id of one kind
/// can never be mistaken for another.
public protocol PrefixedID: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible, Comparable
where RawValue == String {
    static var prefix: String { get }
    init(unchecked rawValue: String)
}

extension PrefixedID {
    public init?(rawValue: String) {
        guard Self.isValid(rawValue) else { return nil }
        self.init(unchecked: rawValue)
    }

    /// A fresh random identifier.
    public static func random() -> Self {
        var generator = SystemRandomNumberGenerator()
        return random(using: &generator)
    }

    /// Two draws of 64 bits, five bits a character: the system generator makes a system call a draw,
    /// and a submission makes an id.
    public static func random<G: RandomNumberGenerator>(using generator: inout G) -> Self {
        let (high, low) = (generator.next(), generator.next())
        var body: [Character] = []
        body.reserveCapacity(24)
        for index in 0..<24 {
            let bits = index < 12 ? high >> (index * 5) : low >> ((index - 12) * 5)
            body.append(Base32.alphabet[Int(bits & 31)])
        }
        return Self(unchecked: prefix + String(body))
    }

    public static func isValid(_ raw: String) -> Bool {
        guard raw.hasPrefix(prefix) else { return false }
        let body = raw.dropFirst(prefix.count)
        return !body.isEmpty && body.count <= 64 && body.allSatisfy { Base32.alphabet.contains($0) }
    }

    public var description: String { rawValue }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let raw = try container.decode(String.self)
        guard let id = Self(rawValue: raw) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "'\(raw)' is not a valid \(Self.prefix)… identifier")
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

enum Base32 {
    static let alphabet: [Character] = Array("0123456789abcdefghjkmnpqrstvwxyz")
}

public struct GenerationID: PrefixedID {
    public static let prefix = "gen_"
    public let rawValue: String
    public init(unchecked rawValue: String) { self.rawValue = rawValue }
}

public struct FileID: PrefixedID {
    public static let prefix = "file_"
    public let rawValue: String
    public init(unchecked rawValue: String) { self.rawValue = rawValue }
}

public struct AccountID: PrefixedID {
    public static let prefix = "acct_"
    public let rawValue: String
    public init(unchecked rawValue: String) { self.rawValue = rawValue }
}

public struct WorkerID: PrefixedID {
    public static let prefix = "wrk_"
    public let rawValue: String
    public init(unchecked rawValue: String) { self.rawValue = rawValue }
}

public struct KeyID: PrefixedID {
    public static let prefix = "key_"
    public let rawValue: String
    public init(unchecked rawValue: String) { self.rawValue = rawValue }
}
