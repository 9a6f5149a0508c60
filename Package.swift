// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "kiln",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "kiln", targets: ["kiln"]),
        .executable(name: "kiln-bench", targets: ["KilnBenchmarks"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams.git", "5.0.1"..<"7.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-openapi-generator.git", from: "1.14.3"),
        .package(url: "https://github.com/apple/swift-openapi-runtime.git", from: "1.13.4"),
        .package(url: "https://github.com/hummingbird-project/swift-openapi-hummingbird.git", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-openapi-async-http-client.git", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
    ],
    targets: [
        // Domain types: no dependency beyond Foundation.
        .target(name: "KilnCore", swiftSettings: swiftSettings),
        // The scheduling policy: pure, clock-injected, shared by the server and the simulator.
        .target(
            name: "KilnScheduling",
            dependencies: [
                "KilnCore",
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: swiftSettings
        ),
        // Placement and autoscaling: pure, clock-injected, shared by the server and the simulator.
        .target(name: "KilnFleet", swiftSettings: swiftSettings),
        // The discrete-event simulator over the very same scheduling and fleet code.
        .target(
            name: "KilnSimulation",
            dependencies: ["KilnCore", "KilnScheduling", "KilnFleet", .product(name: "DequeModule", package: "swift-collections")],
            swiftSettings: swiftSettings),
        .target(
            name: "KilnStore",
            dependencies: [
                "KilnCore",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: swiftSettings
        ),
        // The PostgreSQL backend of the `JobStore`: several control-plane replicas share one database.
        .target(
            name: "KilnPostgres",
            dependencies: [
                "KilnCore", "KilnStore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KilnObjects",
            dependencies: [
                "KilnCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // The version format: manifests, reproducible packing, unpacking without escapes.
        .target(
            name: "KilnModels",
            dependencies: ["KilnCore", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        // The OpenAPI document, the types, client and server protocol generated from it, and the
        // mapping between those wire types and the domain (CLI, worker, server, benchmarks).
        .target(
            name: "KilnAPI",
            dependencies: [
                "KilnCore", "KilnModels",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIAsyncHTTPClient", package: "swift-openapi-async-http-client"),
            ],
            resources: [.copy("openapi.yaml")],
            swiftSettings: swiftSettings,
            plugins: [.plugin(name: "OpenAPIGenerator", package: "swift-openapi-generator")]
        ),
        // The worker agent: speaks only the worker protocol; runs models as Python processes.
        .target(
            name: "KilnWorker",
            dependencies: [
                "KilnCore", "KilnModels", "KilnAPI",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KilnServer",
            dependencies: [
                "KilnCore", "KilnScheduling", "KilnFleet", "KilnSimulation", "KilnStore", "KilnPostgres", "KilnObjects", "KilnModels",
                "KilnAPI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIHummingbird", package: "swift-openapi-hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "kiln",
            dependencies: [
                "KilnCore", "KilnScheduling", "KilnFleet", "KilnServer", "KilnAPI", "KilnSimulation", "KilnModels", "KilnWorker",
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "KilnBenchmarks",
            dependencies: [
                "KilnCore", "KilnScheduling", "KilnFleet", "KilnServer", "KilnAPI", "KilnPostgres", "KilnWorker",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ],
            path: "Benchmarks/KilnBenchmarks",
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "KilnCoreTests", dependencies: ["KilnCore"], swiftSettings: swiftSettings),
        .testTarget(name: "KilnFleetTests", dependencies: ["KilnFleet"], swiftSettings: swiftSettings),
        .testTarget(name: "KilnSchedulingTests", dependencies: ["KilnCore", "KilnScheduling"], swiftSettings: swiftSettings),
        .testTarget(
            name: "KilnObjectsTests",
            dependencies: [
                "KilnCore", "KilnObjects", .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KilnEndToEndTests",
            dependencies: [
                "KilnCore", "KilnFleet", "KilnServer", "KilnAPI", "KilnModels", "KilnStore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "KilnWorkerTests", dependencies: ["KilnWorker", "KilnAPI", "KilnCore"], swiftSettings: swiftSettings),
        .testTarget(name: "KilnModelsTests", dependencies: ["KilnCore", "KilnModels"], swiftSettings: swiftSettings),
        .testTarget(
            name: "KilnSimulationTests", dependencies: ["KilnCore", "KilnScheduling", "KilnFleet", "KilnSimulation"], swiftSettings: swiftSettings),
        .testTarget(
            name: "KilnStoreTests",
            dependencies: ["KilnCore", "KilnStore", "KilnPostgres", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "KilnServerTests",
            dependencies: [
                "KilnCore", "KilnFleet", "KilnServer", "KilnStore", "KilnObjects", "KilnAPI", "KilnModels",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
