//! Compiles Herald's gRPC `.proto` files (crates/herald/proto) into tonic clients, client
//! side only, with protox (pure Rust: no system `protoc`). The client protocol messages
//! (`herald.client`) are not generated again: they are `herald::protocol::proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = "../herald/proto";
    println!("cargo:rerun-if-changed={dir}");
    let mut files = protox::compile(
        ["api.proto", "unistream.proto", "herald_stream.proto"],
        [dir],
    )?;
    files.file.retain(|f| f.name() != "client.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .bytes(".")
        .extern_path(".herald.client", "::herald::protocol::proto")
        .compile_fds(files)?;
    Ok(())
}
