import Foundation
import KilnCore
import NIOCore

#if canImport(FoundationXML)
import FoundationXML
#endif

/// An S3 response body read as the text of each element by its path from the root
/// (`ListBucketResult/Contents/Key`), in document order: all S3 answers need.
struct S3XMLDocument {
    /// The root element's name (`Error` for an error body, even one sent with status 200).
    let root: String?
    private let texts: [String: [String]]

    /// - Throws: `.unavailable` when the body is not well-formed XML.
    init(_ body: ByteBuffer) throws {
        let parser = XMLParser(data: Data(body.readableBytesView))
        let collector = Collector()
        parser.delegate = collector
        guard parser.parse() else {
            let reason = parser.parserError.map { "\($0)" } ?? "unknown error"
            throw KilnError(.unavailable, "the S3 service answered with XML that does not parse (\(reason))")
        }
        root = collector.root
        texts = collector.texts
    }

    /// The text of every element at `path`, in order.
    func values(_ path: String) -> [String] { texts[path] ?? [] }

    /// The text of the first element at `path`.
    func value(_ path: String) -> String? { texts[path]?.first }

    private final class Collector: NSObject, XMLParserDelegate {
        var root: String?
        var texts: [String: [String]] = [:]
        private var path: [String] = []
        private var text = ""

        func parser(
            _ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?, qualifiedName: String?,
            attributes: [String: String] = [:]
        ) {
            if path.isEmpty { root = elementName }
            path.append(elementName)
            text = ""
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }

        func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName: String?) {
            texts[path.joined(separator: "/"), default: []].append(text)
            path.removeLast()
            text = ""
        }
    }
}

extension String {
    /// The text with `&`, `<`, `>` and `"` escaped, for an XML element's content.
    var xmlEscaped: String {
        var escaped = ""
        for character in self {
            switch character {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}
