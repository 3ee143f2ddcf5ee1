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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["proto/client.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.type_attribute(
        ".herald.client",
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
    );
    config.field_attribute(
        ".herald.client",
        "#[serde(skip_serializing_if = \"crate::protocol::json::is_default\")]",
    );
    for field in RAW_JSON_FIELDS {
        config.field_attribute(
            format!(".herald.client.{field}"),
            "#[serde(with = \"crate::protocol::json::raw\")]",
        );
    }
    config.compile_fds(files)?;
    Ok(())
}
