import Foundation
import HTTPTypes
import KilnAPI
import KilnCore
import KilnServer
import NIOCore
import Testing

/// The Prometheus text format read back, as a scraper reads it: `# HELP` and `# TYPE` lines, then
/// one sample per line, `name{label="value",…} number`. A line it cannot read fails the test.
struct Exposition {
    var samples: [String: Double] = [:]
    var types: [String: String] = [:]

    init(_ text: String) throws {
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                try #require(parts.count == 4 && ["counter", "gauge", "histogram"].contains(parts[3]), "\(line)")
                types[String(parts[2])] = String(parts[3])
                continue
            }
            if line.hasPrefix("#") { continue }
            let space = try #require(line.lastIndex(of: " "), "\(line)")
            let value = try #require(Double(line[line.index(after: space)...]), "\(line)")
            let series = String(line[..<space])
            let name = String(series.prefix { $0 != "{" })
            try #require(name.range(of: "^[a-zA-Z_:][a-zA-Z0-9_:]*$", options: .regularExpression) != nil, "\(line)")
            if let open = series.firstIndex(of: "{") {
                try #require(series.hasSuffix("}"), "\(line)")
                let labels = series[series.index(after: open)..<series.index(before: series.endIndex)]
                try #require(labels.range(of: #"^([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*$"#, options: .regularExpression) != nil, "\(line)")
            }
            samples[series] = value
        }
    }

    /// The sample of `name` whose labels are exactly `labels` (in any order).
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        for (series, value) in samples where series.prefix(while: { $0 != "{" }) == name {
            var found: [String: String] = [:]
            if let open = series.firstIndex(of: "{") {
                for pair in series[series.index(after: open)..<series.index(before: series.endIndex)].split(separator: ",") {
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    found[String(parts[0])] = String(parts[1].dropFirst().dropLast())
                }
            }
            if found == labels { return value }
        }
        return nil
    }
}

@Suite("Metrics: what ran, as Prometheus reads it")
struct MetricsTests {
    @Test("after a run of known jobs, the counters, histograms and gauges at /metrics equal what happened")
    func countersEqualWhatRan() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let (user, workerKey, worker) = try await api.cast(tier: "api")
            for outcome in ["succeeded", "succeeded", "failed"] {
                _ = try await api.submit(user)
                let lease = try #require(try await api.lease(workerKey, worker: worker))
                #expect(try await api.job(workerKey, worker, lease, "start", json: #"{"token":"\#(lease.lease.token)"}"#).status == .ok)
                kiln.clock.advance(by: 30)
                if outcome == "succeeded" {
                    #expect(try await api.complete(workerKey, worker, lease).status == .noContent)
                } else {
                    let failed = try await api.job(
                        workerKey, worker, lease, "fail",
                        json: #"{"token":"\#(lease.lease.token)","error":{"code":"bad","message":"no"},"retryable":false}"#)
                    #expect(failed.status == .noContent)
                }
            }
            let canceled = try await api.submit(user)
            _ = try await api.call(.post, "/v1/generations/\(canceled.id)/cancel", key: user)
            let (_, free) = try await api.account(tier: "free", name: "free")
            for _ in 0..<20 { _ = try await api.submit(free) }
            #expect(try await api.call(.post, "/v1/generations", key: free, json: #"{"model":"demo","input":{}}"#).status == .tooManyRequests)
            kiln.clock.advance(by: 1_800)  // the free jobs have used half their hour

            let scraped = try await api.call(.get, "/metrics", key: nil)
            #expect(scraped.status == .ok)
            #expect(scraped.headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") == true)
            let metrics = try Exposition(scraped.text)
            #expect(metrics.types["kiln_generations_ended_total"] == "counter")
            #expect(metrics.types["kiln_queue_wait_seconds"] == "histogram")
            #expect(metrics.types["kiln_queued_jobs"] == "gauge")
            let declared = Set(ServerMetrics.families.map(\.name))
            for family in metrics.types.keys { #expect(declared.contains(family), "\(family) is not in ServerMetrics.families") }
            #expect(metrics.value("kiln_generations_ended_total", ["tier": "api", "state": "succeeded"]) == 2)
            #expect(metrics.value("kiln_generations_ended_total", ["tier": "api", "state": "failed"]) == 1)
            #expect(metrics.value("kiln_generations_ended_total", ["tier": "api", "state": "canceled"]) == 1)
            #expect(metrics.value("kiln_dispatches_total", ["tier": "api", "within_promise": "true"]) == 3)
            #expect(metrics.value("kiln_queue_wait_seconds_count", ["tier": "api"]) == 3)
            #expect(metrics.value("kiln_runs_total", ["model": "demo", "version": "none", "outcome": "succeeded"]) == 2)
            #expect(metrics.value("kiln_runs_total", ["model": "demo", "version": "none", "outcome": "failed"]) == 1)
            #expect(metrics.value("kiln_run_seconds_sum", ["model": "demo"]) == 90)
            #expect(metrics.value("kiln_admission_refusals_total", ["tier": "free"]) == 1)
            #expect(metrics.value("kiln_queued_jobs", ["tier": "free"]) == 20)
            #expect(metrics.value("kiln_queued_jobs", ["tier": "api"]) == 0)
            #expect(metrics.value("kiln_queue_oldest_promise_ratio", ["tier": "free"]) == 0.5)
            #expect(metrics.value("kiln_workers", ["cluster": "default", "pool": "", "state": "active"]) == 1)
            #expect(metrics.value("kiln_dispatch_limit", ["cluster": "default"]) == 64)
            #expect(metrics.value("kiln_http_request_duration_seconds_count", ["operation": "createGeneration", "status": "2xx"]) == 24)
            #expect(metrics.value("kiln_http_request_duration_seconds_count", ["operation": "createGeneration", "status": "4xx"]) == 1)
            #expect(metrics.value("kiln_http_request_duration_seconds_count", ["operation": "completeJob", "status": "2xx"]) == 2)
            // Every accepted submission was a change in some commit; commits carry one change or more.
            let commits = try #require(metrics.value("kiln_store_commit_seconds_count"))
            let changes = try #require(metrics.value("kiln_store_commit_changes_sum"))
            #expect(commits >= 1)
            #expect(changes >= 24)
            #expect(changes >= commits)
        }
    }

