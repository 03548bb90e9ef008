//! Compiles the vendored CRI v1 protos (proto/api.proto, see proto/README.md)
//! into the gRPC server traits and message types: protox parses them in pure
//! Rust, so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let fds = protox::compile(["api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // pod serves the CRI; crictl and kubelet are the clients.
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        // RuntimeService calls not served yet answer Unimplemented.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
