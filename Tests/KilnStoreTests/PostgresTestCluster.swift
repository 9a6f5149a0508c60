import Foundation
import KilnCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// One throwaway PostgreSQL cluster for the whole test process, started on first use and stopped
/// at exit; each test that asks gets a fresh, empty database of its own on it.
///
/// The cluster runs as the `postgres` user when the tests run as root (PostgreSQL refuses root),
/// with its socket in its own temporary directory, on a free loopback port, trusting local logins,
/// and with fsync off: it holds nothing worth keeping. It is stopped twice over: by an `atexit`
/// handler (immediate shutdown: a process started from the test binary may ignore SIGTERM), and by
/// a watchdog in a session of its own that stops it once the test process is gone, however it
/// ended.
enum PostgresTestCluster {
    /// The newest installed PostgreSQL's programs (Debian's layout).
    static let binaries: URL? = {
        let root = URL(fileURLWithPath: "/usr/lib/postgresql")
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []
        return versions.compactMap(Int.init).sorted(by: >).lazy
            .map { root.appendingPathComponent("\($0)/bin") }
            .first { FileManager.default.isExecutableFile(atPath: $0.appendingPathComponent("initdb").path) }
    }()

    /// `KILN_REQUIRE_POSTGRES=1`: a missing PostgreSQL fails the tests instead of skipping them.
    static var required: Bool { ProcessInfo.processInfo.environment["KILN_REQUIRE_POSTGRES"] == "1" }

    /// Whether the PostgreSQL cases run: they do when it is installed, and when it is required.
    static var enabled: Bool { binaries != nil || required }

    /// A new empty database on the cluster (started by the first call).
    /// - Returns: its URL, in the form ``KilnPostgres/PostgresURL`` parses.
    static func freshDatabase() async throws -> String {
        let cluster = try await shared.value
        let name = "kiln_test_\(UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased())"
        try run(
            cluster.bin.appendingPathComponent("psql").path,
            ["-h", "127.0.0.1", "-p", "\(cluster.port)", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc",
             "CREATE DATABASE \(name)"])
        return "postgres://postgres@127.0.0.1:\(cluster.port)/\(name)?sslmode=disable"
    }

    private struct Cluster: Sendable {
        var bin: URL
        var directory: URL
        var port: Int
    }

    private static let shared = Task { try start() }

    /// The data directory of the running cluster, for the exit handler.
    private static let running = Mutex<String?>(nil)

    private static func start() throws -> Cluster {
        guard let bin = binaries else {
            throw KilnError(
                .unavailable,
                "PostgreSQL is required (KILN_REQUIRE_POSTGRES=1) but no /usr/lib/postgresql/*/bin/initdb is installed; "
                    + "install Debian's postgresql")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-postgres-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        if getuid() == 0 { try run("/bin/chown", ["postgres:postgres", directory.path]) }
        let data = directory.appendingPathComponent("data").path
        try asPostgres(
            bin.appendingPathComponent("initdb").path,
            ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        let port = try freeLoopbackPort()
        running.withLock { $0 = data }
        atexit {
            guard let data = PostgresTestCluster.running.withLock({ $0 }), let bin = PostgresTestCluster.binaries else { return }
            try? PostgresTestCluster.asPostgres(bin.appendingPathComponent("pg_ctl").path, ["-D", data, "-m", "immediate", "stop"])
        }
        try asPostgres(
            bin.appendingPathComponent("pg_ctl").path,
            [
                "-D", data, "-l", directory.appendingPathComponent("log").path, "-w", "start", "-o",
                "-p \(port) -c listen_addresses=127.0.0.1 -k \(directory.path) -c fsync=off -c synchronous_commit=off "
                    + "-c full_page_writes=off -c max_connections=500",
            ])
        try watch(bin: bin, data: data, directory: directory)
        return Cluster(bin: bin, directory: directory, port: port)
    }

    /// Starts, in a session of its own (so that no signal to this process group reaches it), a
    /// shell that waits for this process to end, then stops the cluster and deletes its files.
    private static func watch(bin: URL, data: String, directory: URL) throws {
        let pgCtl = "'\(bin.appendingPathComponent("pg_ctl").path)' -D '\(data)' -m immediate stop"
        let stop = getuid() == 0 ? "runuser -u postgres -- \(pgCtl)" : pgCtl
        let script = "while kill -0 \(getpid()) 2>/dev/null; do sleep 1; done; \(stop); rm -rf '\(directory.path)'"
        _ = try spawn(["/usr/bin/setsid", "/bin/sh", "-c", script], output: "/dev/null")
    }

    /// Runs a PostgreSQL program as the `postgres` user when this process is root (PostgreSQL
    /// refuses to run as root), as this process's user otherwise.
    private static func asPostgres(_ program: String, _ arguments: [String]) throws {
        if getuid() == 0 {
            try run("/usr/sbin/runuser", ["-u", "postgres", "--", program] + arguments)
        } else {
            try run(program, arguments)
        }
    }

    /// Runs a program to its end.
    /// - Throws: an error with the command and its output when it fails.
    private static func run(_ program: String, _ arguments: [String]) throws {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-postgres-\(UUID().uuidString).out").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        let pid = try spawn([program] + arguments, output: output)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else { throw KilnError(.internal, "waitpid(\(pid)) failed: errno \(errno)") }
        }
        // Exited normally with status 0.
        guard status & 0x7f == 0, (status >> 8) & 0xff == 0 else {
            let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            throw KilnError(.internal, "\(([program] + arguments).joined(separator: " ")) ended with status \(status): \(text)")
        }
    }

    /// Starts a program with `posix_spawn`, not Foundation's `Process`: the server that `pg_ctl`
    /// leaves running must inherit none of this process's descriptors (a pipe to the test runner,
    /// `Process`'s own exit monitor, whose end it would hold open for ever), and must get default
    /// signal handling and an empty signal mask, whatever this process's threads block.
    /// - Parameter output: the file that takes its standard output and error (appended to).
    private static func spawn(_ argv: [String], output: String) throws -> pid_t {
        #if os(Linux)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let inherited = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
        for descriptor in inherited where descriptor > 2 { posix_spawn_file_actions_addclose(&actions, descriptor) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let arguments = argv.map { strdup($0) } + [nil]
        defer { arguments.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, argv[0], &actions, &attributes, arguments, environ)
        guard result == 0 else { throw KilnError(.internal, "cannot start \(argv[0]): errno \(result)") }
        return pid
        #else
        throw KilnError(.unavailable, "the throwaway PostgreSQL cluster of the tests runs on Linux only")
        #endif
    }

    /// A loopback TCP port that nothing listens on now.
    private static func freeLoopbackPort() throws -> Int {
        #if canImport(Glibc)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
            let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw KilnError(.internal, "socket() failed: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw KilnError(.internal, "cannot bind a loopback port: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
