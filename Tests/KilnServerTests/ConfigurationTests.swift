import KilnCore
import KilnFleet
import KilnScheduling
import KilnServer
import Testing

@Suite("Server configuration")
struct ConfigurationTests {
    @Test("the protected policy takes its tiers and share from the scheduler section")
    func protectedPolicy() throws {
        let configuration = try ServerConfiguration.load(
            yaml: """
                scheduler:
                  policy: protected
                  protected_tiers: [enterprise]
                  protected_share: 0.75
                """)
        let policy = try configuration.schedulingPolicy()
        #expect(policy.name == "protected")
        #expect(policy.protection == (try Protection(tiers: ["enterprise"], share: 0.75)))
        let defaults = try ServerConfiguration.load(yaml: "scheduler: {policy: protected}").schedulingPolicy()
        #expect(defaults.protection == (try Protection(tiers: ["enterprise", "api"], share: 0.9)))
    }

    @Test(
        "bad protection settings are refused, naming the setting",
        arguments: [
            ("scheduler: {policy: protected, protected_tiers: [gold]}", "'gold' is not one of"),
            ("scheduler: {policy: protected, protected_share: 1}", "protected_share"),
            ("scheduler: {policy: protected, protected_share: fast}", "protected_share"),
            ("scheduler: {policy: slo, protected_share: 0.5}", "apply only to policy 'protected'"),
            ("scheduler: {policy: protected, protected_tiers: api}", "must be a list"),
        ])
    func refused(yaml: String, message: String) {
        #expect {
            _ = try ServerConfiguration.load(yaml: yaml)
        } throws: { error in
            (error as? KilnError)?.message.contains(message) == true
        }
    }

    @Test("pools are read under their cluster, with their provider, bounds and timing; the fleet section sets the controller")
    func pools() throws {
        let configuration = try ServerConfiguration.load(
            yaml: """
                clusters:
                  local:
                    dispatch_limit: 8
                    pools:
                      cpu: {provider: local, min_workers: 1, max_workers: 4, cooldown_seconds: 60}
                      borrowed: {kind: burst, accelerator: h100, gpus_per_worker: 8, max_workers: 10, drain_grace_seconds: 120}
                fleet: {tick_seconds: 2, dwell_seconds: 0, headroom: 1.5}
                """)
        #expect(configuration.pools.map(\.spec.name) == ["cpu", "borrowed"])
        let cpu = configuration.pools[0]
        #expect(cpu.provider == .local)
        #expect(cpu.spec == CapacityPool(name: "cpu", cluster: "local", accelerator: "cpu", gpusPerWorker: 0, minWorkers: 1, maxWorkers: 4, cooldownSeconds: 60))
        let borrowed = configuration.pools[1]
        #expect(borrowed.provider == .static)
        #expect(borrowed.spec.kind == .burst)
        #expect(borrowed.spec.gpusPerWorker == 8)
        #expect(borrowed.spec.drainGraceSeconds == 120)
        #expect(configuration.fleet.tickSeconds == 2)
        #expect(configuration.fleet.controller.dwellSeconds == 0)
        #expect(configuration.fleet.controller.headroom == 1.5)
    }

    @Test("a slurm pool takes its partition (its name by default), CPUs and time limit; the slurm section says how to reach the cluster")
    func slurmPools() throws {
        let configuration = try ServerConfiguration.load(
            yaml: """
                clusters:
                  training:
                    pools:
                      borrowed: {provider: slurm, kind: burst, accelerator: h100, gpus_per_worker: 8, max_workers: 500,
                                 partition: kiln, cpus_per_task: 16, time_limit_minutes: 720}
                      spare: {provider: slurm, max_workers: 2}
                slurm: {program: /shared/bin/kiln, folder: /shared/kiln, server_url: "http://kiln.internal:8080"}
                """)
        #expect(configuration.pools[0].slurm == .init(partition: "kiln", cpusPerTask: 16, timeLimitMinutes: 720))
        #expect(configuration.pools[1].slurm == .init(partition: "spare"))
        #expect(configuration.slurm.program == "/shared/bin/kiln")
        #expect(configuration.slurm.folder == "/shared/kiln")
        #expect(configuration.slurm.serverURL == "http://kiln.internal:8080")
    }

    @Test("a kubernetes pool names its Deployment (its own name by default); a pool on a shared cluster may lend, and says how long it takes to grow")
    func kubernetesPoolsAndLending() throws {
        let configuration = try ServerConfiguration.load(
            yaml: """
                clusters:
                  prod:
                    pools:
                      h100: {provider: kubernetes, accelerator: h100, gpus_per_worker: 1, min_workers: 4, max_workers: 64,
                             deployment: kiln-worker-h100, lend: true, provision_seconds: 240}
                      a100: {provider: kubernetes, max_workers: 8}
                      spare: {provider: slurm, max_workers: 2, lend: true}
                kubernetes: {api_server: "https://10.0.0.1:443", namespace: kiln, token_file: /run/token, ca_file: /run/ca.crt}
                """)
        #expect(configuration.pools[0].provider == .kubernetes)
        #expect(configuration.pools[0].kubernetes == .init(deployment: "kiln-worker-h100"))
        #expect(configuration.pools[0].spec.lends)
        #expect(configuration.pools[0].spec.provisionSeconds == 240)
        #expect(configuration.pools[1].kubernetes == .init(deployment: "a100"))
        #expect(!configuration.pools[1].spec.lends)
        #expect(configuration.pools[2].spec.lends)
        #expect(configuration.kubernetes.apiServer == "https://10.0.0.1:443")
        #expect(configuration.kubernetes.namespace == "kiln")
        #expect(configuration.kubernetes.tokenFile == "/run/token")
        #expect(configuration.kubernetes.caFile == "/run/ca.crt")
    }

    @Test(
        "bad pools are refused, naming the pool and the setting",
        arguments: [
            ("clusters: {c: {pools: {p: {provider: cloud}}}}", "clusters.c.pools.p.provider: 'cloud' is not one of static, local, slurm, kubernetes"),
            ("clusters: {c: {pools: {p: {provider: local, lend: true}}}}", "clusters.c.pools.p.lend: only a pool on a shared cluster (provider slurm or kubernetes) can lend"),
            ("clusters: {c: {pools: {p: {provider: slurm, kind: burst, lend: true}}}}", "clusters.c.pools.p.lend: a burst pool is borrowed capacity"),
            ("clusters: {c: {pools: {p: {provider: slurm, lend: yes please}}}}", "clusters.c.pools.p.lend must be true or false"),
            ("clusters: {c: {pools: {p: {provider: slurm, deployment: workers}}}}", "clusters.c.pools.p: deployment applies only to provider 'kubernetes'"),
            ("kubernetes: {namespace: kiln, server: x}", "kubernetes: unknown key 'server'"),
            ("clusters: {c: {pools: {p: {provider: local, partition: gpu}}}}", "clusters.c.pools.p: partition, cpus_per_task and time_limit_minutes apply only to provider 'slurm'"),
            ("clusters: {c: {pools: {p: {min_workers: 3, max_workers: 2}}}}", "clusters.c.pools.p: max_workers (2) is below min_workers (3)"),
            ("clusters: {c: {pools: {p: {kind: spare}}}}", "clusters.c.pools.p.kind"),
            ("clusters: {c: {pools: {p: {max_worker: 2}}}}", "clusters.c.pools.p: unknown key 'max_worker'"),
            ("clusters: {c: {pools: {p: {}}}, d: {pools: {p: {}}}}", "a pool of that name exists already"),
            ("fleet: {tick_seconds: 0}", "fleet.tick_seconds must be a positive number"),
            ("leases: {ttl_seconds: 10, heartbeat_seconds: 10}", "leases.heartbeat_seconds (10.0) must be below ttl_seconds (10.0)"),
        ])
    func refusedPools(yaml: String, message: String) {
        #expect {
            _ = try ServerConfiguration.load(yaml: yaml)
        } throws: { error in
            (error as? KilnError)?.message.contains(message) == true
        }
    }

    @Test("webhooks and file limits are read, and bad values refused naming the setting")
    func webhooksAndFiles() throws {
        let configuration = try ServerConfiguration.load(
            yaml: """
                webhooks: {allow_private_urls: true, timeout_seconds: 2.5, max_in_flight: 4}
                limits: {max_account_file_bytes: 1000, file_retention_hours: 0}
                """)
        #expect(configuration.webhooks.allowPrivateURLs && configuration.webhooks.timeoutSeconds == 2.5)
        #expect(configuration.webhooks.maxInFlight == 4)
        #expect(configuration.limits.maxAccountFileBytes == 1_000 && configuration.fileRetention == nil)
        let defaults = ServerConfiguration()
        #expect(!defaults.webhooks.allowPrivateURLs && defaults.fileRetention == 168 * 3_600)
        for (yaml, message) in [
            ("webhooks: {timeout_seconds: 0}", "webhooks.timeout_seconds must be a positive number"),
            ("webhooks: {timeout_seconds: 900}", "webhooks.timeout_seconds must be at most 300"),
            ("webhooks: {max_in_flight: 0}", "webhooks.max_in_flight must be a whole number of at least 1"),
            ("webhooks: {allow_private: true}", "webhooks: unknown key 'allow_private'"),
            ("limits: {file_retention_hours: -1}", "limits.file_retention_hours must be a whole number of at least 0"),
            ("limits: {max_account_file_bytes: 0}", "limits.max_account_file_bytes must be a whole number of at least 1"),
        ] {
            #expect(throws: KilnError.self, "\(yaml)") { _ = try ServerConfiguration.load(yaml: yaml) }
            do {
                _ = try ServerConfiguration.load(yaml: yaml)
            } catch let error as KilnError {
                #expect(error.message.contains(message), "\(error.message)")
            }
        }
    }

    @Test("replicas: off by default; enabled with a lease time; bad values refused naming the setting")
    func replicas() throws {
        #expect(!ServerConfiguration().replicas.enabled)
        let configuration = try ServerConfiguration.load(yaml: "replicas: {enabled: true, lease_seconds: 4}")
        #expect(configuration.replicas.enabled && configuration.replicas.leaseSeconds == 4)
        for (yaml, message) in [
            ("replicas: {lease_seconds: 0.5}", "replicas.lease_seconds must be from 1 to 300"),
            ("replicas: {lease_seconds: 301}", "replicas.lease_seconds must be from 1 to 300"),
            ("replicas: {leader: true}", "replicas: unknown key 'leader'"),
        ] {
            do {
                _ = try ServerConfiguration.load(yaml: yaml)
                Issue.record("\(yaml) was accepted")
            } catch let error as KilnError {
                #expect(error.message.contains(message), "\(error.message)")
            }
        }
    }
}
