import Foundation
import HTTPTypes
import KilnAPI
import KilnCore
import KilnServer
import NIOCore
import Testing

/// Files end: a quota on what an account uploads, delete, retention, and the outputs of attempts
/// that did not count. Each deletion removes the record at once and the object at the janitor's
/// next sweep.
@Suite("Files: quota, delete, retention, outputs of stale attempts")
struct FileLifecycleTests {
    func upload(_ api: KilnClient, _ key: String, bytes: Int) async throws -> HTTPResult {
        try await api.call(.post, "/v1/files", key: key, raw: ByteBuffer(repeating: 1, count: bytes), headers: [.contentType: "video/mp4"])
    }

    func uploaded(_ api: KilnClient, _ key: String, bytes: Int = 10) async throws -> Components.Schemas.FileObject {
        let answer = try await upload(api, key, bytes: bytes)
        #expect(answer.status == .created, "\(answer.text)")
        return try answer.decode(Components.Schemas.FileObject.self)
    }

    func putOutput(_ api: KilnClient, _ key: String, _ worker: String, _ lease: Components.Schemas.LeaseResponse) async throws -> String {
        let path = "/v1/workers/\(worker)/jobs/\(lease.job.id)/outputs/video?token=\(lease.lease.token)"
        let answer = try await api.call(.put, path, key: key, raw: ByteBuffer(string: "mp4 of \(lease.lease.token)"), headers: [.contentType: "video/mp4"])
        #expect(answer.status == .created, "\(answer.text)")
        return try answer.decode(Components.Schemas.FileObject.self).id
    }

    @Test("an account's uploads stop at its quota with 413 naming it; deleting makes room; other accounts are not affected")
    func quota() async throws {
        var configuration = ServerConfiguration()
        configuration.limits.maxAccountFileBytes = 1_000
        let kiln = try await KilnHarness.make(configuration: configuration)
        try await kiln.withClient { api in
            let (_, user) = try await api.account(tier: "api")
            let first = try await uploaded(api, user, bytes: 600)
            #expect(first.expiresAt == first.createdAt + 168 * 3_600)
            let refused = try await upload(api, user, bytes: 600)
            #expect(refused.status == .contentTooLarge)
            #expect(refused.error?.message.contains("quota of 1000 bytes") == true, "\(refused.text)")
            #expect(refused.error?.message.contains("hold 600 bytes") == true, "\(refused.text)")
            #expect(FileLifecycleTests.objects(kiln).count == 1, "a refused upload stores nothing")
            let (_, other) = try await api.account(tier: "api", name: "other")
            _ = try await uploaded(api, other, bytes: 600)
            #expect(try await api.call(.delete, "/v1/files/\(first.id)", key: user).status == .noContent)
            _ = try await uploaded(api, user, bytes: 600)
        }
    }

    @Test("delete: refused with 409 while a queued generation needs the file, 404 for another account; then gone, bytes too")
    func delete() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let (_, stranger) = try await api.account(tier: "api", name: "stranger")
            let file = try await uploaded(api, user)
            let generation = try await api.submit(user, input: ["video": .string(file.id)])
            let busy = try await api.call(.delete, "/v1/files/\(file.id)", key: user)
            #expect(busy.status == .conflict)
            #expect(busy.error?.message.contains(generation.id) == true, "\(busy.text)")
            #expect(try await api.call(.delete, "/v1/files/\(file.id)", key: stranger).status == .notFound)
            #expect(try await api.call(.delete, "/v1/files/file_nosuchfile", key: user).status == .notFound)

            #expect(try await api.call(.post, "/v1/generations/\(generation.id)/cancel", key: user).status == .ok)
            #expect(try await api.call(.delete, "/v1/files/\(file.id)", key: user).status == .noContent)
            #expect(try await api.call(.get, "/v1/files/\(file.id)", key: user).status == .notFound)
            #expect(try await api.call(.delete, "/v1/files/\(file.id)", key: user).status == .notFound)
            #expect(FileLifecycleTests.objects(kiln).count == 1, "the record goes first; the bytes at the next sweep")
            let swept = try await kiln.server.janitor().sweep()
            #expect(swept.objectsDeleted == 1)
            #expect(FileLifecycleTests.objects(kiln).isEmpty)
        }
    }

    @Test("retention deletes files past their age, except one a queued generation needs until it ends")
    func retention() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let pinned = try await uploaded(api, user)
            let loose = try await uploaded(api, user)
            kiln.clock.advance(by: 100 * 3_600)
            let recent = try await uploaded(api, user)
            let generation = try await api.submit(user, input: ["video": .string(pinned.id)])
            kiln.clock.advance(by: 70 * 3_600)  // 170 h after the first two, 70 h after the last

            let first = try await kiln.server.janitor().sweep()
            #expect(first.expired == 1 && first.objectsDeleted == 1)
            #expect(try await api.call(.get, "/v1/files/\(loose.id)", key: user).status == .notFound)
            #expect(try await api.call(.get, "/v1/files/\(pinned.id)", key: user).status == .ok, "a queued generation needs it")
            #expect(try await api.call(.get, "/v1/files/\(recent.id)", key: user).status == .ok)

            #expect(try await api.call(.post, "/v1/generations/\(generation.id)/cancel", key: user).status == .ok)
            let second = try await kiln.server.janitor().sweep()
            #expect(second.expired == 1)
            #expect(try await api.call(.get, "/v1/files/\(pinned.id)", key: user).status == .notFound)
            #expect(try await api.call(.get, "/v1/files/\(recent.id)", key: user).status == .ok)
            #expect(FileLifecycleTests.objects(kiln).count == 1)
        }
    }

    @Test("only the outputs a generation ends with are kept: a stale attempt's, a replaced one's and a failed job's go")
    func outputsOfAttemptsThatDidNotCount() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let generation = try await api.submit(user)
            let stale = try #require(try await api.lease(workerKey, worker: worker))
            let staleOutput = try await putOutput(api, workerKey, worker, stale)
            kiln.clock.advance(by: 31)
            try await kiln.server.reaper().reap()
            let current = try #require(try await api.lease(workerKey, worker: worker))
            let replaced = try await putOutput(api, workerKey, worker, current)
            let kept = try await putOutput(api, workerKey, worker, current)
            #expect(try await api.complete(workerKey, worker, current, outputs: ["video"]).status == .noContent)
            #expect(try await api.generation(user, generation.id).output.additionalProperties["video"]?.fileId == kept)

            let failing = try await api.submit(user)
            let lease = try #require(try await api.lease(workerKey, worker: worker))
            #expect(lease.job.id == failing.id)
            let unused = try await putOutput(api, workerKey, worker, lease)
            let failed = try await api.job(
                workerKey, worker, lease, "fail",
                json: #"{"token":"\#(lease.lease.token)","error":{"code":"bad_prompt","message":"refused"},"retryable":false}"#)
            #expect(failed.status == .noContent)

            for gone in [staleOutput, replaced, unused] {
                #expect(try await api.call(.get, "/v1/files/\(gone)", key: user).status == .notFound)
            }
            #expect(try await api.call(.get, "/v1/files/\(kept)", key: user).status == .ok)
            #expect(try await kiln.server.janitor().sweep().objectsDeleted == 3)
            #expect(FileLifecycleTests.objects(kiln) == [kept])
        }
    }

    /// The ids of the files whose bytes are in the object store.
    static func objects(_ kiln: KilnHarness) -> [String] {
        let folder = kiln.data.appending(path: "objects/files")
        return ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }
}
