import Foundation
import Hummingbird
import HummingbirdTesting
import KilnAPI
import KilnCore
import KilnFleet
import KilnServer
import Logging
import NIOCore
import Testing
import Yams

/// A **fake Kubernetes API server**, named so: no API server can run on this machine. It answers
/// the four calls the `kubernetes` provider makes, as the API server does (paths, JSON merge
/// patches, bearer token, the `scale` subresource with its selector), and plays the ReplicaSet:
/// when `replicas` rises it makes pods, when it falls it deletes the pods of lowest
/// `controller.kubernetes.io/pod-deletion-cost`, newest first among equals. Failures are injected
/// per call.
actor FakeKubernetes {
    struct Pod {
        var name: String
        var annotations: [String: String] = [:]
        var created: Int
    }

    static let token = "fake-service-account-token"
    let namespace = "kiln"
    let deployment: String
    private(set) var replicas = 0
    private(set) var pods: [String: Pod] = [:]
    private var made = 0
    /// Calls to fail, by "METHOD path-prefix": the statuses to answer, in order.
    private var failures: [String: [Int]] = [:]
    private(set) var calls: [String] = []

    init(deployment: String, replicas: Int = 0) {
        self.deployment = deployment
        Self.replicaSet(&pods, made: &made, replicas: replicas, deployment: deployment)
        self.replicas = replicas
    }

    var podNames: [String] { pods.keys.sorted() }

    func fail(_ method: String, _ pathPrefix: String, with statuses: [Int]) { failures["\(method) \(pathPrefix)", default: []] += statuses }

    /// The next injected failure for this call, if any.
    private func failure(_ method: String, _ path: String) -> Int? {
        for (key, statuses) in failures where !statuses.isEmpty {
            let parts = key.split(separator: " ", maxSplits: 1).map(String.init)
            if parts[0] == method, path.hasPrefix(parts[1]) {
                failures[key]?.removeFirst()
                return statuses[0]
            }
        }
        return nil
    }

    private func setReplicas(_ count: Int) {
        replicas = count
        Self.replicaSet(&pods, made: &made, replicas: count, deployment: deployment)
    }

    /// What the ReplicaSet does: makes pods up to `replicas`, or deletes the cheapest.
    private static func replicaSet(_ pods: inout [String: Pod], made: inout Int, replicas: Int, deployment: String) {
        while pods.count < replicas {
            made += 1
            let name = "\(deployment)-\(String(made, radix: 36))x\(made)"
            pods[name] = Pod(name: name, created: made)
        }
        if pods.count > replicas {
            let ranked = pods.values.sorted { a, b in
                let ca = Int(a.annotations[KubernetesProvider.deletionCost] ?? "0") ?? 0
                let cb = Int(b.annotations[KubernetesProvider.deletionCost] ?? "0") ?? 0
                return ca != cb ? ca < cb : a.created > b.created
            }
            for pod in ranked.prefix(pods.count - replicas) { pods[pod.name] = nil }
        }
    }

    /// One call: its status and JSON body.
    func handle(method: String, path: String, query: String?, authorization: String?, body: Data) -> (Int, Data) {
        let (status, json) = answer(method: method, path: path, query: query, authorization: authorization, body: body)
        return (status, (try? JSONSerialization.data(withJSONObject: json)) ?? Data())
    }

    private func answer(method: String, path: String, query: String?, authorization: String?, body: Data) -> (Int, [String: Any]) {
        calls.append("\(method) \(path)")
        guard authorization == "Bearer \(Self.token)" else { return (401, ["kind": "Status", "message": "Unauthorized"]) }
        if let status = failure(method, path) { return (status, ["kind": "Status", "message": "injected failure \(status)"]) }
        let scalePath = "/apis/apps/v1/namespaces/\(namespace)/deployments/\(deployment)/scale"
        let podsPath = "/api/v1/namespaces/\(namespace)/pods"
        let patch = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:]
        switch (method, path) {
        case ("GET", scalePath), ("PATCH", scalePath):
            if method == "PATCH" {
                guard let spec = patch["spec"] as? [String: Any], let count = spec["replicas"] as? Int else {
                    return (422, ["kind": "Status", "message": "spec.replicas is required"])
                }
                setReplicas(count)
            }
            return (200, [
                "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": ["name": deployment, "namespace": namespace],
                "spec": ["replicas": replicas], "status": ["replicas": pods.count, "selector": "app=\(deployment)"],
            ])
        case ("GET", podsPath):
            guard query?.removingPercentEncoding == "labelSelector=app=\(deployment)" else { return (400, ["kind": "Status", "message": "bad selector \(query ?? "")"]) }
            let items = pods.values.sorted { $0.created < $1.created }.map { pod -> [String: Any] in
                ["metadata": ["name": pod.name, "annotations": pod.annotations], "status": ["phase": "Running"]]
            }
            return (200, ["kind": "PodList", "items": items])
        case ("PATCH", _) where path.hasPrefix(podsPath + "/"):
            let name = String(path.dropFirst(podsPath.count + 1))
            guard pods[name] != nil else { return (404, ["kind": "Status", "message": "pods \"\(name)\" not found"]) }
            let annotations = ((patch["metadata"] as? [String: Any])?["annotations"] as? [String: String]) ?? [:]
            pods[name]?.annotations.merge(annotations) { _, new in new }
            return (200, ["metadata": ["name": name, "annotations": pods[name]?.annotations ?? [:]]])
        default:
            return (404, ["kind": "Status", "message": "no route \(method) \(path)"])
        }
    }

    /// Serves the fake on a loopback port while `body` runs.
    func serve<T: Sendable>(_ body: @Sendable (_ url: String) async throws -> T) async throws -> T {
        let router = Router()
        router.on("**", method: .get) { request, _ in try await Self.respond(self, request) }
        router.on("**", method: .patch) { request, _ in try await Self.respond(self, request) }
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        return try await app.test(.live) { client in
            try await body("http://127.0.0.1:\(try #require(client.port))")
        }
    }

    private static func respond(_ fake: FakeKubernetes, _ request: Request) async throws -> Response {
        let data = Data(try await request.body.collect(upTo: 1 << 20).readableBytesView)
        let (status, json) = await fake.handle(
            method: request.method.rawValue, path: request.uri.path, query: request.uri.query,
            authorization: request.headers[.authorization], body: data)
        return Response(
            status: .init(code: status), headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: [UInt8](json))))
    }
}

