import Foundation
import KilnCore

#if canImport(Glibc)
    import Glibc
#endif

/// Which callback URLs a server calls. A URL must be `http` or `https` with a host; unless the
/// configuration allows private addresses, a host on loopback, link-local, private, shared or
/// multicast ranges is refused: when it is written as an address or `localhost` at submission, and
/// when its name resolves to one at each delivery (a name may point anywhere later).
public enum CallbackURL {
    /// - Throws: ``KilnError`` (`.invalidInput`) naming `callback_url` and what is wrong.
    @discardableResult
    public static func check(_ text: String, allowPrivate: Bool) throws -> URL {
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), ["http", "https"].contains(scheme),
            let host = url.host, !host.isEmpty
        else {
            throw KilnError(.invalidInput, "callback_url: '\(text)' is not an http(s) URL")
        }
        guard !allowPrivate else { return url }
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")).lowercased()
        if bare == "localhost" || bare.hasSuffix(".localhost") || isPrivate(literal: bare) == true {
            throw KilnError(
                .invalidInput, "callback_url: '\(host)' is a loopback, link-local or private address, which this server does not call")
        }
        return url
    }

    /// Whether `text`, an IPv4 or IPv6 address, is one a public callback may not reach; nil when
    /// it is not an address.
    public static func isPrivate(literal text: String) -> Bool? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return isPrivate(v4: UInt32(bigEndian: v4.s_addr)) }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return isPrivate(v6: withUnsafeBytes(of: v6) { Array($0) }) }
        return nil
    }

    static func isPrivate(v4 address: UInt32) -> Bool {
        func within(_ network: UInt32, _ bits: UInt32) -> Bool { address >> (32 - bits) == network >> (32 - bits) }
        return within(0x0000_0000, 8)  // "this" network, 0.0.0.0
            || within(0x0A00_0000, 8)  // 10/8
            || within(0x6440_0000, 10)  // 100.64/10, shared (carrier-grade NAT)
            || within(0x7F00_0000, 8)  // loopback
            || within(0xA9FE_0000, 16)  // link-local (and cloud metadata, 169.254.169.254)
            || within(0xAC10_0000, 12)  // 172.16/12
            || within(0xC0A8_0000, 16)  // 192.168/16
            || within(0xE000_0000, 3)  // multicast, reserved, broadcast
    }

    static func isPrivate(v6 bytes: [UInt8]) -> Bool {
        if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {  // ::ffff:a.b.c.d
            return isPrivate(v4: bytes[12..<16].reduce(0) { $0 << 8 | UInt32($1) })
        }
        if bytes[0..<15].allSatisfy({ $0 == 0 }) { return true }  // :: and ::1
        return bytes[0] & 0xFE == 0xFC  // fc00::/7, unique local
            || (bytes[0] == 0xFE && bytes[1] & 0xC0 == 0x80)  // fe80::/10, link-local
            || bytes[0] == 0xFF  // multicast
    }

    /// The first private address `host` resolves to, if any (the delivery-time check).
    /// - Throws: ``KilnError`` (`.unavailable`) when the name does not resolve.
    public static func privateAddress(of host: String) async throws -> String? {
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if let literal = isPrivate(literal: bare) { return literal ? bare : nil }
        return try await Task.detached {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            let status = getaddrinfo(bare, nil, &hints, &list)
            guard status == 0, let first = list else {
                throw KilnError(.unavailable, "'\(bare)' does not resolve: \(String(cString: gai_strerror(status)))")
            }
            defer { freeaddrinfo(first) }
            var entry: UnsafeMutablePointer<addrinfo>? = first
            while let current = entry {
                var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
                if getnameinfo(current.pointee.ai_addr, current.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST)
                    == 0
                {
                    let address = String(cString: buffer)
                    if isPrivate(literal: address) == true { return address }
                }
                entry = current.pointee.ai_next
            }
            return nil
        }.value
    }
}