    @Test("the Grafana board and the alert rules name only metrics the server exposes; each panel is complete")
    func deployFilesNameRealMetrics() throws {
        let repository = URL(filePath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let families = Set(ServerMetrics.families.map(\.name))
        #expect(families.count == ServerMetrics.families.count, "no family is listed twice")
        let board = try Data(contentsOf: repository.appending(path: "deploy/grafana/kiln.json"))
        let alerts = try String(contentsOf: repository.appending(path: "deploy/prometheus/alerts.yaml"), encoding: .utf8)
        for text in [String(decoding: board, as: UTF8.self), alerts] {
            let named = text.matches(of: /kiln_[a-z_]+/).map { String($0.output) }
            #expect(!named.isEmpty)
            for name in named {
                let family = name.replacing(/_(bucket|sum|count)$/, with: "")
                #expect(families.contains(family) || families.contains(name), "\(name) is not a metric of the server")
            }
        }
        let json = try #require(try JSONSerialization.jsonObject(with: board) as? [String: Any])
        let panels = try #require(json["panels"] as? [[String: Any]])
        #expect(Set(panels.compactMap { $0["id"] as? Int }).count == panels.count, "panel ids are unique")
        for panel in panels {
            let targets = try #require(panel["targets"] as? [[String: Any]], "\(panel["title"] ?? "")")
            #expect(!targets.isEmpty && targets.allSatisfy { ($0["expr"] as? String)?.isEmpty == false })
            #expect(panel["gridPos"] is [String: Any] && panel["datasource"] is [String: Any])
        }
    }

    @Test("the dashboard page is served without data, keeps the key out of URLs, and the admin calls it reads carry its fields")
    func dashboard() async throws {
        let kiln = try await KilnHarness.make()
        try await kiln.withClient { api in
            let page = try await api.call(.get, "/dashboard", key: nil)
            #expect(page.status == .ok)
            #expect(page.headers[.contentType] == "text/html; charset=utf-8")
            #expect(page.headers[.contentSecurityPolicy]?.contains("frame-ancestors 'none'") == true)
            #expect(page.headers[.cacheControl] == "no-store")
            let html = page.text
            #expect(html.contains(#"<input id="key" type="password""#), "a login form asks for the key")
            #expect(html.contains("sessionStorage") && !html.contains("localStorage"), "kept for the tab's session only")
            #expect(!html.contains("?key=") && !html.contains("&key="), "never in a URL")
            #expect(!html.contains("http://") || html.contains(#""http://www.w3.org/2000/svg""#), "nothing fetched from elsewhere")

            // What the page's script reads, present in what the server answers.
            let (user, workerKey, worker) = try await api.cast()
            _ = try await api.submit(user)
            _ = try await api.submit(user)
            _ = try await api.submit(user)
            let failing = try #require(try await api.lease(workerKey, worker: worker))
            let failed = try await api.job(
                workerKey, worker, failing, "fail",
                json: #"{"token":"\#(failing.lease.token)","error":{"code":"oom","message":"out of memory at frame 12"},"retryable":false}"#)
            #expect(failed.status == .noContent)
            _ = try #require(try await api.lease(workerKey, worker: worker))
            let queue = try #require(try JSONSerialization.jsonObject(with: Data(try await api.call(.get, "/v1/admin/queue?limit=10").body.readableBytesView)) as? [String: Any])
            for field in ["policy", "queued", "dispatched", "tiers", "rows", "next"] { #expect(queue[field] != nil, "queue.\(field)") }
            let tiers = try #require(queue["tiers"] as? [[String: Any]])
            #expect(tiers.map { $0["name"] as? String } == ["enterprise", "api", "unlimited", "light", "free"])
            #expect(tiers.allSatisfy { $0["max_wait_seconds"] is Double || $0["max_wait_seconds"] is Int })
            let rows = try #require(queue["rows"] as? [[String: Any]])
            #expect(rows.first.map { $0["tier"] != nil && $0["queued"] != nil && $0["max_urgency"] != nil } == true, "\(rows)")
            let next = try #require((queue["next"] as? [[String: Any]])?.first)
            for field in ["id", "tier", "model", "urgency"] { #expect(next[field] != nil, "next.\(field)") }
            let fleet = try #require(try JSONSerialization.jsonObject(with: Data(try await api.call(.get, "/v1/admin/fleet").body.readableBytesView)) as? [String: Any])
            #expect(fleet["pools"] is [Any] && fleet["workers"] is [Any])
            let workers = try #require(try JSONSerialization.jsonObject(with: Data(try await api.call(.get, "/v1/admin/workers").body.readableBytesView)) as? [String: Any])
            let first = try #require((workers["data"] as? [[String: Any]])?.first)
            for field in ["id", "cluster", "accelerator", "gpus", "state"] { #expect(first[field] != nil, "workers.data.\(field)") }
            // The latest failures, across accounts, with their errors; a user key may not list them.
            let failures = try await api.call(.get, "/v1/admin/generations?state=failed&limit=10")
            let listed = try failures.decode(Components.Schemas.GenerationList.self).data
            #expect(listed.map(\.id) == [failing.job.id])
            #expect(listed.first?.error?.message == "out of memory at frame 12")
            #expect(try await api.call(.get, "/v1/admin/generations?state=failed", key: user).status == .forbidden)
            #expect(try await api.call(.get, "/v1/admin/generations?limit=0").status == .badRequest)
            #expect(html.contains(#"id="failures""#) && html.contains("/v1/admin/generations?state=failed"))
        }
    }

    @Test("a server that does not lead serves its own metrics without the queue and fleet gauges; the API waits for a leader")
    func followerMetrics() async throws {
        var configuration = ServerConfiguration()
        configuration.replicas.enabled = true  // and no election runs here: it follows, knowing no leader
        let kiln = try await KilnHarness.make(configuration: configuration)
        try await kiln.withClient { api in
            let scraped = try Exposition(try await api.call(.get, "/metrics", key: nil).text)
            #expect(scraped.value("kiln_leader") == 0)
            #expect(scraped.value("kiln_queued_jobs", ["tier": "api"]) == nil, "the leader's figure, not an empty queue's")
            #expect(try await api.call(.get, "/healthz", key: nil).text.contains(#""role":"follower""#))
            let forwarded = try await api.call(.get, "/v1/admin/queue")
            #expect(forwarded.status == .serviceUnavailable)
            #expect(forwarded.headers[.retryAfter] == "1")
        }
        let alone = try await KilnHarness.make()
        try await alone.withClient { api in
            let scraped = try Exposition(try await api.call(.get, "/metrics", key: nil).text)
            #expect(scraped.value("kiln_leader") == 1)
            #expect(scraped.value("kiln_queued_jobs", ["tier": "api"]) == 0)
        }
    }

    @Test("with metrics.token set, /metrics needs it as a bearer token")
    func scrapeToken() async throws {
        var configuration = ServerConfiguration()
        configuration.metricsToken = "scrape-me"
        let kiln = try await KilnHarness.make(configuration: configuration)
        try await kiln.withClient { (api: KilnClient) async throws in
            #expect(try await api.call(.get, "/metrics", key: nil).status == .unauthorized)
            #expect(try await api.call(.get, "/metrics", key: "wrong").status == .unauthorized)
            #expect(try await api.call(.get, "/metrics", key: "scrape-me").status == .ok)
        }
    }
}
