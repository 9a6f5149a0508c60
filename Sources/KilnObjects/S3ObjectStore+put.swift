import AsyncHTTPClient
import Crypto
import Foundation
import KilnCore
import NIOCore
import NIOHTTP1

/// Puts: one `PUT` for a body that fits a part, a multipart upload for a larger one.
extension S3ObjectStore {
    public func put<Body: AsyncSequence & Sendable>(_ key: String, body: Body, maxBytes: Int64, expectedSHA256: String?)
        async throws -> StoredObject
    where Body.Element == ByteBuffer {
        try Self.validate(key)
        var hasher = SHA256()
        var size: Int64 = 0
        var pending = ByteBuffer()
        var upload: MultipartUpload?
        do {
            return try await withThrowingTaskGroup(of: MultipartUpload.Part.self) { group in
                var inFlight = 0
                do {
                    for try await chunk in body {
                        size += Int64(chunk.readableBytes)
                        guard size <= maxBytes else {
                            throw KilnError(.payloadTooLarge, "the body is larger than the limit of \(maxBytes) bytes")
                        }
                        chunk.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
                        pending.writeImmutableBuffer(chunk)
                        // A full part goes up only once more bytes follow it, so that the last part is
                        // never empty and a body of exactly one part needs no multipart upload.
                        while pending.readableBytes > partSize, let part = pending.readSlice(length: partSize) {
                            var current: MultipartUpload
                            if let upload {
                                current = upload
                            } else {
                                current = try await createMultipartUpload(key)
                                upload = current
                            }
                            if inFlight >= concurrentParts, let done = try await group.next() {
                                current.parts.append(done)
                                inFlight -= 1
                            }
                            let number = try current.startPart(partSize: partSize)
                            upload = current
                            let uploadID = current.id
                            group.addTask { try await uploadPart(part, number: number, key: key, uploadID: uploadID) }
                            inFlight += 1
                        }
                    }
                    let digest = hasher.finalize().hexString
                    if let expectedSHA256, expectedSHA256 != digest {
                        throw KilnError(.invalidInput, "the body's SHA-256 is \(digest), not the expected \(expectedSHA256)")
                    }
                    guard var current = upload else {
                        try await putObject(key, bytes: pending, sha256: digest)
                        return StoredObject(size: size, sha256: digest)
                    }
                    let number = try current.startPart(partSize: partSize)
                    let last = pending
                    let uploadID = current.id
                    group.addTask { try await uploadPart(last, number: number, key: key, uploadID: uploadID) }
                    for try await done in group { current.parts.append(done) }
                    upload = current
                    try await completeMultipartUpload(current)
                    return StoredObject(size: size, sha256: digest)
                } catch {
                    // The parts under way finish before the upload is aborted: one cancelled
                    // mid-request may still be landing when the abort does, and outlive it.
                    while !group.isEmpty { _ = try? await group.next() }
                    throw error
                }
            }
        } catch {
            if let upload {
                // Aborted in a task of its own, so that a cancelled put still cleans up after itself;
                // tried twice, as a part that was still arriving can make the first attempt fail.
                await Task {
                    if (try? await abortMultipartUpload(upload)) == nil { try? await abortMultipartUpload(upload) }
                }.value
            }
            throw error
        }
    }

    /// A multipart upload under way.
    private struct MultipartUpload: Sendable {
        struct Part: Sendable {
            var number: Int
            var etag: String
        }
        let key: String
        let id: String
        private(set) var partsStarted = 0
        /// The parts uploaded so far, in the order they finished.
        var parts: [Part] = []

        init(key: String, id: String) {
            self.key = key
            self.id = id
        }

        /// The next part's number.
        /// - Throws: `.payloadTooLarge` past 10 000 parts, S3's limit.
        mutating func startPart(partSize: Int) throws -> Int {
            guard partsStarted < 10_000 else {
                throw KilnError(.payloadTooLarge, "the body needs more than 10000 parts of \(partSize) bytes, S3's limit; raise the part size")
            }
            partsStarted += 1
            return partsStarted
        }
    }

    private func putObject(_ key: String, bytes: ByteBuffer, sha256: String) async throws {
        let response = try await send(
            "PUT", key: key, headers: [("content-type", Self.storedContentType)], body: bytes, sha256: sha256, action: "put '\(key)'")
        try await expectSuccess(response, action: "put '\(key)'")
    }

    private func createMultipartUpload(_ key: String) async throws -> MultipartUpload {
        let action = "start a multipart upload of '\(key)'"
        let response = try await send(
            "POST", key: key, query: [("uploads", "")], headers: [("content-type", Self.storedContentType)], action: action)
        let document = try await document(response, action: action)
        guard let id = document.value("InitiateMultipartUploadResult/UploadId"), !id.isEmpty else {
            throw KilnError(.unavailable, "S3 did not return an upload id when asked to \(action) in the bucket '\(configuration.bucket)'")
        }
        return MultipartUpload(key: key, id: id)
    }

    private func uploadPart(_ bytes: ByteBuffer, number: Int, key: String, uploadID: String) async throws -> MultipartUpload.Part {
        let action = "upload part \(number) of '\(key)'"
        let response = try await send(
            "PUT", key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)], body: bytes,
            sha256: bytes.withUnsafeReadableBytes { SHA256.hash(data: $0) }.hexString, action: action)
        try await expectSuccess(response, action: action)
        guard let etag = response.headers.first(name: "etag") else {
            throw KilnError(.unavailable, "S3 returned no ETag for part \(number) of '\(key)' in the bucket '\(configuration.bucket)'")
        }
        return MultipartUpload.Part(number: number, etag: etag)
    }

    private func completeMultipartUpload(_ upload: MultipartUpload) async throws {
        let action = "complete the multipart upload of '\(upload.key)'"
        let parts = upload.parts.sorted { $0.number < $1.number }.map {
            "<Part><PartNumber>\($0.number)</PartNumber><ETag>\($0.etag.xmlEscaped)</ETag></Part>"
        }
        let body = ByteBuffer(string: "<CompleteMultipartUpload>\(parts.joined())</CompleteMultipartUpload>")
        let response = try await send("POST", key: upload.key, query: [("uploadId", upload.id)], body: body, action: action)
        // S3 may answer 200 and still fail, with an error document for a body.
        _ = try await document(response, action: action)
    }

    private func abortMultipartUpload(_ upload: MultipartUpload) async throws {
        let action = "abort the multipart upload of '\(upload.key)'"
        let response = try await send("DELETE", key: upload.key, query: [("uploadId", upload.id)], action: action)
        try await expectSuccess(response, action: action)
    }

    /// Multipart uploads begun and neither completed nor aborted, as `(key, upload id)`.
    func pendingUploads() async throws -> [(key: String, id: String)] {
        let action = "list the multipart uploads"
        let response = try await send("GET", key: nil, query: [("uploads", ""), ("prefix", configuration.keyPrefix)], action: action)
        let document = try await document(response, action: action)
        let keys = document.values("ListMultipartUploadsResult/Upload/Key").map { String($0.dropFirst(configuration.keyPrefix.count)) }
        return Array(zip(keys, document.values("ListMultipartUploadsResult/Upload/UploadId")))
    }
}
