import Foundation
import KilnAPI
import KilnCore
import KilnWorker

/// A worker's pull of one model version, through the worker's own code (``VersionCache``): the
/// manifest, then every blob over the worker API, or from the signed URL the server redirects to
/// when its object store can sign one, hashed while it streams, into an empty cache folder, and
/// unpacked there. `scripts/bench-push` runs it beside a `cp` of the same bytes.
enum PullBenchmark {
    static func run(server: String, key: String, worker: String, version: String, cache: URL) async throws {
        guard let digest = Digest(version) else { throw KilnError(.invalidInput, "--version: '\(version)' is not a sha256: digest") }
        try? FileManager.default.removeItem(at: cache)
        let versions = try VersionCache(
            root: cache, budgetBytes: .max, platform: "cpu", client: try KilnAPIClient(server: server, key: key),
            workerID: WorkerID(unchecked: worker))
        let elapsed = try await ContinuousClock().measure { _ = try await versions.prepare(digest) }
        print(String(format: "%.2f", elapsed.seconds))
    }
}
