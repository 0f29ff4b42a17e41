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
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
