//! A client that stops reading its socket must not hold up the others or grow the server's
//! memory: with a tiny `client.max_queue_size` it is disconnected ("slow", 3008, or the
//! connection simply ends) while a normal client on the same channel receives every
//! publication in order, and the server stays healthy.

#[macro_use]
mod support;

use std::time::Duration;

use herald::protocol::Encoding;
use serde_json::json;
use support::{Client, TestServer, payload_json};

const PUBLICATIONS: u64 = 2000;
/// Bytes of padding per publication. The kernel's socket buffers on loopback absorb about
/// 3 MB for a client that does not read (the server's send buffer grows even when the
/// client's receive buffer is small), so the 2000 publications must add up to more.
const PAD: usize = 4096;
/// `client.max_queue_size`: 16 times below the default, a few publications deep.
const MAX_QUEUE: usize = 65536;
/// Publications the test lets the normal client fall behind by: its queue stays well under
/// the limit however the machine schedules the server's writer.
const WINDOW: u64 = 4;

fn config() -> serde_json::Value {
    json!({
        "client": {"max_queue_size": MAX_QUEUE},
        "channel": {"without_namespace": {"allow_subscribe_for_client": true}}
    })
}

both_encodings!(slow_reader_is_disconnected_and_others_get_everything);

async fn slow_reader_is_disconnected_and_others_get_everything(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let pad = "p".repeat(PAD);

    // The slow client: a small receive buffer, subscribed, then never reads.
    let mut slow = Client::open(&server, enc, Some(4096)).await;
    slow.connect(&server.token("slow")).await;
    slow.subscribe("feed").await;

    let (mut normal, _) = server.connected(enc, "normal").await;
    normal.subscribe("feed").await;

    // Publish with a window: never more than WINDOW publications ahead of what the normal
    // client has read. The slow client's queue has no such luck.
    let mut received = 0;
    let mut published = 0;
    while received < PUBLICATIONS {
        if published < PUBLICATIONS && published - received < WINDOW {
            published += 1;
            server
                .api
                .publish("feed", json!({"i": published, "pad": pad}))
                .await;
            continue;
        }
        let p = normal.expect_pub("feed").await;
        received += 1;
        assert_eq!(
            payload_json(&p.data),
            json!({"i": received, "pad": pad}),
            "normal client: publication {received} in order"
        );
    }

    // The slow client was cut off: reading now drains what the kernel buffered, then ends.
    let end = slow.expect_close(Duration::from_secs(4)).await;
    if let Some((code, reason)) = &end {
        assert!(
            *code == 3008 || *code == 3009,
            "slow client closed with {code} {reason:?}, expected 3008 (slow) or 3009"
        );
    }
    eprintln!("slow client ended with {end:?}");

    // Server healthy, normal client still served, slow client forgotten.
    assert_eq!(server.api.get_status("/health").await, 200);
    server.api.publish("feed", json!({"after": true})).await;
    let p = normal.expect_pub("feed").await;
    assert_eq!(payload_json(&p.data), json!({"after": true}));
    let info = server.api.ok("info", json!({})).await;
    assert_eq!(
        info["nodes"][0]["num_clients"],
        json!(1),
        "only the normal client is left: {info}"
    );
}
