//! WebSocket over HTTP/2 (RFC 8441): an extended CONNECT with `:protocol = websocket` on an
//! HTTP/2 connection (h2c here) opens a WebSocket on that stream, which speaks the client
//! protocol as over HTTP/1.1, while the same connection keeps serving other requests.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::TestServer;
use tokio_websockets::Message;

const WAIT: Duration = Duration::from_secs(5);

/// Next JSON message of the WebSocket (frames may hold several, newline-separated).
async fn next_json<S>(
    ws: &mut tokio_websockets::WebSocketStream<S>,
    pending: &mut Vec<Value>,
) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        if !pending.is_empty() {
            return pending.remove(0);
        }
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("a message");
        let text = msg.as_text().expect("a text frame").to_owned();
        pending.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Value>(l).expect("JSON")),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_opens_a_websocket_that_shares_the_http2_connection() {
    let server = TestServer::start(json!({
        "channel": {"without_namespace": {"allow_subscribe_for_client": true}},
    }))
    .await;
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);

    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/connection/websocket", server.addr))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("an answer in time")
        .expect("the server accepts extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)");
    assert_eq!(resp.status(), 200, "RFC 8441: 200 opens the WebSocket");
    let upgraded = hyper::upgrade::on(resp).await.expect("the stream is ours");
    let mut ws = tokio_websockets::ClientBuilder::new().take_over(TokioIo::new(upgraded));
    let mut pending = Vec::new();

    let token = server.token("alice");
    ws.send(Message::text(
        json!({"id": 1, "connect": {"token": token}}).to_string(),
    ))
    .await
    .unwrap();
    let reply = next_json(&mut ws, &mut pending).await;
    assert_eq!(reply["id"], 1, "{reply}");
    assert!(reply["connect"]["client"].is_string(), "connected: {reply}");
    ws.send(Message::text(
        json!({"id": 2, "subscribe": {"channel": "news"}}).to_string(),
    ))
    .await
    .unwrap();
    let reply = next_json(&mut ws, &mut pending).await;
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(reply.get("error").is_none(), "subscribed: {reply}");

    // The same HTTP/2 connection serves other requests while the WebSocket is open.
    let health = http::Request::builder()
        .uri(format!("http://{}/health", server.addr))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(health))
        .await
        .expect("an answer in time")
        .expect("health over the same connection");
    assert_eq!(resp.status(), 200);

    for n in 1..=3 {
        server.api.publish("news", json!({"n": n})).await;
    }
    for n in 1..=3 {
        let push = next_json(&mut ws, &mut pending).await;
        assert_eq!(push["push"]["channel"], "news", "{push}");
        assert_eq!(push["push"]["pub"]["data"]["n"], n, "in order: {push}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_for_another_protocol_or_version_is_refused() {
    let server = TestServer::start(json!({})).await;
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    for (protocol, version) in [("websocket", "8"), ("webtransport", "13")] {
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("http://{}/connection/websocket", server.addr))
            .header("sec-websocket-version", version)
            .body(Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(protocol));
        let resp = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("an answer in time")
            .expect("an answer");
        assert_eq!(
            resp.status(),
            400,
            ":protocol {protocol}, version {version}: refused"
        );
    }
}

/// Headless Chromium against Herald over TLS directly: the page comes over HTTP/2 (ALPN h2), and the page's
/// `WebSocket` rides that connection as an RFC 8441 stream (tests/browser/websocket_h2.cjs checks the protocol
/// and Herald's `herald_websocket_handshakes_total{http="2"}`).
#[test]
fn chromium_opens_its_websocket_over_http2_on_herald_over_tls() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let files = support::streams::TlsFiles::generate();
    let mut config = json!({
        "prometheus": {"enabled": true},
        "channel": {"namespaces": [{"name": "chat", "allow_subscribe_for_client": true}]},
    });
    support::merge(&mut config, files.server_config());
    let server = rt.block_on(TestServer::start(config));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let chromium =
        std::env::var("HERALD_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let out = std::process::Command::new("node")
        .current_dir(&root)
        .arg("tests/browser/websocket_h2.cjs")
        .args([
            "--base",
            &format!("https://localhost:{}", server.addr.port()),
        ])
        .args([
            "--api-key",
            support::API_KEY,
            "--token",
            &server.token("chromium"),
        ])
        .args(["--chromium", &chromium])
        .output()
        .expect(
            "run node tests/browser/websocket_h2.cjs (needs Node 20+ and npm ci --prefix tests/js)",
        );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.trim_end().ends_with("0 failed"),
        "the Chromium checks failed:\n{stdout}"
    );
    drop(server);
}
