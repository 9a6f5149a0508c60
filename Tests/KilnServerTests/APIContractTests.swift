import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import KilnAPI
import KilnCore
import KilnServer
import OpenAPIRuntime
import Testing
import Yams

@Suite("API contract: validation, isolation, admission, durability")
struct APIContractTests {
    @Test(
        "bad requests get the documented 4xx with a message naming the problem, and store nothing",
        arguments: [
            (#"{"model":"nope","input":{}}"#, 422, "model: no model named 'nope'"),
            (#"{"model":"demo","input":{"prompt":"x"}"#, 400, "malformed JSON"),
            (#"not json"#, 400, "malformed JSON"),
            (#"{"model":"demo","input":{"prompt":"x"},"alias":"a","version":"b"}"#, 400, "either version or alias"),
            (#"["model"]"#, 400, "must be a JSON object"),
            (#"{"input":{}}"#, 400, "missing field 'model'"),
            (#"{"model":"demo"}"#, 400, "missing field 'input'"),
            (#"{"model":7,"input":{}}"#, 400, "field 'model' must be a string"),
            (#"{"model":"demo","input":"x"}"#, 400, "field 'input' must be an object"),
            (#"{"model":"demo","input":{},"priority":1}"#, 400, "unknown field 'priority'"),
            (#"{"model":"demo","input":{"video":"file_0000000000000000000000"}}"#, 422, "input.video: no file"),
            (#"{"model":"demo","input":{},"callback_url":"ftp://x"}"#, 422, "callback_url"),
            ("", 400, "needs a JSON body"),
            (#"{"model":"demo","input":{"seed":9007199254740993}}"#, 422, "input.seed: 9007199254740993 is beyond ±2^53"),
            (#"{"model":"demo","input":{"list":[1,{"seed":-9007199254740993}]}}"#, 422, "input.list[1].seed"),
        ])
    func badRequests(body: String, status: Int, message: String) async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let result = try await api.call(.post, "/v1/generations", key: user, json: body)
            #expect(result.status.code == status, "\(result.text)")
            #expect(result.error?.message.contains(message) == true, "\(result.text)")
            let list = try await api.call(.get, "/v1/generations", key: user).decode(Components.Schemas.GenerationList.self)
            #expect(list.data.isEmpty)
        }
    }

    @Test("a stored file is answered with its uploader's type and nosniff, so a browser never runs it as another")
    func downloadsAreNotSniffed() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (_, user) = try await api.account(tier: "api")
            let uploaded = try await api.call(
                .post, "/v1/files", key: user, raw: ByteBuffer(string: "<script>alert(1)</script>"), headers: [.contentType: "text/html"])
            let file = try uploaded.decode(Components.Schemas.FileObject.self)
            let download = try await api.call(.get, "/v1/files/\(file.id)", key: user)
            #expect(download.status == .ok)
            #expect(download.headers[.contentType] == "text/html")
            #expect(download.headers[.xContentTypeOptions] == "nosniff")
        }
    }

    @Test("a number out of its field's range is refused naming the field, not as malformed JSON")
    func numberOutOfRange() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let key = try await api.workerKey()
            let result = try await api.call(.post, "/v1/workers", key: key, json: #"{"cluster":"default","accelerator":"cpu","gpus":1e20}"#)
            #expect(result.status == .badRequest)
            #expect(result.error?.message.contains("gpus") == true, "\(result.text)")
            #expect(result.error?.message.contains("malformed JSON") == false, "\(result.text)")
        }
    }

    @Test("oversized bodies get 413 and store nothing")
    func oversized() async throws {
        var configuration = ServerConfiguration()
        configuration.limits.maxJSONBytes = 256
        configuration.limits.maxFileBytes = 1024
        let kiln = try await KilnHarness.make(configuration: configuration)
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let big = #"{"model":"demo","input":{"prompt":"\#(String(repeating: "x", count: 500))"}}"#
            let json = try await api.call(.post, "/v1/generations", key: user, json: big)
            #expect(json.status == .contentTooLarge)
            #expect(json.error?.message.contains("256 bytes") == true)
            let file = try await api.call(.post, "/v1/files", key: user, raw: ByteBuffer(repeating: 1, count: 4096))
            #expect(file.status == .contentTooLarge)
            #expect(try await api.call(.get, "/v1/generations", key: user).decode(Components.Schemas.GenerationList.self).data.isEmpty)
            let objects = try FileManager.default.subpathsOfDirectory(atPath: kiln.data.appending(path: "objects").path)
            #expect(!objects.contains { $0.hasPrefix("files/") }, "\(objects)")
        }
    }

    @Test("an account never sees another account's generations or files")
    func isolation() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, alice) = try await api.account(tier: "api", name: "alice")
            let (_, bob) = try await api.account(tier: "api", name: "bob")
            let upload = try await api.call(.post, "/v1/files", key: alice, raw: ByteBuffer(string: "clip"))
            let file = try upload.decode(Components.Schemas.FileObject.self)
            let generation = try await api.submit(alice, input: ["video": .string(file.id)])

            #expect(try await api.call(.get, "/v1/generations/\(generation.id)", key: bob).status == .notFound)
            #expect(try await api.call(.post, "/v1/generations/\(generation.id)/cancel", key: bob).status == .notFound)
            #expect(try await api.call(.get, "/v1/generations/\(generation.id)/events", key: bob).status == .notFound)
            #expect(try await api.call(.get, "/v1/files/\(file.id)", key: bob).status == .notFound)
            #expect(try await api.call(.get, "/v1/generations", key: bob).decode(Components.Schemas.GenerationList.self).data.isEmpty)
            // Bob cannot use Alice's file as an input either.
            let borrowed = try await api.call(
                .post, "/v1/generations", key: bob, json: #"{"model":"demo","input":{"video":"\#(file.id)"}}"#)
            #expect(borrowed.status == .unprocessableContent)
            // Alice sees hers.
            #expect(try await api.call(.get, "/v1/files/\(file.id)", key: alice).text == "clip")
            #expect(try await api.generation(alice, generation.id).state == .queued)
        }
    }

    @Test("keys: missing 401, wrong scope 403, revoked 401")
    func authentication() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (_, user) = try await api.account(tier: "api")
            #expect(try await api.call(.get, "/v1/generations", key: nil).status == .unauthorized)
            #expect(try await api.call(.get, "/v1/generations", key: "kiln_user_nonsense").status == .unauthorized)
            #expect(try await api.call(.get, "/v1/admin/queue", key: user).status == .forbidden)
            #expect(try await api.call(.get, "/v1/generations", key: KilnHarness.adminKey).status == .forbidden)
            let created = try await api.call(.post, "/v1/admin/keys", json: #"{"scope":"admin"}"#).decode(Components.Schemas.KeyObject.self)
            #expect(try await api.call(.get, "/v1/admin/queue", key: created.key).status == .ok)
            #expect(try await api.call(.delete, "/v1/admin/keys/\(created.id)").status == .noContent)
            #expect(try await api.call(.get, "/v1/admin/queue", key: created.key).status == .unauthorized)
        }
    }

    @Test("Idempotency-Key returns the first generation; the same key with another body is a conflict")
    func idempotency() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let headers: HTTPFields = [HTTPField.Name("Idempotency-Key")!: "order-42"]
            let body = #"{"model":"demo","input":{"prompt":"a cat"}}"#
            let first = try await api.call(.post, "/v1/generations", key: user, json: body, headers: headers)
            let again = try await api.call(.post, "/v1/generations", key: user, json: body, headers: headers)
            #expect(first.status == .created)
            #expect(again.status == .ok)
            #expect(try first.decode(Components.Schemas.GenerationObject.self).id == again.decode(Components.Schemas.GenerationObject.self).id)
            let different = try await api.call(
                .post, "/v1/generations", key: user, json: #"{"model":"demo","input":{"prompt":"a dog"}}"#, headers: headers)
            #expect(different.status == .conflict)
            #expect(try await api.call(.get, "/v1/generations", key: user).decode(Components.Schemas.GenerationList.self).data.count == 1)
        }
    }

    @Test("admission: past the tier's queued cap, 429 with Retry-After, and nothing stored")
    func admission() async throws {
        var configuration = ServerConfiguration()
        configuration.tiers = try TierTable([Tier(name: "free", maxWait: 600, maxQueuedPerAccount: 2)])
        let kiln = try await KilnHarness.make(configuration: configuration)
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "free")
            _ = try await api.submit(user)
            _ = try await api.submit(user)
            let refused = try await api.call(.post, "/v1/generations", key: user, json: #"{"model":"demo","input":{}}"#)
            #expect(refused.status == .tooManyRequests)
            #expect(refused.error?.message.contains("max_queued_per_account 2") == true)
            let retryAfter = try #require(refused.headers[.retryAfter].flatMap { Int($0) })
            #expect(retryAfter >= 1 && retryAfter <= 600)
            #expect(try await api.call(.get, "/v1/generations", key: user).decode(Components.Schemas.GenerationList.self).data.count == 2)
            // Another account of the tier is not affected.
            let (_, other) = try await api.account(tier: "free", name: "other")
            _ = try await api.submit(other)
        }
    }

    @Test("a batch: each item answered in order as a single submit would be, keyed K/i, and leased in order")
    func batch() async throws {
        var configuration = ServerConfiguration()
        configuration.tiers = try TierTable([Tier(name: "free", maxWait: 600, maxQueuedPerAccount: 3)])
        let kiln = try await KilnHarness.make(configuration: configuration)
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "free")
            let workerKey = try await api.workerKey()
            let worker = try await api.register(workerKey)
            let body = #"""
                {"generations": [
                  {"model": "demo", "input": {"prompt": "one"}},
                  {"model": "nope", "input": {}},
                  {"model": "demo", "input": {}, "version": "v1", "alias": "production"},
                  {"model": "demo", "input": {"prompt": "two"}},
                  {"model": "demo", "input": {"prompt": "three"}},
                  {"model": "demo", "input": {"prompt": "four"}}
                ]}
                """#
            var headers = HTTPFields()
            headers[HTTPField.Name("Idempotency-Key")!] = "burst-1"
            let answer = try await api.call(.post, "/v1/generations/batch", key: user, json: body, headers: headers)
            #expect(answer.status == .ok)
            let results = try answer.decode(Components.Schemas.CreateGenerationsResponse.self).results
            #expect(results.map(\.status.rawValue) == [201, 422, 400, 201, 201, 429])
            #expect(results[1].error?.message == "model: no model named 'nope'")
            #expect(results[2].error?.code == "invalid_request")
            #expect(results[5].error?.message.contains("max_queued_per_account 3") == true)
            let retryAfter = try #require(results[5].retryAfterSeconds)
            #expect(retryAfter >= 1 && retryAfter <= 600)
            let created = results.compactMap(\.generation)
            #expect(created.count == 3)
            #expect(created.allSatisfy { $0.state == .queued })
            #expect(created.map { $0.queue?.position } == [0, 1, 2])

            // The same batch again: the created items come back (200), the refused ones are tried again.
            let again = try await api.call(.post, "/v1/generations/batch", key: user, json: body, headers: headers)
            let replayed = try again.decode(Components.Schemas.CreateGenerationsResponse.self).results
            #expect(replayed.map(\.status.rawValue) == [200, 422, 400, 200, 200, 429])
            #expect(replayed.compactMap(\.generation?.id) == created.map(\.id))
            // Item 3 alone, under its own key, is the same generation.
            var single = HTTPFields()
            single[HTTPField.Name("Idempotency-Key")!] = "burst-1/3"
            let alone = try await api.call(
                .post, "/v1/generations", key: user, json: #"{"model": "demo", "input": {"prompt": "two"}}"#, headers: single)
            #expect(alone.status == .ok)
            #expect(try alone.decode(Components.Schemas.GenerationObject.self).id == created[1].id)
            #expect(try await api.call(.get, "/v1/generations", key: user).decode(Components.Schemas.GenerationList.self).data.count == 3)

            for expected in created {
                let leased = try #require(try await api.lease(workerKey, worker: worker))
                #expect(leased.job.id == expected.id, "leased in the order sent")
            }

            // Refused whole: no items, too many, an unknown field.
            let empty = try await api.call(.post, "/v1/generations/batch", key: user, json: #"{"generations": []}"#)
            #expect(empty.status == .badRequest)
            let many = "{\"generations\": [" + Array(repeating: #"{"model": "demo", "input": {}}"#, count: 101).joined(separator: ",") + "]}"
            let tooMany = try await api.call(.post, "/v1/generations/batch", key: user, json: many)
            #expect(tooMany.status == .badRequest)
            #expect(tooMany.error?.message.contains("101") == true)
            let unknown = try await api.call(.post, "/v1/generations/batch", key: user, json: #"{"generations": [], "extra": 1}"#)
            #expect(unknown.status == .badRequest)
        }
    }

    @Test("by default every tier caps one account's queue: a light account's 51st queued generation is refused")
    func defaultCaps() async throws {
        #expect(TierTable.standard.tiers.allSatisfy { $0.maxQueuedPerAccount != nil && $0.maxRunningPerAccount != nil })
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "light")
            for _ in 0..<50 { _ = try await api.submit(user) }
            let refused = try await api.call(.post, "/v1/generations", key: user, json: #"{"model":"demo","input":{}}"#)
            #expect(refused.status == .tooManyRequests)
            #expect(refused.error?.message.contains("max_queued_per_account 50") == true, "\(String(describing: refused.error))")
        }
    }

    @Test("listing pages newest first with a cursor and filters by state")
    func listing() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            var ids: [String] = []
            for _ in 0..<5 { ids.append(try await api.submit(user).id) }
            _ = try await api.call(.post, "/v1/generations/\(ids[1])/cancel", key: user)
            let page1 = try await api.call(.get, "/v1/generations?limit=2", key: user).decode(Components.Schemas.GenerationList.self)
            #expect(page1.data.map(\.id) == [ids[4], ids[3]])
            let cursor = try #require(page1.nextCursor)
            let page2 = try await api.call(.get, "/v1/generations?limit=2&cursor=\(cursor)", key: user).decode(Components.Schemas.GenerationList.self)
            #expect(page2.data.map(\.id) == [ids[2], ids[1]])
            let page3 = try await api.call(.get, "/v1/generations?limit=2&cursor=\(page2.nextCursor!)", key: user)
                .decode(Components.Schemas.GenerationList.self)
            #expect(page3.data.map(\.id) == [ids[0]])
            #expect(page3.nextCursor == nil)
            let canceled = try await api.call(.get, "/v1/generations?state=canceled", key: user).decode(Components.Schemas.GenerationList.self)
            #expect(canceled.data.map(\.id) == [ids[1]])
            let bad = try await api.call(.get, "/v1/generations?state=done", key: user)
            #expect(bad.status == .badRequest)
            #expect(bad.error?.message.contains("state") == true)
            #expect(try await api.call(.get, "/v1/generations?limit=1000", key: user).status == .badRequest)
        }
    }

    @Test("restarting the server on the same data folder keeps every generation in its state, and the queue")
    func restart() async throws {
        let data = FileManager.default.temporaryDirectory.appending(path: "kiln-restart-\(UUID().uuidString)")
        let clock = ManualWallClock()
        let before = try await KilnHarness.make(data: data, clock: clock)
        let (user, workerKey, states) = try await before.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let succeeded = try await api.submit(user)
            let lease1 = try #require(try await api.lease(workerKey, worker: worker))
            _ = try await api.complete(workerKey, worker, lease1)
            let running = try await api.submit(user)
            _ = try #require(try await api.lease(workerKey, worker: worker))
            let canceled = try await api.submit(user)
            _ = try await api.call(.post, "/v1/generations/\(canceled.id)/cancel", key: user)
            let queued = try await api.submit(user)
            return (
                user, workerKey,
                [succeeded.id: Components.Schemas.GenerationState.succeeded, running.id: .running, canceled.id: .canceled, queued.id: .queued]
            )
        }
        let after = try await KilnHarness.make(data: data, clock: clock)
        try await after.withClient { api in
            for (id, state) in states {
                #expect(try await api.generation(user, id).state == state)
            }
            let queuedID = try #require(states.first { $0.value == .queued }?.key)
            #expect(try await api.generation(user, queuedID).queue?.position == 0)
            let worker = try await api.register(workerKey)
            let lease = try #require(try await api.lease(workerKey, worker: worker))
            #expect(lease.job.id == queuedID)
        }
    }

    @Test("Last-Event-ID resumes the event stream after that event; after the final one it ends; a malformed one is refused")
    func eventStreamResumes() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let generation = try await api.submit(user)
            let lease = try #require(try await api.lease(workerKey, worker: worker))
            #expect(try await api.complete(workerKey, worker, lease).status == .noContent)
            let path = "/v1/generations/\(generation.id)/events"
            func sequences(_ result: HTTPResult) -> [Int64] {
                result.text.split(separator: "\n").filter { $0.hasPrefix("id: ") }.compactMap { Int64($0.dropFirst(4)) }
            }
            let all = sequences(try await api.call(.get, path, key: user))
            #expect(all.count == 3, "queued, leased, succeeded")
            let lastEventID = HTTPField.Name("Last-Event-ID")!
            let resumed = try await api.call(.get, path, key: user, headers: [lastEventID: "\(all[0])"])
            #expect(sequences(resumed) == Array(all.dropFirst()))
            let afterTheEnd = try await api.call(.get, path, key: user, headers: [lastEventID: "\(all.last!)"])
            #expect(afterTheEnd.status == .ok)
            #expect(sequences(afterTheEnd).isEmpty)
            let malformed = try await api.call(.get, path, key: user, headers: [lastEventID: "soon"])
            #expect(malformed.status == .badRequest)
        }
    }

    @Test("the server serves the document it was generated from")
    func servesItsDocument() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let document = try await api.call(.get, "/openapi.yaml", key: nil)
            #expect(document.status == .ok)
            #expect(document.text == OpenAPIDocument.text)
        }
    }

    @Test("every operation demands the key scope its tag documents: none 401, another scope 403, its own admitted")
    func scopesFollowTags() async throws {
        let kiln = try await KilnHarness.make()
        let root = try #require(try Yams.load(yaml: OpenAPIDocument.text) as? [String: Any])
        let paths = try #require(root["paths"] as? [String: Any])
        var operations: [(template: String, method: String, tag: String)] = []
        for (template, item) in paths.sorted(by: { $0.key < $1.key }) {
            for (method, operation) in try #require(item as? [String: Any]) {
                let tag = try #require(((operation as? [String: Any])?["tags"] as? [String])?.first)
                operations.append((template, method, tag))
            }
        }
        let documented = operations
        try await kiln.withClient { api in
            let (_, user) = try await api.account(tier: "api")
            let worker = try await api.workerKey()
            let keys = ["public": user, "worker": worker, "admin": KilnHarness.adminKey]
            var checked = 0
            for (template, method, tag) in documented {
                let path = template.replacing(/\{[^}]+\}/, with: "x") + (template.contains("{job}") ? "?token=1" : "")
                let verb = HTTPRequest.Method(rawValue: method.uppercased())!
                let anonymous = try await api.call(verb, path, key: nil, json: "{}")
                guard let own = keys[tag] else {
                    #expect(tag == "meta" && anonymous.status == .ok, "\(method) \(template)")
                    continue
                }
                #expect(anonymous.status == .unauthorized, "\(method) \(template) without a key")
                for (other, key) in keys where other != tag {
                    let refused = try await api.call(verb, path, key: key, json: "{}")
                    #expect(refused.status == .forbidden, "\(method) \(template) with a \(other) key")
                }
                let admitted = try await api.call(verb, path, key: own, json: "{}")
                #expect(![.unauthorized, .forbidden].contains(admitted.status), "\(method) \(template) with its own key")
                checked += 1
            }
            #expect(checked >= 36)
        }
    }
}
