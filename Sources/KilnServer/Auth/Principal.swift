import Crypto
import Foundation
import KilnCore

/// Who made a request, from its bearer key.
public enum Principal: Sendable, Hashable {
    case user(AccountID, KeyID)
    case worker(KeyID)
    /// `key` is nil for the bootstrap key from `KILN_ADMIN_KEY`.
    case admin(KeyID?)

    /// The caller of the request being handled, set by ``RequireScope`` for every `/v1/` path.
    @TaskLocal public static var current: Principal?

    /// The account of the calling user key.
    /// - Throws: `.forbidden` for other callers.
    static func account() throws -> AccountID {
        guard case .user(let account, _) = current else {
            throw KilnError(.forbidden, "this call needs a user key (one that belongs to an account)")
        }
        return account
    }

    /// The calling worker key.
    /// - Throws: `.forbidden` for other callers.
    static func workerKey() throws -> KeyID {
        guard case .worker(let key) = current else { throw KilnError(.forbidden, "this call needs a worker key") }
        return key
    }
}

/// Key secrets: random, shown once, stored as a SHA-256 hash (they carry 190 bits of entropy, so a
/// fast hash is enough; no password stretching is needed).
public enum KeySecret {
    /// A new secret: `kiln_<scope>_` and 32 random base62 characters.
    public static func generate(scope: KeyScope) -> String {
        let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
        var generator = SystemRandomNumberGenerator()
        let body = String((0..<32).map { _ in alphabet[Int(generator.next(upperBound: UInt8(alphabet.count)))] })
        return "kiln_\(scope.rawValue)_\(body)"
    }

    public static func hash(_ secret: String) -> String {
        SHA256.hash(data: Array(secret.utf8)).hexString
    }

    /// Compares two hashes in time independent of where they differ.
    public static func equalHashes(_ a: String, _ b: String) -> Bool {
        let (x, y) = (Array(a.utf8), Array(b.utf8))
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for i in x.indices { difference |= x[i] ^ y[i] }
        return difference == 0
    }
}
