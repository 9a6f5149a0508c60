import Foundation
#if canImport(Glibc)
import Glibc
#endif
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import KilnAPI
import KilnCore
import KilnServer
import OpenAPIRuntime
import Testing

@Suite("End to end over a real socket")
struct LiveSocketTests {
    @Test("upload, submit, lease, fetch the input, upload the output, complete, stream events, download")
    func wholeLoop() async throws {
        let kiln = try await KilnHarness.make(clock: ManualWallClock(Date()))
        let app = Application(router: try kiln.server.router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let api = KilnClient(client: client)
            try await api.model()
            let (_, user) = try await api.account(tier: "enterprise")
            let clip = ByteBuffer(bytes: (0..<100_000).map { UInt8($0 % 251) })
            let uploaded = try await api.call(
                .post, "/v1/files", key: user, raw: clip, headers: [.contentType: "video/mp4"])
            #expect(uploaded.status == .created)
            let file = try uploaded.decode(Components.Schemas.FileObject.self)
            #expect(file.size == 100_000)
            #expect(file.contentType == "video/mp4")

            let generation = try await api.submit(user, input: ["prompt": .string("make it snow"), "video": .string(file.id)])
            let workerKey = try await api.workerKey()
            let worker = try await api.register(workerKey)
            let lease = try #require(try await api.lease(workerKey, worker: worker, wait: 5))
            #expect(lease.job.id == generation.id)
            #expect(lease.job.inputFiles.additionalProperties["video"]?.sha256 == file.sha256)

            let token = lease.lease.token
            let base = "/v1/workers/\(worker)/jobs/\(generation.id)"
            let input = try await api.call(.get, "\(base)/inputs/video?token=\(token)", key: workerKey)
            #expect(input.status == .ok)
            #expect(input.body == clip)
            #expect(try await api.job(workerKey, worker, lease, "start", json: #"{"token":"\#(token)"}"#).status == .ok)
            #expect(try await api.heartbeat(workerKey, worker, lease, fraction: 0.5).status == .ok)
            let output = try await api.call(
                .put, "\(base)/outputs/video?token=\(token)", key: workerKey, raw: ByteBuffer(string: "mp4 bytes"),
                headers: [.contentType: "video/mp4"])
            #expect(output.status == .created)
            #expect(try await api.complete(workerKey, worker, lease, outputs: ["video"]).status == .noContent)

            // The event stream replays the whole log and ends at the final state.
            let events = try await api.call(.get, "/v1/generations/\(generation.id)/events", key: user)
            #expect(events.headers[.contentType] == "text/event-stream")
            let kinds = events.text.split(separator: "\n").filter { $0.hasPrefix("event: ") }.map { $0.dropFirst(7) }
            #expect(kinds == ["queued", "leased", "started", "progress", "succeeded"])

            let done = try await api.generation(user, generation.id)
            #expect(done.state == .succeeded)
            let result = try #require(done.output.additionalProperties["video"])
            let downloaded = try await api.call(.get, "/v1/files/\(result.fileId)", key: user)
            #expect(downloaded.text == "mp4 bytes")
            #expect(downloaded.headers[.contentType] == "video/mp4")
        }
    }

    @Test("a long poll whose client went away ends, and is handed no job: the job waits for a worker that is there")
    func abandonedLongPoll() async throws {
        let kiln = try await KilnHarness.make(clock: ManualWallClock(Date()))
        let app = Application(
            router: try kiln.server.router(), server: KilnServer.http1(),
            configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let api = KilnClient(client: client)
            let (user, workerKey, worker) = try await api.cast()
            let port = try #require(client.port)
            let dispatcher = kiln.server.services.dispatcher
            // A worker's long poll on a connection of its own, which the worker then drops.
            let body = #"{"wait_seconds":30}"#
            let socket = try RawConnection(port: port)
            try socket.send(
                "POST /v1/workers/\(worker)/lease HTTP/1.1\r\nHost: kiln.test\r\nAuthorization: Bearer \(workerKey)\r\n"
                    + "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            while await dispatcher.waiting < 1 { try await Task.sleep(for: .milliseconds(10)) }
            socket.close()
            // Not a timing: the wait ends once the server reads the close (a bound, in case it never does).
            for _ in 0..<500 where await dispatcher.waiting > 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(await dispatcher.waiting == 0, "the abandoned long poll ended")
            let submitted = try await api.submit(user)
            #expect(submitted.state == .queued, "no job went to the long poll nobody waits on")
            let next = try #require(try await api.lease(workerKey, worker: worker))
            #expect(next.job.id == submitted.id)
        }
    }
}

/// A TCP connection to the server under test, written to by hand, so that a test can drop it.
private final class RawConnection {
    private var descriptor: Int32

    init(port: Int) throws {
        descriptor = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw KilnError(.internal, "socket: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { throw KilnError(.internal, "connect: errno \(errno)") }
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        guard Glibc.send(descriptor, bytes, bytes.count, 0) == bytes.count else {
            throw KilnError(.internal, "send: errno \(errno)")
        }
    }

    func close() {
        guard descriptor >= 0 else { return }
        _ = Glibc.close(descriptor)
        descriptor = -1
    }

    deinit { close() }
}
