//! The connect proxy hook (`client.proxy.connect`) against a real HTTP backend on loopback: a
//! client that connects without a token is who the backend says, with the backend's
//! channels and data; the backend's error and disconnect reach the client; a slow, failing
//! or absent backend gives the temporary internal error (100) within the timeout, never a
//! hang. The backend sees Centrifugo's request shape and the headers the config forwards.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use herald::protocol::Encoding;
use herald::protocol::proto::{Command, ConnectRequest, Reply};
use serde_json::{Value, json};
use support::{Client, TestServer};

/// What the backend answers, and what it saw.
#[derive(Default)]
struct Backend {
    answer: Mutex<Value>,
    delay: Mutex<Duration>,
    status: Mutex<u16>,
    seen: Mutex<Vec<(HeaderMap, Value)>>,
}

async fn connect_hook(
    State(b): State<Arc<Backend>>,
    headers: HeaderMap,
    body: String,
) -> (axum::http::StatusCode, String) {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    b.seen.lock().unwrap().push((headers, body));
    let delay = *b.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let status = *b.status.lock().unwrap();
    let status = axum::http::StatusCode::from_u16(if status == 0 { 200 } else { status }).unwrap();
    (status, b.answer.lock().unwrap().to_string())
}

async fn backend() -> (Arc<Backend>, SocketAddr) {
    let b = Arc::new(Backend::default());
    let app = axum::Router::new()
        .route("/centrifugo/connect", post(connect_hook))
        .with_state(b.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (b, addr)
}

async fn herald(endpoint: String) -> TestServer {
    TestServer::start(json!({
        "client": {"proxy": {"connect": {
            "enabled": true,
            "endpoint": endpoint,
            "timeout": "300ms",
            "http_headers": ["Cookie"],
            "emulated_headers": ["Authorization"],
            "http": {"static_headers": {"X-Herald-Key": "k1"}}
        }}},
        "channel": {"namespaces": [{"name": "chat", "presence": true}]}
    }))
    .await
}

/// A connect with no token, with data, client headers (emulation) and a cookie.
async fn connect(server: &TestServer) -> (Client, Reply) {
    let mut c = Client::open_at_with_headers(
        server.addr,
        Encoding::Json,
        None,
        &[
            ("cookie", "session=s3cret"),
            ("user-agent", "not forwarded"),
        ],
    )
    .await;
    let reply = c
        .call(Command {
            connect: Some(ConnectRequest {
                data: br#"{"room":"lobby"}"#.to_vec().into(),
                name: "test-sdk".into(),
                version: "1.2.3".into(),
                headers: [("Authorization".to_string(), "Bearer abc".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    (c, reply)
}

#[tokio::test]
async fn the_backend_decides_user_channels_and_data() {
    let (b, addr) = backend().await;
    *b.answer.lock().unwrap() = json!({"result": {
        "user": "alice", "channels": ["chat:proxied"], "data": {"welcome": true},
        "info": {"name": "Alice"}
    }});
    let server = herald(format!("http://{addr}/centrifugo/connect")).await;
    let (mut c, reply) = connect(&server).await;
    let result = reply
        .connect
        .clone()
        .unwrap_or_else(|| panic!("connect failed: {reply:?}"));
    assert_eq!(
        support::payload_json(&result.data),
        json!({"welcome": true})
    );
    assert!(result.subs.contains_key("chat:proxied"), "{result:?}");

    // What the backend saw: Centrifugo's request shape and the configured headers only.
    let (headers, body) = b.seen.lock().unwrap()[0].clone();
    assert_eq!(body["client"], json!(result.client));
    assert_eq!(body["transport"], "websocket");
    assert_eq!(
        (body["protocol"].as_str(), body["encoding"].as_str()),
        (Some("json"), Some("json"))
    );
    assert_eq!(
        (body["name"].as_str(), body["version"].as_str()),
        (Some("test-sdk"), Some("1.2.3"))
    );
    assert_eq!(body["data"], json!({"room": "lobby"}));
    assert_eq!(headers["cookie"], "session=s3cret");
    assert_eq!(headers["authorization"], "Bearer abc");
    assert_eq!(headers["x-herald-key"], "k1");
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        headers
            .get("user-agent")
            .is_none_or(|v| v != "not forwarded")
    );

    // The connection is alice's: presence says so, and the server-side channel delivers.
    let presence = server
        .api
        .ok("presence", json!({"channel": "chat:proxied"}))
        .await;
    let users: Vec<&str> = presence["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| i["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice"]);
    server.api.publish("chat:proxied", json!({"n": 1})).await;
    let p = c.expect_pub("chat:proxied").await;
    assert_eq!(support::payload_json(&p.data), json!({"n": 1}));
}

#[tokio::test]
async fn the_backends_error_and_disconnect_reach_the_client() {
    let (b, addr) = backend().await;
    let server = herald(format!("http://{addr}/centrifugo/connect")).await;
    *b.answer.lock().unwrap() = json!({"error": {"code": 1403, "message": "unknown user"}});
    let (_c, reply) = connect(&server).await;
    let e = reply
        .error
        .clone()
        .unwrap_or_else(|| panic!("an error: {reply:?}"));
    assert_eq!((e.code, e.message.as_str()), (1403, "unknown user"));

    *b.answer.lock().unwrap() = json!({"disconnect": {"code": 4501, "reason": "banned"}});
    let mut c = Client::open_at(server.addr, Encoding::Json, None).await;
    c.send(Command {
        id: 1,
        connect: Some(ConnectRequest::default()),
        ..Default::default()
    })
    .await;
    assert_eq!(c.expect_close_code(4501).await, "banned");
}

#[tokio::test]
async fn a_slow_failing_or_absent_backend_gives_a_temporary_error_in_time() {
    let (b, addr) = backend().await;
    let server = herald(format!("http://{addr}/centrifugo/connect")).await;
    *b.answer.lock().unwrap() = json!({"result": {"user": "late"}});
    *b.delay.lock().unwrap() = Duration::from_secs(3);
    let started = Instant::now();
    let (_c, reply) = connect(&server).await;
    let e = reply
        .error
        .clone()
        .unwrap_or_else(|| panic!("an error: {reply:?}"));
    assert_eq!((e.code, e.temporary), (100, true), "slow backend");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered within the timeout"
    );

    *b.delay.lock().unwrap() = Duration::ZERO;
    *b.status.lock().unwrap() = 502;
    let (_c, reply) = connect(&server).await;
    assert_eq!(reply.error.map(|e| e.code), Some(100), "HTTP 502");

    *b.status.lock().unwrap() = 200;
    *b.answer.lock().unwrap() = json!("not a response");
    let (_c, reply) = connect(&server).await;
    assert_eq!(reply.error.map(|e| e.code), Some(100), "garbage");

    // Nothing listens there: refused at once.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = gone.local_addr().unwrap().port();
    drop(gone);
    let server = herald(format!("http://127.0.0.1:{port}/centrifugo/connect")).await;
    let (mut c, reply) = connect(&server).await;
    assert_eq!(reply.error.map(|e| e.code), Some(100), "no backend");
    // The connection stays open: the client may try again on it (and gets the same answer).
    let again = c
        .call(Command {
            connect: Some(ConnectRequest::default()),
            ..Default::default()
        })
        .await;
    assert_eq!(
        again.error.map(|e| e.code),
        Some(100),
        "retry on the same connection"
    );
}

#[tokio::test]
async fn a_config_with_a_bad_endpoint_is_refused_with_its_key() {
    for (endpoint, says) in [
        (
            "grpc://127.0.0.1:1/path",
            "a gRPC endpoint is grpc://host:port",
        ),
        (
            "127.0.0.1:1/connect",
            "must be an http://, https:// or grpc:// URL",
        ),
    ] {
        let mut config = herald::config::Config::default();
        config.client.proxy.connect.enabled = true;
        config.client.proxy.connect.endpoint = endpoint.into();
        let e = config.validate().expect_err(endpoint).to_string();
        assert!(
            e.contains("client.proxy.connect.endpoint") && e.contains(says),
            "{e}"
        );
    }
}
