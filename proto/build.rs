//! Compiles the .proto files with protox (a pure-Rust protobuf compiler), so building Flotilla
//! needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/opamp/anyvalue.proto",
        "proto/opamp/opamp.proto",
        "proto/flotilla/bus.proto",
        "proto/flotilla/admin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Sorted, so that equal health trees encode alike: an owner's copy of a record keeps the
        // tree encoded and compares encodings (coordinator's service/shards.rs, RecordCopy).
        .btree_map(".opamp.proto.ComponentHealth.component_health_map")
        // A collector's effective config is tens of KB, the same for many agents, and goes with
        // every message an owner processes (its copy of the record is cloned for each): shared
        // rather than copied. (The copy's encoded description and health, 2.2 KB, stay Vecs: as
        // Bytes too, the coordinators took 514 MiB in the steady state at 100,000 agents against
        // 496-500 without, and no less of the machine's CPU: docs/benchmarks.md.)
        .bytes(".opamp.proto.AgentConfigFile.body")
        // Rarely set and large inline (1,168, 312, 96, 56 and 24 bytes): boxed. So are the
        // description, health tree and effective config (48, 120 and 48 bytes), which an owner's
        // copy of a record keeps encoded or apart, and the available components (72): a record is
        // 864 bytes inline (2,720 with none boxed).
        .boxed(".flotilla.bus.v1.AgentRecord.description")
        .boxed(".flotilla.bus.v1.AgentRecord.health")
        .boxed(".flotilla.bus.v1.AgentRecord.effective_config")
        .boxed(".flotilla.bus.v1.AgentRecord.available_components")
        .boxed(".flotilla.bus.v1.AgentRecord.settings_offer")
        .boxed(".flotilla.bus.v1.AgentRecord.own_metrics")
        .boxed(".flotilla.bus.v1.AgentRecord.package_statuses")
        .boxed(".flotilla.bus.v1.AgentRecord.connection_settings_status")
        .boxed(".flotilla.bus.v1.AgentRecord.custom_capabilities")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
