import Foundation

/// The OpenAPI document of the API: the contract the generated types, client and server protocol
/// are built from, and the text the server serves at `GET /openapi.yaml`.
public enum OpenAPIDocument {
    public static let text: String = {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"),
            let text = try? String(contentsOf: url, encoding: .utf8)
        else { preconditionFailure("the OpenAPI document is missing from the KilnAPI resource bundle") }
        return text
    }()
}
