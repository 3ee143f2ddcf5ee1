//! The server API as seen from WebSocket clients: a disconnect with a code closes the
//! client's socket with that code; a wrong key is 401; a body that is not JSON is 400.

#[macro_use]
mod support;

use herald::protocol::Encoding;
use serde_json::{Value, json};
use support::{API_KEY, TestServer, cmd};

fn config() -> Value {
    json!({"channel": {"without_namespace": {"allow_subscribe_for_client": true}}})
}

both_encodings!(api_disconnect_closes_websocket_with_its_code);

async fn api_disconnect_closes_websocket_with_its_code(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut alice, _) = server.connected(enc, "alice").await;
    let (mut alice2, a2) = server.connected(enc, "alice").await;
    let (mut bob, _) = server.connected(enc, "bob").await;

    server
        .api
        .ok(
            "disconnect",
            json!({"user": "alice", "whitelist": [a2.client],
                   "disconnect": {"code": 3011, "reason": "force reconnect"}}),
        )
        .await;
    let reason = alice.expect_close_code(3011).await;
    assert_eq!(reason, "force reconnect");

    // The whitelisted connection and other users stay.
    alice2.call_ok(cmd::ping()).await;
    bob.call_ok(cmd::ping()).await;

    // One client by id, default code.
    server
        .api
        .ok("disconnect", json!({"user": "alice", "client": a2.client}))
        .await;
    let (code, _) = alice2
        .expect_close(support::WAIT)
        .await
        .expect("close frame");
    assert!(
        (3500..4000).contains(&code),
        "default API disconnect is a no-reconnect code: {code}"
    );
    bob.call_ok(cmd::ping()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_wrong_or_missing_key_is_401() {
    let server = TestServer::start(config()).await;
    let body = json!({"channel": "x", "data": {}}).to_string().into_bytes();
    let (status, text) = server
        .api
        .raw("publish", body.clone(), Some("wrong-key"))
        .await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = server.api.raw("publish", body.clone(), None).await;
    assert_eq!(status, 401, "{text}");
    let (status, text) = server.api.raw("publish", body, Some(API_KEY)).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_bad_json_is_400_with_a_message() {
    let server = TestServer::start(config()).await;
    for body in [
        &b"{not json"[..],
        b"{\"channel\": 5, \"data\": {}}",
        b"[1,2]",
    ] {
        let (status, text) = server
            .api
            .raw("publish", body.to_vec(), Some(API_KEY))
            .await;
        assert_eq!(
            status,
            400,
            "body {:?}: {text}",
            String::from_utf8_lossy(body)
        );
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("400 body is JSON ({e}): {text}"));
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "400 carries a message: {text}");
    }
}
