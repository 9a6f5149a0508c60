import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import KilnAPI
import KilnCore
import KilnServer
import NIOCore
import Testing

/// A webhook receiver on loopback: records each request and answers with the next status of its
/// script (200 once the script is used up).
actor WebhookReceiver {
    struct Received: Sendable {
        let headers: HTTPFields
        let body: Data
        var id: String { headers[HTTPField.Name("webhook-id")!] ?? "" }
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }
    }

    private(set) var received: [Received] = []
    private var script: [Int]
    private var task: Task<Void, any Error>?
    private(set) var url = ""

    init(answering script: [Int] = []) { self.script = script }

    func record(_ request: Received) -> Int {
        received.append(request)
        return script.isEmpty ? 200 : script.removeFirst()
    }

    func start() async throws {
        let router = Router()
        router.post("/hook") { request, context -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            let status = await self.record(Received(headers: request.headers, body: Data(body.readableBytesView)))
            return Response(status: .init(code: status))
        }
        let (stream, continuation) = AsyncStream<Int>.makeStream()
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) })
        task = Task { try await app.runService() }
        for await port in stream {
            url = "http://127.0.0.1:\(port)/hook"
            break
        }
    }

    func stop() { task?.cancel() }
}

/// Standard Webhooks verification, written from the specification for these tests (not the
/// server's signer): `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), the key being
/// the base64 after `whsec_`; any of the space-separated signatures may match.
func verifies(secret: String, id: String, timestamp: String, body: Data, signatures: String) -> Bool {
    guard secret.hasPrefix("whsec_"), let key = Data(base64Encoded: String(secret.dropFirst(6))) else { return false }
    let mac = HMAC<SHA256>.authenticationCode(for: Data("\(id).\(timestamp).".utf8) + body, using: SymmetricKey(data: key))
    let expected = "v1," + Data(mac).base64EncodedString()
    return signatures.split(separator: " ").contains { $0 == expected }
}

@Suite("Webhooks: signed, retried, observable")
struct WebhookTests {
    static func harness(timeout: Double = 10) async throws -> KilnHarness {
        var configuration = ServerConfiguration()
        configuration.webhooks.allowPrivateURLs = true  // the receiver is on loopback
        configuration.webhooks.timeoutSeconds = timeout
        return try await KilnHarness.make(configuration: configuration)
    }

