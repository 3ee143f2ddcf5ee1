//! The per-channel subscribe lock, against a broker that behaves like a remote one (its
//! subscribe and unsubscribe take time, it delivers only while the node is subscribed):
//! a second subscriber is answered only once the node's broker subscription is live, so
//! it misses nothing published after its reply; and a last unsubscribe racing a first
//! subscribe never leaves the node unsubscribed while a client is subscribed.

#[macro_use]
mod support;

use std::time::Duration;

use herald::protocol::Encoding;
use serde_json::json;
use support::engines::RemoteLike;
use support::{TestServer, cmd, offsets};

fn config() -> serde_json::Value {
    json!({
        "channel": {
            "namespaces": [
                {"name": "rec", "history_size": 100, "history_ttl": "300s",
                 "force_recovery": true, "allow_subscribe_for_client": true}
            ]
        }
    })
}

/// How long the broker takes to subscribe or unsubscribe in the slow direction: long
/// enough that the other client's command lands inside it.
const SLOW: Duration = Duration::from_millis(600);

both_encodings!(
    second_subscriber_waits_for_the_broker_subscription,
    unsubscribe_racing_subscribe_leaves_the_node_subscribed,
);

async fn second_subscriber_waits_for_the_broker_subscription(enc: Encoding) {
    let broker = RemoteLike::new(SLOW, Duration::ZERO);
    let server = TestServer::start_with_engine(config(), broker.engine()).await;
    let (mut a, _) = server.connected(enc, "alice").await;
    let (mut b, _) = server.connected(enc, "bob").await;

    // A is the first subscriber: the node's broker subscribe is in flight for SLOW.
    let a_id = a.send_batch(vec![cmd::subscribe("rec:x")]).await[0];
    tokio::time::sleep(SLOW / 4).await;
    // B subscribes while it is: without the lock B is answered at once, from a stream
    // position the node's delivery has not caught up with.
    let b_id = b.send_batch(vec![cmd::subscribe("rec:x")]).await[0];
    tokio::time::sleep(SLOW / 4).await;
    assert!(
        !broker.is_live("rec:x"),
        "the broker subscribe is still in flight"
    );
    server.api.publish("rec:x", json!({"n": 1})).await;

    let a_sub = a
        .wait_reply(a_id, "A's subscribe")
        .await
        .subscribe
        .expect("A subscribed");
    let b_sub = b
        .wait_reply(b_id, "B's subscribe")
        .await
        .subscribe
        .expect("B subscribed");
    assert!(broker.is_live("rec:x"));
    server.api.publish("rec:x", json!({"n": 2})).await;

    // Each client must get every publication after the position of its reply.
    for (name, client, sub) in [("A", &mut a, a_sub), ("B", &mut b, b_sub)] {
        let mut got = Vec::new();
        while let Some(push) = client.next_push(Duration::from_millis(300)).await {
            got.extend(push.r#pub.map(|p| p.offset));
        }
        let expected: Vec<u64> = (sub.offset + 1..=2).collect();
        assert_eq!(
            got, expected,
            "{name} subscribed at offset {} and must receive every later publication",
            sub.offset
        );
    }
}

async fn unsubscribe_racing_subscribe_leaves_the_node_subscribed(enc: Encoding) {
    // Unsubscribing is slow, subscribing quick: without the lock, B's subscribe takes
    // effect first and A's late unsubscribe then takes the node out of the channel.
    let broker = RemoteLike::new(Duration::from_millis(50), SLOW);
    let server = TestServer::start_with_engine(config(), broker.engine()).await;
    let (mut a, _) = server.connected(enc, "alice").await;
    let (mut b, _) = server.connected(enc, "bob").await;
    a.subscribe("rec:y").await;
    assert!(broker.is_live("rec:y"));

    // A, the only subscriber, leaves: the broker unsubscribe is in flight for SLOW.
    a.send_batch(vec![cmd::unsubscribe("rec:y")]).await;
    tokio::time::sleep(SLOW / 4).await;
    // B becomes the channel's first subscriber meanwhile.
    let b_sub = b.subscribe("rec:y").await;
    // Let A's unsubscribe finish, whatever order the two took effect in.
    tokio::time::sleep(SLOW).await;
    assert!(
        broker.is_live("rec:y"),
        "B is subscribed, so the node must be subscribed in the broker"
    );
    for n in 1..=2 {
        server.api.publish("rec:y", json!({ "n": n })).await;
    }
    let mut got = Vec::new();
    for _ in 1..=2 {
        got.push(b.expect_pub("rec:y").await);
    }
    assert_eq!(offsets(&got), vec![b_sub.offset + 1, b_sub.offset + 2]);
}
