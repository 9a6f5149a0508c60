import AsyncHTTPClient
import Crypto
import Foundation
import KilnAPI
import KilnCore
import KilnStore
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle

/// Delivers the store's pending webhook deliveries, apart from the job path: a queue in the store,
/// drained by this service. Each attempt is signed (Standard Webhooks), bounded in time, and
/// recorded with what follows from it (``WebhookSchedule``); a delivery is claimed for the length
/// of an attempt before it is sent, so a server that dies mid-attempt leaves it to be tried again.
public final class WebhookSender: Service, Sendable {
    let services: KilnServices
    let pollInterval: Duration
    /// Of a receiver's answer, this much is read; the rest is dropped.
    static let maxResponseBytes = 64 << 10

    public init(services: KilnServices, pollInterval: Duration = .milliseconds(250)) {
        self.services = services
        self.pollInterval = pollInterval
    }

    var settings: ServerConfiguration.Webhooks { services.configuration.webhooks }

    /// An HTTP client for the receivers, shut down after `body`.
    func withClient<T>(_ body: (HTTPClient) async throws -> T) async rethrows -> T {
        var configuration = HTTPClient.Configuration()
        // A redirect could lead anywhere, private addresses included: a receiver answers itself.
        configuration.redirectConfiguration = .disallow
        let timeout = TimeAmount.milliseconds(Int64(settings.timeoutSeconds * 1000))
        configuration.timeout = .init(connect: timeout, read: timeout)
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        do {
            let result = try await body(client)
            try? await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    public func run() async throws {
        await withClient { client in await run(client) }
    }

    func run(_ client: HTTPClient) async {
        let inFlight = InFlight()
        await withDiscardingTaskGroup { group in
            while !Task.isShuttingDownGracefully, !Task.isCancelled {
                let free = settings.maxInFlight - (await inFlight.count)
                if free > 0 {
                    do {
                        for delivery in try await claim(limit: free) {
                            await inFlight.add()
                            group.addTask {
                                await self.attempt(delivery, client)
                                await inFlight.remove()
                            }
                        }
                    } catch {
                        services.logger.error("webhooks: \(error)")
                    }
                }
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.pollInterval) }
            }
        }
    }

    /// One pass for tests: every due delivery, attempted, awaited.
    /// - Returns: how many were attempted.
    @discardableResult
    public func sendDue() async throws -> Int {
        let due = try await claim(limit: settings.maxInFlight)
        await withClient { client in
            await withDiscardingTaskGroup { group in
                for delivery in due { group.addTask { await self.attempt(delivery, client) } }
            }
        }
        return due.count
    }

    func claim(limit: Int) async throws -> [WebhookDelivery] {
        let now = services.clock.now()
        // Claimed past the attempt's own time-out, so that a live attempt is never sent twice.
        return try await services.store.claimDueDeliveries(at: now, claimUntil: now + settings.timeoutSeconds + 30, limit: limit)
    }

    func attempt(_ delivery: WebhookDelivery, _ client: HTTPClient) async {
        let started = services.clock.now()
        let clock = ContinuousClock()
        let begin = clock.now
        var status: Int?
        var failure: String?
        var refused = false
        do {
            status = try await send(delivery, at: started, client)
        } catch let error as Refused {
            (failure, refused) = ("refused: \(error.reason)", true)
        } catch {
            failure = Self.describe(error)
        }
        let duration = begin.duration(to: clock.now)
        let outcome: WebhookOutcome
        switch status {
        case .some(200..<300): outcome = .delivered
        case .some(410): outcome = .gone
        default:
            if refused {
                outcome = .failed
            } else if let delay = WebhookSchedule.delay(after: delivery.attempts.count + 1, jitter: Double.random(in: 0..<1)) {
                outcome = .retry(at: started + delay)
            } else {
                outcome = .failed
            }
        }
        let attempt = WebhookAttempt(
            at: started, status: status, error: failure,
            durationSeconds: duration.seconds)
        do {
            try await services.store.recordDeliveryAttempt(delivery.id, attempt, outcome: outcome)
        } catch {
            services.logger.error("webhooks: cannot record an attempt of \(delivery.id): \(error)")
        }
        if case .failed = outcome {
            services.logger.warning(
                "webhook delivery failed for good",
                metadata: ["delivery": "\(delivery.id)", "generation": "\(delivery.generationID)", "error": "\(failure ?? "\(status ?? 0)")"])
        }
    }

    /// Sends one attempt. - Returns: the receiver's status.
    func send(_ delivery: WebhookDelivery, at now: Date, _ client: HTTPClient) async throws -> Int {
        guard let url = URL(string: delivery.url), let host = url.host else { throw Refused(reason: "not a URL") }
        if !settings.allowPrivateURLs, let address = try await CallbackURL.privateAddress(of: host) {
            throw Refused(reason: "'\(host)' resolves to \(address), a private address this server does not call")
        }
        let body = try await payload(delivery)
        var request = HTTPClientRequest(url: delivery.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "Kiln-Webhooks/1")
        for (name, value) in try await signatureHeaders(delivery, body: body, at: now) { request.headers.add(name: name, value: value) }
        request.body = .bytes(ByteBuffer(bytes: body))
        let response = try await client.execute(request, timeout: .milliseconds(Int64(settings.timeoutSeconds * 1000)))
        var read = 0
        for try await chunk in response.body {
            read += chunk.readableBytes
            if read > Self.maxResponseBytes { break }
        }
        return Int(response.status.code)
    }

    /// `{"id", "type", "timestamp", "data"}`, `data` the generation as the API shows it now.
    func payload(_ delivery: WebhookDelivery) async throws -> Data {
        guard let generation = try await services.store.generation(delivery.generationID) else {
            throw Refused(reason: "generation '\(delivery.generationID)' no longer exists")
        }
        let event = Components.Schemas.WebhookEventObject(
            id: delivery.id, _type: .init(rawValue: delivery.type) ?? .generation_succeeded, timestamp: delivery.createdAt,
            data: try await services.render(generation))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(try RFC3339Transcoder().encode(date))
        }
        return try encoder.encode(event)
    }

    /// `webhook-id`, `webhook-timestamp`, and a `v1,` signature with each of the account's valid
    /// secrets (one made now if it has none).
    func signatureHeaders(_ delivery: WebhookDelivery, body: Data, at now: Date) async throws -> [(String, String)] {
        var secrets = try await services.store.webhookSecrets(of: delivery.accountID, at: now)
        if secrets.isEmpty {
            let secret = WebhookSecret.random(for: delivery.accountID, at: now)
            try await services.store.createWebhookSecret(secret, othersValidUntil: nil)
            secrets = [secret]
        }
        let timestamp = String(Int(now.timeIntervalSince1970))
        let signed = Data("\(delivery.id).\(timestamp).".utf8) + body
        let signatures = secrets.compactMap(\.key).map { key in
            "v1," + Data(HMAC<SHA256>.authenticationCode(for: signed, using: SymmetricKey(data: key))).base64EncodedString()
        }
        return [("webhook-id", delivery.id), ("webhook-timestamp", timestamp), ("webhook-signature", signatures.joined(separator: " "))]
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case let error as KilnError: error.message
        case let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout:
            "timed out"
        default: "\(error)"
        }
    }

    /// A delivery that must not be sent at all: it fails at once, without retries.
    struct Refused: Error {
        let reason: String
    }

    actor InFlight {
        var count = 0
        func add() { count += 1 }
        func remove() { count -= 1 }
    }
}
