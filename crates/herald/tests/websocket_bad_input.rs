//! Bad input over WebSocket: malformed frames, unknown methods, oversized frames, commands
//! out of order, and a flood of commands. Each test checks what the offending connection
//! gets and that a well-behaved client keeps receiving publications afterwards.

#[macro_use]
mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use herald::protocol::Encoding;
use herald::protocol::proto::Command;
use serde_json::json;
use support::{TestServer, Witness, cmd};
use tokio_websockets::Message;

const SIZE_LIMIT: usize = 4096;

fn config() -> serde_json::Value {
    json!({
        "websocket": {"message_size_limit": SIZE_LIMIT},
        "channel": {"without_namespace": {"allow_subscribe_for_client": true}}
    })
}

async fn server_and_witness() -> (TestServer, Witness) {
    let server = TestServer::start(config()).await;
    let mut witness = Witness::new(&server, "witness").await;
    witness.check(&server).await;
    (server, witness)
}

both_encodings!(
    unknown_method_is_error_104,
    oversized_frame_closes_with_1009,
    subscribe_before_connect_closes_with_3501,
    flood_of_subscribe_unsubscribe_is_answered,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_text_frame_closes_with_3501() {
    let (server, mut witness) = server_and_witness().await;
    // Before connect.
    let mut c = server.open(Encoding::Json).await;
    c.send_raw(Message::text("hello, not json")).await;
    c.expect_close_code(3501).await;
    // After connect.
    let (mut c, _) = server.connected(Encoding::Json, "alice").await;
    c.send_raw(Message::text("hello, not json")).await;
    c.expect_close_code(3501).await;
    witness.check(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_json_closes_with_3501() {
    let (server, mut witness) = server_and_witness().await;
    let (mut c, _) = server.connected(Encoding::Json, "alice").await;
    c.send_raw(Message::text(r#"{"id":2,"subscribe":{"channel":"#))
        .await;
    c.expect_close_code(3501).await;
    // A good command followed by a truncated one in the same frame.
    let (mut c, _) = server.connected(Encoding::Json, "bob").await;
    c.send_raw(Message::text(
        "{\"id\":2,\"subscribe\":{\"channel\":\"x\"}}\n{\"id\":3,",
    ))
    .await;
    c.expect_close(support::WAIT).await;
    assert_eq!(
        c.close_status().flatten().map(|(code, _)| code),
        Some(3501),
        "bad batch closes with 3501"
    );
    witness.check(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_protobuf_closes_with_3501() {
    let (server, mut witness) = server_and_witness().await;
    let bad: &'static [u8] = &[0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01];
    // Before connect.
    let mut c = server.open(Encoding::Protobuf).await;
    c.send_raw(Message::binary(Bytes::from_static(bad))).await;
    c.expect_close_code(3501).await;
    // After connect.
    let (mut c, _) = server.connected(Encoding::Protobuf, "alice").await;
    c.send_raw(Message::binary(Bytes::from_static(bad))).await;
    c.expect_close_code(3501).await;
    // A length prefix that promises more than the frame holds.
    let (mut c, _) = server.connected(Encoding::Protobuf, "bob").await;
    c.send_raw(Message::binary(Bytes::from_static(&[0x10, 0x08, 0x01])))
        .await;
    c.expect_close_code(3501).await;
    witness.check(&server).await;
}

async fn unknown_method_is_error_104(enc: Encoding) {
    let (server, mut witness) = server_and_witness().await;
    let (mut c, _) = server.connected(enc, "alice").await;
    let only_id = Command {
        id: 77,
        ..Default::default()
    };
    assert_eq!(c.call_err(only_id).await, 104);
    // The connection survives an unknown method.
    c.subscribe("after-unknown").await;
    server.api.publish("after-unknown", json!({"ok": 1})).await;
    c.expect_pub("after-unknown").await;
    witness.check(&server).await;
}

async fn oversized_frame_closes_with_1009(enc: Encoding) {
    let (server, mut witness) = server_and_witness().await;
    let (mut c, _) = server.connected(enc, "alice").await;
    // A frame just under the limit is fine.
    let small = json!({"pad": "x".repeat(SIZE_LIMIT / 2)});
    c.subscribe("big").await;
    c.call_ok(cmd::ping()).await;
    let reply = c.call(cmd::publish("big", &small)).await;
    assert_eq!(
        reply.error.map(|e| e.code),
        Some(103),
        "publish refused by permissions, not by size"
    );
    // Over it: the connection is closed with 1009.
    let big = json!({"pad": "x".repeat(SIZE_LIMIT * 2)});
    c.send(cmd::publish("big", &big)).await;
    c.expect_close_code(1009).await;
    witness.check(&server).await;
}

async fn subscribe_before_connect_closes_with_3501(enc: Encoding) {
    let (server, mut witness) = server_and_witness().await;
    let mut c = server.open(enc).await;
    c.send(Command {
        id: 1,
        ..cmd::subscribe("witness")
    })
    .await;
    c.expect_close_code(3501).await;
    // Connecting twice is also out of order.
    let (mut c, _) = server.connected(enc, "alice").await;
    c.send(Command {
        id: 9,
        ..cmd::connect(&server.token("alice"))
    })
    .await;
    c.expect_close_code(3501).await;
    witness.check(&server).await;
}

const FLOOD: usize = 10_000;
/// Commands per frame: the frame stays under the size limit in both encodings.
const PER_FRAME: usize = 50;

async fn flood_of_subscribe_unsubscribe_is_answered(enc: Encoding) {
    let (server, mut witness) = server_and_witness().await;
    let (mut c, _) = server.connected(enc, "flooder").await;
    let mut expected = HashSet::new();
    for frame in 0..FLOOD / PER_FRAME {
        let cmds: Vec<Command> = (0..PER_FRAME / 2)
            .flat_map(|i| {
                let channel = format!("flood{}", (frame * PER_FRAME + i) % 50);
                [cmd::subscribe(&channel), cmd::unsubscribe(&channel)]
            })
            .collect();
        match c.try_send_batch(cmds).await {
            Ok(ids) => expected.extend(ids),
            Err(e) => {
                // The server hung up mid-flood; what follows checks it said why.
                eprintln!("flood: send failed after {} commands: {e}", expected.len());
                break;
            }
        }
    }

    let mut answered = HashSet::new();
    let mut errors = 0;
    while answered.len() < expected.len() {
        match c.next_reply(Duration::from_secs(4)).await {
            Some(reply) => {
                if reply.push.is_some() {
                    continue;
                }
                assert!(
                    expected.contains(&reply.id),
                    "reply to an unknown id: {reply:?}"
                );
                assert!(answered.insert(reply.id), "two replies to {}", reply.id);
                if let Some(e) = &reply.error {
                    errors += 1;
                    // 111: over client.command_rate_limit; 105: a subscribe whose channel's
                    // unsubscribe was one of those refused; 106: over the channel limit.
                    assert!(
                        matches!(e.code, 111 | 105 | 106),
                        "unexpected error under load: {e:?}"
                    );
                }
            }
            None => {
                let status = c.close_status().flatten();
                let code = status.as_ref().map(|(code, _)| *code);
                assert!(
                    code.is_some_and(|code| (3000..4000).contains(&code)),
                    "flood ended the connection without a protocol disconnect code: {status:?} \
                     after {} replies",
                    answered.len()
                );
                break;
            }
        }
    }
    if answered.len() == FLOOD && c.close_status().is_none() {
        // Every command was answered; the connection is still usable.
        c.call_ok(cmd::ping()).await;
    }
    eprintln!(
        "flood: {} of {FLOOD} answered, {errors} errors",
        answered.len()
    );
    witness.check(&server).await;
    assert_eq!(
        server.api.get_status("/health").await,
        200,
        "server healthy after the flood"
    );
}

/// `[[[...]]]` nested `depth` levels.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nested_past_the_bound_is_refused_everywhere() {
    let server = TestServer::start(json!({
        "client": {"max_json_depth": 64},
        "http_api": {"max_json_depth": 64},
        "channel": {"without_namespace": {
            "allow_subscribe_for_client": true, "allow_publish_for_client": true
        }}
    }))
    .await;
    let mut witness = Witness::new(&server, "witness").await;
    witness.check(&server).await;

    // The server API: a million levels (Centrifugo refuses past 10,000) and just past the
    // bound are 400 naming the key; at the bound the publication goes out.
    for depth in [1_000_000, 65] {
        let body = format!(r#"{{"channel":"deep","data":{}}}"#, nested(depth));
        let (status, text) = server
            .api
            .raw("publish", body.into_bytes(), Some(support::API_KEY))
            .await;
        assert_eq!(status, 400, "depth {depth}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON error envelope");
        assert_eq!(v["error"]["code"], 400, "{text}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("64") && message.contains("http_api.max_json_depth"),
            "{text}"
        );
    }
    let mut sub = server.connected(Encoding::Json, "sub").await.0;
    sub.subscribe("deep").await;
    let body = format!(r#"{{"channel":"deep","data":{}}}"#, nested(63));
    let (status, text) = server
        .api
        .raw("publish", body.into_bytes(), Some(support::API_KEY))
        .await;
    assert_eq!(status, 200, "{text}");
    sub.expect_pub("deep").await;

    // A client command (20,000 levels fit the default 64 KiB frame limit): the connection is
    // closed as a bad request; nothing is delivered.
    let (mut c, _) = server.connected(Encoding::Json, "alice").await;
    let frame = format!(
        r#"{{"id":5,"publish":{{"channel":"deep","data":{}}}}}"#,
        nested(20_000)
    );
    c.send_raw(Message::text(frame)).await;
    c.expect_close_code(3501).await;
    sub.expect_no_push(Duration::from_millis(300)).await;
    witness.check(&server).await;
}
