//! Generates the node RPC's messages and service from `proto/disk.proto`
//! with the protoc shipped by `protoc-bin-vendored`, so no system protoc
//! is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/disk.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/disk.proto"], &["proto"])?;
    Ok(())
}