    func submit(_ api: KilnClient, _ user: String, callback: String, events: String = "") async throws -> String {
        let extra = events.isEmpty ? "" : #","callback_events":[\#(events)]"#
        let answer = try await api.call(
            .post, "/v1/generations", key: user, json: #"{"model":"demo","input":{},"callback_url":"\#(callback)"\#(extra)}"#)
        #expect(answer.status == .created, "\(answer.text)")
        return try answer.decode(Components.Schemas.GenerationObject.self).id
    }

    func deliveries(_ api: KilnClient, _ user: String, _ id: String) async throws -> [Components.Schemas.DeliveryObject] {
        try await api.call(.get, "/v1/generations/\(id)/deliveries", key: user).decode(Components.Schemas.DeliveryList.self).data
    }

    @Test("the reference verifier accepts the Standard Webhooks test vector")
    func referenceVector() {
        #expect(
            verifies(
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: "1614265330",
                body: Data(#"{"test": 2432232314}"#.utf8), signatures: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="))
    }

    @Test("a final state is delivered once, signed with the account's secret, as the generation GET shows")
    func deliveredOnceAndSigned() async throws {
        let receiver = WebhookReceiver()
        try await receiver.start()
        let kiln = try await Self.harness()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let id = try await submit(api, user, callback: await receiver.url)
            #expect(try await kiln.server.webhooks.sendDue() == 0, "nothing to tell while it is queued")
            let lease = try #require(try await api.lease(workerKey, worker: worker))
            #expect(try await api.complete(workerKey, worker, lease).status == .noContent)
            #expect(try await kiln.server.webhooks.sendDue() == 1)
            #expect(try await kiln.server.webhooks.sendDue() == 0, "delivered: not sent again")

            let received = await receiver.received
            #expect(received.count == 1)
            let request = try #require(received.first)
            let secrets = try await api.call(.get, "/v1/webhooks/secrets", key: user).decode(Components.Schemas.WebhookSecretList.self)
            #expect(secrets.data.count == 1)
            let timestamp = try #require(request.headers[HTTPField.Name("webhook-timestamp")!])
            #expect(Int(timestamp) == Int(kiln.clock.now().timeIntervalSince1970))
            #expect(
                verifies(
                    secret: secrets.data[0].secret, id: request.id, timestamp: timestamp, body: request.body,
                    signatures: request.headers[HTTPField.Name("webhook-signature")!] ?? ""))
            #expect(!verifies(secret: "whsec_" + Data(repeating: 1, count: 32).base64EncodedString(), id: request.id,
                              timestamp: timestamp, body: request.body, signatures: request.headers[HTTPField.Name("webhook-signature")!] ?? ""))
            #expect(request.json["type"] as? String == "generation.succeeded")
            #expect(request.json["id"] as? String == request.id && request.id.hasPrefix("msg_"))
            let data = try #require(request.json["data"] as? [String: Any])
            #expect(data["id"] as? String == id && data["state"] as? String == "succeeded")

            let shown = try await deliveries(api, user, id)
            #expect(shown.count == 1)
            #expect(shown.first?.id == request.id && shown.first?.state == .delivered)
            #expect(shown.first?.attempts.map(\.status) == [200])
            #expect(shown.first?.nextAttemptAt == nil)
        }
        await receiver.stop()
    }

    @Test("after 500s, retries come with growing gaps until a 2xx; a 410 stops them")
    func retriesWithGrowingGaps() async throws {
        let receiver = WebhookReceiver(answering: [500, 500, 503, 200, 410])
        try await receiver.start()
        let kiln = try await Self.harness()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let id = try await submit(api, user, callback: await receiver.url)
            _ = try await api.call(.post, "/v1/generations/\(id)/cancel", key: user)
            // Each gap runs from an attempt to the time the next one is due.
            var gaps: [Double] = []
            var attempted = kiln.clock.now()
            for _ in 0..<4 {
                let next = try #require(try await deliveries(api, user, id).first?.nextAttemptAt)
                gaps.append(next.timeIntervalSince(attempted))
                if next > kiln.clock.now() {
                    // (Times on the wire are rounded: a second's margin either side.)
                    kiln.clock.advance(by: next.timeIntervalSince(kiln.clock.now()) - 1)
                    #expect(try await kiln.server.webhooks.sendDue() == 0, "not due a second before")
                    kiln.clock.advance(by: 2)
                }
                attempted = kiln.clock.now()
                #expect(try await kiln.server.webhooks.sendDue() == 1)
            }
            let delivery = try #require(try await deliveries(api, user, id).first)
            #expect(delivery.state == .delivered)
            #expect(delivery.attempts.map(\.status) == [500, 500, 503, 200])
            #expect(Set(await receiver.received.map(\.id)).count == 1, "every attempt under the same webhook-id")
            // The gaps after the 1st, 2nd, 3rd failures: 5 s, 5 min, 30 min, each within ±10 %
            // (and a millisecond, for the rounding on the wire).
            #expect(gaps.count == 4 && abs(gaps[0]) <= 0.001)
            for (gap, nominal) in zip(gaps.dropFirst(), [5.0, 300, 1_800]) {
                #expect(gap >= nominal * 0.9 - 0.001 && gap <= nominal * 1.1 + 0.001, "\(gap) for \(nominal)")
            }

            // The next generation's receiver answers 410: no more attempts, however long we wait.
            let gone = try await submit(api, user, callback: await receiver.url)
            let lease = try #require(try await api.lease(workerKey, worker: worker))
            #expect(lease.job.id == gone)
            #expect(try await api.complete(workerKey, worker, lease).status == .noContent)
            #expect(try await kiln.server.webhooks.sendDue() == 1)
            kiln.clock.advance(by: 3 * 86_400)
            #expect(try await kiln.server.webhooks.sendDue() == 0)
            let stopped = try #require(try await deliveries(api, user, gone).first)
            #expect(stopped.state == .gone && stopped.attempts.map(\.status) == [410])
        }
        await receiver.stop()
    }

    @Test("an unreachable receiver is retried for more than a day, then the delivery fails; an admin can send it again")
    func scheduleRunsOutThenRedeliver() async throws {
        // (A refused connection is retried by the HTTP client until the attempt's time-out.)
        let kiln = try await Self.harness(timeout: 0.5)
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            // Nothing listens on port 9 (discard) on loopback here: each attempt fails to connect.
            let id = try await submit(api, user, callback: "http://127.0.0.1:9/hook")
            _ = try await api.call(.post, "/v1/generations/\(id)/cancel", key: user)
            let start = kiln.clock.now()
            var attempts = 0
            while let next = try await deliveries(api, user, id).first?.nextAttemptAt, attempts < 20 {
                kiln.clock.advance(by: max(0, next.timeIntervalSince(kiln.clock.now())) + 1)
                attempts += try await kiln.server.webhooks.sendDue()
            }
            let failed = try #require(try await deliveries(api, user, id).first)
            #expect(failed.state == .failed)
            #expect(failed.attempts.count == WebhookSchedule.delays.count)
            #expect(failed.attempts.allSatisfy { $0.status == nil && $0.error != nil })
            #expect(kiln.clock.now().timeIntervalSince(start) > 86_400, "retried for more than a day")

            let again = try await api.call(.post, "/v1/admin/deliveries/\(failed.id)/redeliver")
            #expect(again.status == .ok)
            #expect(try again.decode(Components.Schemas.DeliveryObject.self).state == .pending)
            #expect(try await kiln.server.webhooks.sendDue() == 1)
            #expect(try await deliveries(api, user, id).first?.attempts.count == WebhookSchedule.delays.count + 1)
            #expect(try await api.call(.post, "/v1/admin/deliveries/msg_nosuchdelivery/redeliver").status == .notFound)
        }
    }

    @Test("a rotation signs with both secrets while the old one lasts, then with the new one only")
    func rotation() async throws {
        let receiver = WebhookReceiver()
        try await receiver.start()
        let kiln = try await Self.harness()
        try await kiln.withClient { api in
            try await api.model()
            let (account, user) = try await api.account(tier: "api")
            let old = try await api.call(.get, "/v1/webhooks/secrets", key: user).decode(Components.Schemas.WebhookSecretList.self).data[0]
            kiln.clock.advance(by: 1)
            let rotated = try await api.call(.post, "/v1/admin/accounts/\(account)/webhook-secrets", json: #"{"previous_valid_seconds":3600}"#)
            #expect(rotated.status == .created)
            let new = try rotated.decode(Components.Schemas.WebhookSecretObject.self)
            let listed = try await api.call(.get, "/v1/admin/accounts/\(account)/webhook-secrets")
                .decode(Components.Schemas.WebhookSecretList.self).data
            #expect(listed.map(\.id) == [old.id, new.id])
            #expect(listed[0].expiresAt == kiln.clock.now() + 3_600 && listed[1].expiresAt == nil)

            for (hours, expected) in [(0.0, [old, new]), (2.0, [new])] {
                kiln.clock.advance(by: hours * 3_600)
                let id = try await submit(api, user, callback: await receiver.url)
                _ = try await api.call(.post, "/v1/generations/\(id)/cancel", key: user)
                #expect(try await kiln.server.webhooks.sendDue() == 1)
                let request = try #require(await receiver.received.last)
                let signatures = request.headers[HTTPField.Name("webhook-signature")!] ?? ""
                let timestamp = request.headers[HTTPField.Name("webhook-timestamp")!] ?? ""
                #expect(signatures.split(separator: " ").count == expected.count)
                for secret in expected {
                    #expect(verifies(secret: secret.secret, id: request.id, timestamp: timestamp, body: request.body, signatures: signatures))
                }
            }
            #expect(try await api.call(.delete, "/v1/admin/accounts/\(account)/webhook-secrets/\(new.id)").status == .noContent)
            #expect(try await api.call(.delete, "/v1/admin/accounts/\(account)/webhook-secrets/\(new.id)").status == .notFound)
        }
        await receiver.stop()
    }

    @Test("started and progress are sent when asked for, progress coalesced; the final state always")
    func optInEvents() async throws {
        let receiver = WebhookReceiver()
        try await receiver.start()
        let kiln = try await Self.harness()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast()
            let id = try await submit(api, user, callback: await receiver.url, events: #""started","progress""#)
            let lease = try #require(try await api.lease(workerKey, worker: worker))
            #expect(try await api.job(workerKey, worker, lease, "start", json: #"{"token":"\#(lease.lease.token)"}"#).status == .ok)
            for fraction in [0.1, 0.2, 0.3] { _ = try await api.heartbeat(workerKey, worker, lease, fraction: fraction) }
            #expect(try await kiln.server.webhooks.sendDue() == 2, "started, and one progress for the three")
            _ = try await api.heartbeat(workerKey, worker, lease, fraction: 0.6)
            #expect(try await api.complete(workerKey, worker, lease).status == .noContent)
            #expect(try await kiln.server.webhooks.sendDue() == 2)
            // (The attempts of one pass run side by side: their order is not kept.)
            let types = await receiver.received.map { $0.json["type"] as? String ?? "" }
            #expect(types.sorted() == ["generation.progress", "generation.progress", "generation.started", "generation.succeeded"], "\(types)")
            #expect(try await deliveries(api, user, id).count == 4)
        }
        await receiver.stop()
    }

    @Test("callback URLs on loopback, link-local and private networks are refused with 422 naming the field")
    func refusedURLs() async throws {
        let kiln = try await KilnHarness.make()  // the default: private addresses refused
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            for url in [
                "http://127.0.0.1:8080/hook", "http://localhost/hook", "https://10.1.2.3/hook", "http://169.254.169.254/latest",
                "http://[::1]/hook", "http://[fd00::1]/hook", "http://192.168.0.10/hook", "http://[::ffff:127.0.0.1]/hook",
                "ftp://example.com/hook", "not a url",
            ] {
                let answer = try await api.call(
                    .post, "/v1/generations", key: user, json: #"{"model":"demo","input":{},"callback_url":"\#(url)"}"#)
                #expect(answer.status == .unprocessableContent, "\(url)")
                #expect(answer.error?.message.hasPrefix("callback_url:") == true, "\(url): \(answer.text)")
            }
            let public_ = try await api.call(
                .post, "/v1/generations", key: user, json: #"{"model":"demo","input":{},"callback_url":"https://hooks.example.com/kiln"}"#)
            #expect(public_.status == .created)
            let eventsAlone = try await api.call(.post, "/v1/generations", key: user, json: #"{"model":"demo","input":{},"callback_events":["started"]}"#)
            #expect(eventsAlone.status == .unprocessableContent)
            #expect(eventsAlone.error?.message.hasPrefix("callback_events:") == true)
        }
        #expect(try await CallbackURL.privateAddress(of: "localhost") != nil, "a name is checked where it resolves")
        #expect(CallbackURL.isPrivate(literal: "8.8.8.8") == false && CallbackURL.isPrivate(literal: "2001:4860::8888") == false)
    }
}
