import Foundation
import KilnCore
import PostgresNIO

/// Where a ``PostgresJobStore`` connects: `postgres://user:password@host:port/database`, with an
/// optional `?sslmode=` of `disable`, `prefer` (the default, as libpq's), `require` (TLS without
/// certificate checks), `verify-ca` or `verify-full`. The port defaults to 5432 and the database to
/// the user's name; the user name and password are percent-decoded.
public struct PostgresURL: Sendable, Hashable, CustomStringConvertible {
    public enum TLSMode: String, Sendable, Hashable, CaseIterable {
        case disable
        case prefer
        case require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String
    public var tls: TLSMode

    /// Parses a connection URL.
    /// - Throws: `.invalidInput` naming what is missing or wrong (the password is never echoed).
    public init(_ text: String) throws {
        func invalid(_ problem: String) -> KilnError {
            KilnError(.invalidInput, "database URL: \(problem); expected postgres://user:password@host:port/database")
        }
        guard let components = URLComponents(string: text) else { throw invalid("it is not a URL") }
        guard let scheme = components.scheme, ["postgres", "postgresql"].contains(scheme) else {
            throw invalid("the scheme must be postgres or postgresql, not '\(components.scheme ?? "")'")
        }
        guard let host = components.host, !host.isEmpty else { throw invalid("it names no host") }
        guard let user = components.user, !user.isEmpty else { throw invalid("it names no user") }
        if let port = components.port, !(1...65_535).contains(port) { throw invalid("port \(port) is out of range") }
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        guard !path.contains("/") else { throw invalid("'\(path)' is not a database name") }
        var tls = TLSMode.prefer
        for item in components.queryItems ?? [] {
            guard item.name == "sslmode" else { throw invalid("unknown parameter '\(item.name)' (only sslmode is understood)") }
            guard let mode = item.value.flatMap(TLSMode.init(rawValue:)) else {
                throw invalid(
                    "sslmode '\(item.value ?? "")' is not one of \(TLSMode.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            tls = mode
        }
        self.host = host
        self.port = components.port ?? 5432
        self.user = user
        self.password = components.password
        self.database = path.isEmpty ? user : path
        self.tls = tls
    }

    /// The URL without its password, for logs and errors.
    public var description: String {
        "postgres://\(user)@\(host):\(port)/\(database)?sslmode=\(tls.rawValue)"
    }

    /// TLS as the connection pool takes it.
    var clientTLS: PostgresClient.Configuration.TLS {
        guard let configuration = tlsConfiguration else { return .disable }
        return tls == .prefer ? .prefer(configuration) : .require(configuration)
    }

    /// TLS as a single connection takes it.
    public func connectionTLS() throws -> PostgresConnection.Configuration.TLS {
        guard let configuration = tlsConfiguration else { return .disable }
        let context = try NIOSSLContext(configuration: configuration)
        return tls == .prefer ? .prefer(context) : .require(context)
    }

    /// The client's TLS settings for ``tls``; nil when TLS is off.
    private var tlsConfiguration: TLSConfiguration? {
        var configuration = TLSConfiguration.makeClientConfiguration()
        switch tls {
        case .disable: return nil
        case .prefer, .require: configuration.certificateVerification = .none
        case .verifyCA: configuration.certificateVerification = .noHostnameVerification
        case .verifyFull: configuration.certificateVerification = .fullVerification
        }
        return configuration
    }
}
