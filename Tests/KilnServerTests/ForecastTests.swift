import Foundation
import HTTPTypes
import KilnAPI
import KilnCore
import KilnServer
import Testing

@Suite("Forecast: what if we add GPUs")
struct ForecastTests {
    @Test("from the live queue and the last hour's arrivals: more GPUs keep the promise the fleet as it is breaks")
    func forecastFromTheLiveQueue() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "api")
            let workerKey = try await api.workerKey()
            let worker = try await api.register(workerKey, cluster: "default", accelerator: "h100", gpus: 1)
            // One succeeded run of 60 s: the model's run time.
            _ = try await api.submit(user)
            let lease = try #require(try await api.lease(workerKey, worker: worker))
            #expect(try await api.job(workerKey, worker, lease, "start", json: #"{"token":"\#(lease.lease.token)"}"#).status == .ok)
            kiln.clock.advance(by: 60)
            #expect(try await api.complete(workerKey, worker, lease).status == .noContent)
            // 40 more queued over the next 10 minutes: 41 arrivals in 11 minutes, ~224 an hour, ~3.7
            // GPUs of demand at 60 s each against the one there is.
            for _ in 0..<40 {
                _ = try await api.submit(user)
                kiln.clock.advance(by: 15)
            }

            let response = try await api.call(.post, "/v1/admin/forecast", json: #"{"add_gpus": 8, "hours": 1}"#)
            #expect(response.status == .ok, "\(response.text)")
            let forecast = try response.decode(Components.Schemas.Forecast.self)
            #expect(forecast.inputs.queued == 40)
            #expect(forecast.inputs.gpus == 1)
            #expect(forecast.inputs.runSeconds.additionalProperties["demo"] == 60)
            #expect(abs(forecast.inputs.arrivalsPerHour - 41 * 3600 / forecast.inputs.arrivalWindowSeconds) < 1e-6)
            #expect(forecast.now.gpus == 1)
            #expect(forecast.added.gpus == 9)
            let now = try #require(forecast.now.tiers.first { $0.name == "api" })
            let added = try #require(forecast.added.tiers.first { $0.name == "api" })
            #expect(now.attainment < 0.1)  // 40 queued for a 120 s promise on one GPU
            #expect(now.queuedAtEnd > 100)
            #expect(added.queuedAtEnd < now.queuedAtEnd)
            #expect(added.attainment > now.attainment)
            #expect(forecast.now.tiers.map(\.name) == ["enterprise", "api", "unlimited", "light", "free"])

            // Asking twice gives the same answer: the runs are deterministic.
            let again = try await api.call(.post, "/v1/admin/forecast", json: #"{"add_gpus": 8, "hours": 1}"#)
            #expect(try again.decode(Components.Schemas.Forecast.self).added == forecast.added)
        }
    }

    @Test("bad requests name the field and change nothing; a user key is refused")
    func refusals() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, _) = try await api.cast()
            _ = workerKey
            for (body, field) in [
                (#"{"add_gpus": -1}"#, "add_gpus"), (#"{"add_gpus": 1, "hours": 0}"#, "hours"), (#"{"add_gpus": 1, "hours": 25}"#, "hours"),
                (#"{"add_gpus": 1, "pool": "nowhere"}"#, "pool"), (#"{"hours": 1}"#, "add_gpus"),
            ] {
                let response = try await api.call(.post, "/v1/admin/forecast", json: body)
                #expect(response.status == .badRequest, "\(body): \(response.text)")
                #expect(response.error?.message.contains(field) == true, "\(body): \(response.text)")
            }
            #expect(try await api.call(.post, "/v1/admin/forecast", key: user, json: #"{"add_gpus": 1}"#).status == .forbidden)
        }
    }
}

@Suite("Queue history: the dashboard's last hour")
struct QueueHistoryTests {
    @Test("samples per tier, oldest first, for the last hour only")
    func history() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            try await api.model()
            let (_, user) = try await api.account(tier: "free")
            await kiln.server.services.dispatcher.sample()  // empty
            _ = try await api.submit(user)
            kiln.clock.advance(by: 1_800)
            await kiln.server.services.dispatcher.sample()  // one free job at half its hour
            kiln.clock.advance(by: 1_900)
            _ = try await api.submit(user)
            await kiln.server.services.dispatcher.sample()  // the first sample is past the hour now
            let answer = try await api.call(.get, "/v1/admin/queue/history")
            let history = try answer.decode(Components.Schemas.QueueHistory.self)
            #expect(history.intervalSeconds == 30)
            #expect(history.samples.count == 2)
            let first = try #require(history.samples.first)
            #expect(first.tiers.map(\.name) == ["enterprise", "api", "unlimited", "light", "free"])
            let free = try #require(first.tiers.last)
            #expect(free.queued == 1 && free.oldestShare == 0.5)
            let last = try #require(history.samples.last?.tiers.last)
            #expect(last.queued == 2 && abs(last.oldestShare - 3_700.0 / 3_600) < 1e-9)
            #expect(try await api.call(.get, "/v1/admin/queue/history", key: user).status == .forbidden)
        }
    }
}
