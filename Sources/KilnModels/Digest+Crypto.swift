import KilnCore

/// Within this module, `Digest` is Kiln's content digest, not swift-crypto's protocol of the same name.
public typealias Digest = KilnCore.Digest
