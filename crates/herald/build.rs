//! Compiles Herald's `.proto` files with protox (pure Rust), so a fresh machine needs no
//! system `protoc`. The client protocol types also derive serde: the JSON encoding of the
//! protocol is the same schema with application data embedded as raw JSON.

/// Fields that carry application payloads: raw JSON in the JSON encoding, bytes in Protobuf.
const RAW_JSON_FIELDS: &[&str] = &[
    "Publication.data",
    "ClientInfo.conn_info",
    "ClientInfo.chan_info",
    "Subscribe.data",
    "Message.data",
    "Connect.data",
    "ConnectRequest.data",
    "ConnectResult.data",
    "SubscribeRequest.data",
    "SubscribeResult.data",
    "PublishRequest.data",
    "RPCRequest.data",
    "RPCResult.data",
    "SendRequest.data",
];

/// Fields the JSON encoding always writes, even when zero or empty: those Centrifugo's
/// protocol declares without `omitempty` (the JSON tags in centrifugal/protocol's
/// `client.pb.go`), because the SDKs read them unconditionally (centrifuge-js returns
/// `numClients: result.num_clients`, which must be `0`, not `undefined`). Every other
/// field is omitted when it equals its default. The Protobuf encoding is unaffected.
const ALWAYS_PRESENT_FIELDS: &[&str] = &[
    "ClientInfo.user",
    "ClientInfo.client",
    "PresenceResult.presence",
    "PresenceStatsResult.num_clients",
    "PresenceStatsResult.num_users",
    "HistoryResult.publications",
    "HistoryResult.epoch",
    "HistoryResult.offset",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["proto/client.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.type_attribute(
        ".herald.client",
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
    );
    let mut always_present: Vec<&str> = ALWAYS_PRESENT_FIELDS.to_vec();
    for file in &files.file {
        for message in &file.message_type {
            for field in &message.field {
                let name = format!("{}.{}", message.name(), field.name());
                if let Some(i) = always_present.iter().position(|f| *f == name) {
                    always_present.swap_remove(i);
                    continue;
                }
                config.field_attribute(
                    format!(".herald.client.{name}"),
                    "#[serde(skip_serializing_if = \"crate::protocol::json::is_default\")]",
                );
            }
        }
    }
    // A name that matches no field (a typo, a renamed field) would silently drop a guarantee.
    if !always_present.is_empty() {
        return Err(
            format!("ALWAYS_PRESENT_FIELDS names unknown fields: {always_present:?}").into(),
        );
    }
    for field in RAW_JSON_FIELDS {
        config.field_attribute(
            format!(".herald.client.{field}"),
            "#[serde(with = \"crate::protocol::json::raw\")]",
        );
    }
    config.compile_fds(files)?;
    compile_grpc()?;
    Ok(())
}

/// The gRPC services (see `src/transport/grpc.rs`, `src/grpc_api.rs` and `src/proxy/`):
/// - the server API (`api.proto`): messages, tonic server and client;
/// - the proxy protocol (`proxy.proto`): messages, tonic client and server;
/// - the client-facing streams (`unistream.proto`, `herald_stream.proto`): tonic clients
///   from the `.proto` files (their messages are the client protocol's, reused through
///   `extern_path`), and servers defined by hand (`tonic_build::manual`) with Herald's own
///   codec, which writes the session queue's pre-encoded messages without re-encoding them.
fn compile_grpc() -> Result<(), Box<dyn std::error::Error>> {
    let api = protox::compile(["proto/api.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".")
        .compile_fds(api)?;
    // The proxy protocol: Herald is the client; the server side is generated too, for
    // the tests' backends and for anyone writing one in Rust.
    let proxy = protox::compile(["proto/proxy.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .bytes(".")
        .compile_fds(proxy)?;
    let mut streams = protox::compile(
        ["proto/unistream.proto", "proto/herald_stream.proto"],
        ["proto"],
    )?;
    streams.file.retain(|f| f.name() != "client.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .extern_path(".herald.client", "crate::protocol::proto")
        .compile_fds(streams)?;
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("crate::transport::grpc::PreEncodedCodec")
    };
    let uni = tonic_build::manual::Service::builder()
        .name("CentrifugoUniStream")
        .package("centrifugal.centrifugo.unistream")
        .method(
            method(
                "consume",
                "Consume",
                "crate::protocol::proto::ConnectRequest",
                "crate::transport::grpc::PreEncoded",
            )
            .server_streaming()
            .build(),
        )
        .build();
    let bidi = tonic_build::manual::Service::builder()
        .name("HeraldStream")
        .package("herald.stream")
        .method(
            method(
                "connect",
                "Connect",
                "crate::protocol::proto::Command",
                "crate::transport::grpc::PreEncoded",
            )
            .client_streaming()
            .server_streaming()
            .build(),
        )
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[uni, bidi]);
    Ok(())
}