@Suite("Kubernetes provider against a fake API server")
struct KubernetesProviderTests {
    static let pool = ServerConfiguration.Pool(
        provider: .kubernetes,
        spec: CapacityPool(name: "h100", accelerator: "h100", gpusPerWorker: 1, maxWorkers: 8),
        kubernetes: .init(deployment: "kiln-worker"))

    /// The failures these tests inject are logged as errors: expected here, so not shown.
    static var silent: Logger {
        var logger = Logger(label: "kiln-test")
        logger.logLevel = .critical
        return logger
    }

    /// A provider of the fake server, following the pool of `Self.pool`.
    static func provider(_ url: String) async throws -> KubernetesProvider {
        let token = FileManager.default.temporaryDirectory.appending(path: "kiln-k8s-token-\(UUID().uuidString)")
        try Data((FakeKubernetes.token + "\n").utf8).write(to: token)
        let provider = try KubernetesProvider(
            settings: .init(apiServer: url, namespace: "kiln", tokenFile: token), logger: Self.silent)
        await provider.follow([Self.pool])
        return provider
    }

    @Test("scaling up raises replicas through the scale subresource and answers with the new pods, followed by the Deployment's selector")
    func scalesUp() async throws {
        let fake = FakeKubernetes(deployment: "kiln-worker", replicas: 1)
        try await fake.serve { url in
            let provider = try await Self.provider(url)
            let before = await fake.podNames
            let launched = try await provider.provision(2, pool: Self.pool)
            #expect(await fake.replicas == 3)
            #expect(launched.count == 2)
            #expect(Set(launched).isDisjoint(with: before), "the new pods, not the one there before")
            let running = try #require(await provider.running())
            #expect(Set(running.keys) == Set(await fake.podNames))
            #expect(running.values.allSatisfy { $0 == "h100" })
        }
    }

