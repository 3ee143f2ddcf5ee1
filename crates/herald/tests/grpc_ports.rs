//! gRPC on ports of its own, as Centrifugo serves it: `grpc_api.port` (with `grpc_api.key`)
//! and `uni_grpc.port` add listeners for those services, real tonic clients on both, and
//! the main port keeps serving them too.

mod support;

use std::net::SocketAddr;

use herald::grpc_api::proto as api;
use herald::grpc_api::proto::centrifugo_api_client::CentrifugoApiClient;
use herald::protocol::proto::{self, Push};
use herald::transport::grpc::client::unistream::centrifugo_uni_stream_client::CentrifugoUniStreamClient;
use serde_json::json;
use support::{API_KEY, TestServer, WAIT, json_bytes, payload_json};
use tonic::transport::Channel;

const GRPC_KEY: &str = "grpc-only-key";

/// A port free on 127.0.0.1 a moment ago (the OS picks it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

async fn channel(addr: SocketAddr) -> Channel {
    tokio::time::timeout(
        WAIT,
        Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect(),
    )
    .await
    .expect("gRPC connect timed out")
    .expect("gRPC connect")
}

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("apikey {key}").parse().expect("metadata"),
    );
    req
}

fn publish(n: u64) -> api::PublishRequest {
    api::PublishRequest {
        channel: "chat:ports".into(),
        data: json_bytes(&json!({ "n": n })),
        ..Default::default()
    }
}

/// The next non-ping push of a Consume stream.
async fn next_push(stream: &mut tonic::Streaming<Push>) -> Push {
    loop {
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no push within {WAIT:?}"))
            .unwrap_or_else(|s| panic!("stream failed: {s:?}"))
            .expect("stream ended");
        if msg != Push::default() {
            return msg;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_api_and_uni_grpc_serve_on_ports_of_their_own() {
    let (api_port, uni_port) = (free_port(), free_port());
    let server = TestServer::start(json!({
        "grpc_api": {"port": api_port, "key": GRPC_KEY},
        "uni_grpc": {"port": uni_port},
        "client": {"allowed_origins": ["https://app.example"]},
        "channel": {"namespaces": [{"name": "chat", "history_size": 10, "history_ttl": "300s"}]}
    }))
    .await;
    let api_addr: SocketAddr = format!("127.0.0.1:{api_port}").parse().expect("addr");
    let uni_addr: SocketAddr = format!("127.0.0.1:{uni_port}").parse().expect("addr");
    let mut own = server.grpc_addrs.clone();
    own.sort();
    let mut expected = vec![api_addr, uni_addr];
    expected.sort();
    assert_eq!(own, expected, "one listener per configured port");

    // A Consume stream on the uni_grpc port.
    let mut uni = CentrifugoUniStreamClient::new(channel(uni_addr).await);
    let req = proto::ConnectRequest {
        token: server.token_with(json!({"sub": "alice", "channels": ["chat:ports"]})),
        ..Default::default()
    };
    let mut stream = tokio::time::timeout(WAIT, uni.consume(req))
        .await
        .expect("Consume timed out")
        .expect("Consume on the uni_grpc port")
        .into_inner();
    let connect = next_push(&mut stream).await;
    assert!(connect.connect.is_some(), "connect push first: {connect:?}");

    // The API on its own port takes grpc_api.key, and only it.
    let mut own_api = CentrifugoApiClient::new(channel(api_addr).await);
    let status = own_api
        .publish(with_key(publish(0), API_KEY))
        .await
        .expect_err("the HTTP API key is not the gRPC key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let res = own_api
        .publish(with_key(publish(1), GRPC_KEY))
        .await
        .expect("publish with grpc_api.key")
        .into_inner();
    assert!(res.error.is_none(), "{res:?}");

    // The main port serves the same API (with the same key).
    let mut main_api = CentrifugoApiClient::new(channel(server.addr).await);
    let res = main_api
        .publish(with_key(publish(2), GRPC_KEY))
        .await
        .expect("publish on the main port")
        .into_inner();
    assert!(res.error.is_none(), "{res:?}");

    for n in [1, 2] {
        let push = next_push(&mut stream).await;
        let publication = push
            .r#pub
            .clone()
            .unwrap_or_else(|| panic!("publication {n}: {push:?}"));
        assert_eq!(payload_json(&publication.data), json!({ "n": n }));
    }

    // The ports of their own serve gRPC only: no transports, no HTTP API.
    herald::http_client::install_crypto_provider();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let resp = http
        .post(format!("http://{api_addr}/api/info"))
        .header("X-API-Key", API_KEY)
        .body("{}")
        .send()
        .await
        .expect("HTTP request to the gRPC port");
    assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);

    // Browsers call it with gRPC-Web, cross-origin: the preflight is answered as on the main port.
    let preflight = http
        .request(
            reqwest::Method::OPTIONS,
            format!(
                "http://{uni_addr}/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume"
            ),
        )
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://app.example"),
        "{preflight:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_for_both_and_none_by_default() {
    let port = free_port();
    let server = TestServer::start(json!({
        "grpc_api": {"port": port},
        "uni_grpc": {"port": port}
    }))
    .await;
    assert_eq!(server.grpc_addrs.len(), 1, "a shared port is one listener");
    let shared: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // Without grpc_api.key, the API key is the HTTP API's.
    let info = CentrifugoApiClient::new(channel(shared).await)
        .info(with_key(api::InfoRequest {}, API_KEY))
        .await
        .expect("info on the shared port")
        .into_inner();
    assert_eq!(info.result.expect("result").nodes.len(), 1);
    let mut uni = CentrifugoUniStreamClient::new(channel(shared).await);
    let mut stream = uni
        .consume(proto::ConnectRequest {
            token: server.token("bob"),
            ..Default::default()
        })
        .await
        .expect("Consume on the shared port")
        .into_inner();
    assert!(next_push(&mut stream).await.connect.is_some());

    let default = TestServer::start(json!({})).await;
    assert!(
        default.grpc_addrs.is_empty(),
        "no own port unless configured"
    );
}
