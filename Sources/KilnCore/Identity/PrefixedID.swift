import Foundation

/// An identifier with a type prefix (`gen_`, `file_`, `acct_`, `wrk_`, `key_`), as DESIGN §3 asks.
///
/// The body is 24 characters of Crockford base32: 10 of the creation time in milliseconds, then 14
/// of 70 random bits. Ids of one kind therefore sort by creation, so that a store's index of them
/// grows at its end instead of at a random page for every new id (a job's id is in the index of its
/// row and of each of its events: with random ids they were two thirds of the pages a commit
/// wrote); the random part keeps them unguessable and apart within a millisecond. Parsing checks
/// the prefix and the alphabet, so an id of one kind can never be mistaken for another.
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

    /// A fresh identifier, made now.
    public static func random() -> Self {
        var generator = SystemRandomNumberGenerator()
        return random(at: Date(), using: &generator)
    }

    /// The identifier made at `time` from `generator`'s bits, five bits a character: the milliseconds
    /// since 1970 (up to the year 10889), most significant first, then 60 bits of one draw and 10 of
    /// a second (the system generator makes a system call a draw, and a submission makes an id).
    public static func random<G: RandomNumberGenerator>(at time: Date, using generator: inout G) -> Self {
        let milliseconds = UInt64(max(0, time.timeIntervalSince1970 * 1000))
        let (high, low) = (generator.next(), generator.next())
        var body: [Character] = []
        body.reserveCapacity(24)
        for index in 0..<10 {
            body.append(Base32.alphabet[Int((milliseconds >> ((9 - index) * 5)) & 31)])
        }
        for index in 0..<14 {
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
