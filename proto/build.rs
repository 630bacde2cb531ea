//! Compiles `ouroboros/v1/*.proto` with protox (pure Rust): no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "ouroboros/v1/agent.proto",
        "ouroboros/v1/admin.proto",
        "ouroboros/v1/enrol.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // `AgentGateway.Connect` would clash with the generated `connect(dst)` constructor;
        // clients are built from a `Channel` with `new` instead.
        .build_transport(false)
        // Carry secrets (registry credentials, join tokens): its `Debug` (in `lib.rs`) redacts them.
        .skip_debug([
            "ouroboros.v1.RegistryAuth",
            "ouroboros.v1.EnrolRequest",
            "ouroboros.v1.CreateJoinTokenResponse",
        ])
        .compile_fds(fds)?;
    Ok(())
}
