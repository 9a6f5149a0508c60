import KilnCore
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
}
