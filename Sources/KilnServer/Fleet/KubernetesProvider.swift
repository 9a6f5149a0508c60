import AsyncHTTPClient
import Foundation
import KilnCore
import KilnFleet
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL

/// `kubernetes`: a pool is a Deployment whose pods run `kiln worker` (DESIGN §5).
///
/// Kiln changes only the Deployment's `replicas`, through its `scale` subresource; the pod
/// template (image, GPUs, the worker key from a Secret) is the operator's. Each pod registers with
/// its own name as its launch id (`--label kiln.launch=$(POD_NAME)`), so the pods Kiln follows are
/// the Deployment's, found with the selector the `scale` subresource reports.
///
/// Shrinking takes a chosen pod, never one the ReplicaSet picks: the pod is first marked with
/// `controller.kubernetes.io/pod-deletion-cost` below every other, then `replicas` goes down by
/// one, and the ReplicaSet deletes the cheapest pod. Its kubelet sends SIGTERM, on which
/// `kiln worker` drains (the pod's `terminationGracePeriodSeconds` should cover the pool's drain
/// grace).
///
/// The provider keeps the size it wants for each Deployment and the pods it marked, and brings the
/// cluster to them on every call: an API error (a 409 conflict, a 500, a timeout) changes nothing
/// that a later tick does not put right, and a pod is never let go before it is marked.
public actor KubernetesProvider: CapacityProvider {
    public struct Settings: Sendable {
        /// The API server: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` in a pod.
        public var apiServer: String
        public var namespace: String
        /// The service account's token, read again on every request (Kubernetes rotates it).
        public var tokenFile: URL?
        /// The CA that signs the API server's certificate; nil: the system's roots.
        public var caFile: URL?

        public init(apiServer: String, namespace: String, tokenFile: URL? = nil, caFile: URL? = nil) {
            self.apiServer = apiServer
            self.namespace = namespace
            self.tokenFile = tokenFile
            self.caFile = caFile
        }

        /// Where a pod finds its service account.
        public static let serviceAccount = URL(filePath: "/var/run/secrets/kubernetes.io/serviceaccount", directoryHint: .isDirectory)

        /// The in-cluster settings, each overridable: the API server from the environment Kubernetes
        /// gives every pod, the namespace, token and CA from the service account's folder.
        public static func inCluster(
            apiServer: String? = nil, namespace: String? = nil, tokenFile: String? = nil, caFile: String? = nil,
            environment: [String: String] = ProcessInfo.processInfo.environment
        ) throws -> Settings {
            let account = serviceAccount
            var server = apiServer
            if server == nil, let host = environment["KUBERNETES_SERVICE_HOST"] {
                let port = environment["KUBERNETES_SERVICE_PORT"] ?? "443"
                server = "https://\(host.contains(":") ? "[\(host)]" : host):\(port)"
            }
            guard let server else {
                throw KilnError(.invalidInput, "kubernetes.api_server: not set, and this server does not run in a pod (no KUBERNETES_SERVICE_HOST)")
            }
            let namespaceFile = account.appending(path: "namespace")
            guard
                let namespace = namespace
                    ?? (try? String(contentsOf: namespaceFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            else {
                throw KilnError(.invalidInput, "kubernetes.namespace: not set, and \(namespaceFile.path) cannot be read")
            }
            let defaultToken = account.appending(path: "token")
            let defaultCA = account.appending(path: "ca.crt")
            return Settings(
                apiServer: server, namespace: namespace,
                tokenFile: tokenFile.map { URL(filePath: $0) } ?? (FileManager.default.fileExists(atPath: defaultToken.path) ? defaultToken : nil),
                caFile: caFile.map { URL(filePath: $0) } ?? (FileManager.default.fileExists(atPath: defaultCA.path) ? defaultCA : nil))
        }
    }

    /// What the provider wants of one Deployment.
    struct Target {
        var pool: String
        /// `spec.replicas` it wants; nil until read from the cluster.
        var replicas: Int?
        /// Pods to let go: marked (or still to mark), then taken by the next scale-down.
        var leaving: Set<String> = []
        /// Of those, the ones already marked.
        var marked: Set<String> = []
        /// The label selector of its pods, from the `scale` subresource.
        var selector: String?
    }

    public static let deletionCost = "controller.kubernetes.io/pod-deletion-cost"
    /// The cost a leaving pod is marked with: below any an operator would set.
    static let leavingCost = "-2147483647"

    private let settings: Settings
    private let logger: Logger
    private let client: HTTPClient
    /// By Deployment name.
    private var targets: [String: Target] = [:]

    public init(settings: Settings, logger: Logger) throws {
        self.settings = settings
        self.logger = logger
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(15))
        if let caFile = settings.caFile {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .file(caFile.path)
            configuration.tlsConfiguration = tls
        }
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    deinit {
        try? client.syncShutdown()
    }

    // MARK: - CapacityProvider

    /// Raises the Deployment's replicas by `count` and answers with the pods that appeared for them
    /// (within a few seconds; pods the ReplicaSet makes later are found by ``running()``).
    public func provision(_ count: Int, pool: ServerConfiguration.Pool) async throws -> [String] {
        guard let deployment = pool.kubernetes?.deployment, count > 0 else { return [] }
        let before = Set(try await pods(of: deployment).keys)
        var target = targets[deployment] ?? Target(pool: pool.spec.name)
        target.pool = pool.spec.name
        let current = try await readScale(deployment, into: &target)
        target.replicas = (target.replicas ?? current) + count
        targets[deployment] = target
        try await reconcile(deployment)
        var appeared: [String] = []
        for _ in 0..<20 {
            appeared = try await pods(of: deployment).filter { !before.contains($0.key) && !$0.value.terminating }.keys.sorted()
            if appeared.count >= count { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        logger.info("kubernetes: scaled up", metadata: ["deployment": "\(deployment)", "replicas": "\(target.replicas ?? 0)"])
        return Array(appeared.prefix(count))
    }

    /// Lets `launch` (a pod) go: marks it as the one to delete, then lowers `replicas` by one. A pod
    /// that is gone or already leaving changes nothing; `graceful` is how every pod goes (its
    /// kubelet sends SIGTERM, and the worker drains).
    public func stop(launch: String, graceful: Bool) async {
        do {
            guard let deployment = try await deployment(of: launch) else { return }
            guard var target = targets[deployment], !target.leaving.contains(launch) else { return }
            let current = try await readScale(deployment, into: &target)
            target.replicas = max(0, (target.replicas ?? current) - 1)
            target.leaving.insert(launch)
            targets[deployment] = target
            try await reconcile(deployment)
        } catch {
            logger.error("kubernetes: could not stop \(launch) yet, the next tick tries again: \(error)")
        }
    }

    /// The Deployments' pods that are not terminating, each with its pool; first brings every
    /// Deployment to the size the provider wants (the retry of anything that failed before).
    public func running() async -> [String: String]? {
        var result: [String: String] = [:]
        do {
            for (deployment, target) in targets.sorted(by: { $0.key < $1.key }) {
                var live: [String: (terminating: Bool, cost: String?)]?
                do {
                    live = try await reconcile(deployment)
                } catch {
                    logger.error("kubernetes: \(deployment) not at its size yet: \(error)")
                }
                // Listed again only when the reconcile changed `replicas` (or failed).
                if live == nil { live = try await pods(of: deployment) }
                for (pod, state) in live ?? [:] where !state.terminating { result[pod] = target.pool }
            }
        } catch {
            logger.error("kubernetes: cannot list pods: \(error)")
            return nil
        }
        return result
    }

    /// The pods outlive this server; it finds them again by the Deployment's selector.
    public func shutdown(grace: Duration) async {}

    /// Follows the Deployments of `pools` from now on: their pods count as the pools' launches.
    public func follow(_ pools: [ServerConfiguration.Pool]) {
        for pool in pools {
            guard let deployment = pool.kubernetes?.deployment, targets[deployment] == nil else { continue }
            targets[deployment] = Target(pool: pool.spec.name)
        }
    }

    // MARK: - Reconciling

    /// Marks the leaving pods, then (only once all are marked) sets `replicas` to the target.
    /// - Returns: the Deployment's pods when `replicas` was already right; nil when it changed
    ///   (the ReplicaSet is making or deleting pods).
    @discardableResult
    private func reconcile(_ deployment: String) async throws -> [String: (terminating: Bool, cost: String?)]? {
        guard var target = targets[deployment] else { return nil }
        let current = try await readScale(deployment, into: &target)
        if target.replicas == nil { target.replicas = current }
        targets[deployment] = target
        let live = try await pods(of: deployment)
        // Pods that went (or are going) need nothing more.
        target.leaving = target.leaving.filter { live[$0].map { !$0.terminating } ?? false }
        target.marked.formIntersection(target.leaving)
        targets[deployment] = target
        for pod in target.leaving.subtracting(target.marked).sorted() {
            try await request(
                .PATCH, "/api/v1/namespaces/\(settings.namespace)/pods/\(pod)",
                body: ["metadata": ["annotations": [Self.deletionCost: Self.leavingCost]]])
            targets[deployment]?.marked.insert(pod)
        }
        if let replicas = targets[deployment]?.replicas, current != replicas {
            try await request(
                .PATCH, "/apis/apps/v1/namespaces/\(settings.namespace)/deployments/\(deployment)/scale",
                body: ["spec": ["replicas": replicas]])
            return nil
        }
        return live
    }

    /// The Deployment's `spec.replicas` now; keeps its selector in `target`.
    private func readScale(_ deployment: String, into target: inout Target) async throws -> Int {
        let (replicas, selector) = try await scale(of: deployment)
        target.selector = selector
        return replicas
    }

    private func scale(of deployment: String) async throws -> (replicas: Int, selector: String?) {
        let object = try await request(.GET, "/apis/apps/v1/namespaces/\(settings.namespace)/deployments/\(deployment)/scale")
        let spec = object["spec"] as? [String: Any]
        let status = object["status"] as? [String: Any]
        return ((spec?["replicas"] as? Int) ?? 0, status?["selector"] as? String)
    }

    /// The Deployment's pods by name, and whether each is terminating.
    private func pods(of deployment: String) async throws -> [String: (terminating: Bool, cost: String?)] {
        var selector = targets[deployment]?.selector
        if selector == nil {
            selector = try await scale(of: deployment).selector
            targets[deployment]?.selector = selector
        }
        guard let selector, !selector.isEmpty else {
            throw KilnError(.unavailable, "deployment \(deployment): its scale subresource reports no selector")
        }
        let query = selector.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? selector
        let list = try await request(.GET, "/api/v1/namespaces/\(settings.namespace)/pods?labelSelector=\(query)")
        var result: [String: (terminating: Bool, cost: String?)] = [:]
        for item in list["items"] as? [[String: Any]] ?? [] {
            guard let metadata = item["metadata"] as? [String: Any], let name = metadata["name"] as? String else { continue }
            let phase = (item["status"] as? [String: Any])?["phase"] as? String
            let annotations = metadata["annotations"] as? [String: String]
            result[name] = (metadata["deletionTimestamp"] != nil || phase == "Succeeded" || phase == "Failed", annotations?[Self.deletionCost])
        }
        return result
    }

    /// Which followed Deployment `pod` belongs to (nil: none, or gone).
    private func deployment(of pod: String) async throws -> String? {
        for deployment in targets.keys.sorted() where try await pods(of: deployment)[pod] != nil { return deployment }
        return nil
    }

    /// One API call. A `PATCH` sends a JSON merge patch.
    /// - Throws: `.unavailable` naming the call and the API server's message when it does not answer 2xx.
    @discardableResult
    private func request(_ method: HTTPMethod, _ path: String, body: [String: Any]? = nil) async throws -> [String: Any] {
        var request = HTTPClientRequest(url: settings.apiServer + path)
        request.method = method
        request.headers.add(name: "Accept", value: "application/json")
        if let tokenFile = settings.tokenFile {
            let token = try String(contentsOf: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            request.headers.add(name: "Authorization", value: "Bearer \(token)")
        }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/merge-patch+json")
            request.body = .bytes(ByteBuffer(data: try JSONSerialization.data(withJSONObject: body)))
        }
        let response = try await client.execute(request, timeout: .seconds(15))
        let data = Data(buffer: try await response.body.collect(upTo: 16 << 20))
        guard (200..<300).contains(response.status.code) else {
            let message = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["message"] as? String
            throw KilnError(
                .unavailable, "kubernetes: \(method.rawValue) \(path): \(response.status.code) \(message ?? String(decoding: data.prefix(200), as: UTF8.self))")
        }
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
    }
}