    @Test("stopping a pod marks it with the lowest deletion cost, then lowers replicas: that pod goes, no other")
    func scalesDownTheChosenPod() async throws {
        let fake = FakeKubernetes(deployment: "kiln-worker", replicas: 3)
        try await fake.serve { url in
            let provider = try await Self.provider(url)
            let pods = await fake.podNames
            // The oldest pod: the ReplicaSet would take the newest one unless told otherwise.
            let chosen = pods.sorted()[0]
            await provider.stop(launch: chosen, graceful: true)
            #expect(await fake.replicas == 2)
            #expect(await fake.podNames == pods.filter { $0 != chosen })
            let calls = await fake.calls
            let marked = try #require(calls.firstIndex(of: "PATCH /api/v1/namespaces/kiln/pods/\(chosen)"))
            let scaled = try #require(calls.lastIndex(of: "PATCH /apis/apps/v1/namespaces/kiln/deployments/kiln-worker/scale"))
            #expect(marked < scaled, "marked before replicas went down")
            // A pod that is gone already changes nothing.
            await provider.stop(launch: chosen, graceful: true)
            #expect(await fake.replicas == 2)
        }
    }

    @Test("an API error changes nothing a later call does not put right, and no pod goes before it is marked")
    func apiErrorsAreRepaired() async throws {
        let fake = FakeKubernetes(deployment: "kiln-worker", replicas: 3)
        try await fake.serve { url in
            let provider = try await Self.provider(url)
            let pods = await fake.podNames.sorted()
            // The mark fails: replicas must not go down (the ReplicaSet would pick another pod).
            await fake.fail("PATCH", "/api/v1/namespaces/kiln/pods/", with: [500])
            await provider.stop(launch: pods[0], graceful: true)
            #expect(await fake.replicas == 3)
            #expect(await fake.podNames == pods)
            // The next tick's call marks it and scales down: the chosen pod goes.
            _ = await provider.running()
            #expect(await fake.replicas == 2)
            #expect(await fake.podNames == Array(pods.dropFirst()))

            // The scale-down conflicts (someone else wrote the Deployment): the pod stays marked
            // and goes at the next call.
            await fake.fail("PATCH", "/apis/apps/v1/namespaces/kiln/deployments/kiln-worker/scale", with: [409])
            await provider.stop(launch: pods[1], graceful: true)
            #expect(await fake.replicas == 2)
            let running = try #require(await provider.running())
            #expect(await fake.replicas == 1)
            #expect(Set(running.keys) == [pods[2]])

            // A scale-up that fails is retried too; the pods it makes count as the pool's.
            await fake.fail("PATCH", "/apis/apps/v1/namespaces/kiln/deployments/kiln-worker/scale", with: [500])
            await #expect(throws: KilnError.self) { try await provider.provision(1, pool: Self.pool) }
            #expect(await fake.replicas == 1)
            let after = try #require(await provider.running())
            #expect(await fake.replicas == 2)
            #expect(after.count == 2)
            // The API server down altogether: unknown, not empty.
            await fake.fail("GET", "/api/v1/namespaces/kiln/pods", with: [503, 503])
            #expect(await provider.running() == nil)
        }
    }

    @Test("a wrong token is refused by the API server, and the provider says so instead of guessing")
    func wrongToken() async throws {
        let fake = FakeKubernetes(deployment: "kiln-worker", replicas: 1)
        try await fake.serve { url in
            let provider = try KubernetesProvider(settings: .init(apiServer: url, namespace: "kiln"), logger: Self.silent)
            await provider.follow([Self.pool])
            await #expect(throws: KilnError.self) { try await provider.provision(1, pool: Self.pool) }
            #expect(await provider.running() == nil)
            #expect(await fake.replicas == 1)
        }
    }

    @Test("through the fleet service: a backlog scales the Deployment up, its pods register by name, an idle one is let go by name")
    func fleetServiceOnKubernetes() async throws {
        let fake = FakeKubernetes(deployment: "kiln-worker", replicas: 0)
        try await fake.serve { url in
            let provider = try await Self.provider(url)
            var configuration = ServerConfiguration()
            var pool = Self.pool
            pool.spec.accelerator = "cpu"
            pool.spec.gpusPerWorker = 0
            pool.spec.maxWorkers = 2
            pool.spec.cooldownSeconds = 30
            configuration.pools = [pool]
            configuration.fleet.controller.dwellSeconds = 0
            let kiln = try await KilnHarness.make(configuration: configuration, providers: [.kubernetes: provider])
            try await kiln.withClient { api in
                try await api.model("a")
                let (_, user) = try await api.account(tier: "api")
                let key = try await api.workerKey()
                let client = api.api(user)
                for _ in 0..<6 { _ = try await api.submit(user, model: "a") }
                kiln.clock.advance(by: 30)
                // The API server fails the first scale-up: nothing is lost, the next tick repairs it.
                await fake.fail("PATCH", "/apis/apps/v1/namespaces/kiln/deployments/kiln-worker/scale", with: [500])
                try await kiln.server.services.fleet.tick()
                #expect(await fake.replicas == 0)
                kiln.clock.advance(by: 5)
                try await kiln.server.services.fleet.tick()
                #expect(await fake.replicas == 2)
                kiln.clock.advance(by: 5)
                try await kiln.server.services.fleet.tick()
                #expect(await fake.replicas == 2, "pods on their way count: no second scale-up")
                // The pods register as `kiln worker --label kiln.launch=$(POD_NAME)` would.
                var workers: [String: String] = [:]
                let agent = api.api(key)
                for pod in await fake.podNames {
                    workers[pod] = try await agent {
                        try await $0.registerWorker(
                            body: .json(
                                .init(
                                    cluster: "default", accelerator: "cpu", gpus: 0,
                                    labels: .init(additionalProperties: ["kiln.launch": pod]), pool: "h100"))
                        ).created.body.json.id
                    }
                }
                try await kiln.server.services.fleet.tick()
                let pods = await fake.podNames
                let busy = try #require(workers[pods[0]])
                let held = try #require(try await api.lease(key, worker: busy))
                // The rest of the work goes away; after the cool-down the idle pod, not the busy one, goes.
                let queued = try await client { try await $0.listGenerations(query: .init(state: .queued, limit: 100)).ok.body.json.data }
                for generation in queued { _ = try await client { try await $0.cancelGeneration(path: .init(id: generation.id)).ok } }
                kiln.clock.advance(by: 5)
                try await kiln.server.services.fleet.tick()
                kiln.clock.advance(by: 31)
                try await kiln.server.services.fleet.tick()
                #expect(await fake.replicas == 1)
                #expect(await fake.podNames == [pods[0]], "the busy pod stays")
                #expect(try await api.generation(user, held.job.id).state == .running)
            }
            // Every call made is one the Role in deploy/kubernetes grants the server.
            let granted = try Self.grantedByRole()
            for call in Set(await fake.calls) {
                let needed = Self.permission(for: call)
                #expect(needed.map { granted.contains($0) } == true, "\(call) needs \(needed ?? "an unknown permission")")
            }
        }
    }

    /// "group/resource verb" for each rule of the Role that `deploy/kubernetes/server-rbac.yaml` defines.
    static func grantedByRole() throws -> Set<String> {
        let file = URL(filePath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appending(path: "deploy/kubernetes/server-rbac.yaml")
        var granted: Set<String> = []
        for document in try Yams.load_all(yaml: String(contentsOf: file, encoding: .utf8)) {
            guard let object = document as? [String: Any], object["kind"] as? String == "Role" else { continue }
            for rule in object["rules"] as? [[String: Any]] ?? [] {
                for group in rule["apiGroups"] as? [String] ?? [] {
                    for resource in rule["resources"] as? [String] ?? [] {
                        for verb in rule["verbs"] as? [String] ?? [] { granted.insert("\(group)/\(resource) \(verb)") }
                    }
                }
            }
        }
        return granted
    }

    /// The RBAC permission an API call needs ("group/resource verb").
    static func permission(for call: String) -> String? {
        let parts = call.split(separator: " ").map(String.init)
        guard parts.count == 2 else { return nil }
        let (method, path) = (parts[0], parts[1])
        if path.hasPrefix("/apis/apps/v1/"), path.hasSuffix("/scale") { return "apps/deployments/scale \(method == "GET" ? "get" : "patch")" }
        if path.hasPrefix("/api/v1/"), path.hasSuffix("/pods"), method == "GET" { return "/pods list" }
        if path.hasPrefix("/api/v1/"), path.contains("/pods/"), method == "PATCH" { return "/pods patch" }
        return nil
    }
}
