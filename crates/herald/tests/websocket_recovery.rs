//! Recovery over WebSocket, in JSON and Protobuf: a client that comes back with its last
//! offset and epoch gets exactly what it missed, in order, once, or is told it did not
//! (history too short, wrong epoch); and subscribing while publications stream in leaves
//! no gap and no duplicate between the subscribe reply and the pushes that follow.

#[macro_use]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald::protocol::Encoding;
use herald::protocol::proto;
use serde_json::json;
use support::{TestServer, WAIT, cmd, offsets, payload_json};

fn config() -> serde_json::Value {
    json!({
        "channel": {
            "namespaces": [
                {"name": "rec", "history_size": 100, "history_ttl": "300s",
                 "force_recovery": true, "allow_subscribe_for_client": true},
                {"name": "tiny", "history_size": 3, "history_ttl": "300s",
                 "force_recovery": true, "allow_subscribe_for_client": true},
                {"name": "big", "history_size": 1000, "history_ttl": "300s",
                 "force_recovery": true, "allow_subscribe_for_client": true}
            ]
        }
    })
}

both_encodings!(
    recovers_exactly_the_missed_publications,
    gap_longer_than_history_is_not_recovered,
    wrong_epoch_is_not_recovered,
    subscribe_during_concurrent_publishing_has_no_gap_or_duplicate,
    server_side_subscription_recovers_from_connect_request,
);

async fn recovers_exactly_the_missed_publications(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    let sub = c.subscribe("rec:a").await;
    assert!(sub.recoverable, "force_recovery: {sub:?}");
    let epoch = sub.epoch.clone();
    assert!(!epoch.is_empty());
    let mut last = sub.offset;
    for i in 1..=3 {
        server.api.publish("rec:a", json!({"i": i})).await;
        let p = c.expect_pub("rec:a").await;
        assert_eq!(p.offset, last + 1);
        last = p.offset;
    }
    drop(c);

    for i in 4..=8 {
        server.api.publish("rec:a", json!({"i": i})).await;
    }

    let (mut c, _) = server.connected(enc, "alice").await;
    let sub = c.subscribe_cmd(cmd::recover("rec:a", last, &epoch)).await;
    assert!(sub.recovered, "recovered: {sub:?}");
    assert!(sub.was_recovering);
    assert_eq!(sub.epoch, epoch);
    assert_eq!(sub.offset, 8);
    assert_eq!(offsets(&sub.publications), [4, 5, 6, 7, 8]);
    for (p, i) in sub.publications.iter().zip(4..) {
        assert_eq!(payload_json(&p.data), json!({"i": i}));
    }
    // Nothing recovered is pushed again; the next publication follows on.
    c.expect_no_push(Duration::from_millis(200)).await;
    server.api.publish("rec:a", json!({"i": 9})).await;
    assert_eq!(c.expect_pub("rec:a").await.offset, 9);
    c.expect_no_push(Duration::from_millis(100)).await;

    // Recovering from the top: nothing missed, still recovered.
    let (mut c2, _) = server.connected(enc, "alice").await;
    let sub = c2.subscribe_cmd(cmd::recover("rec:a", 9, &epoch)).await;
    assert!(sub.recovered && sub.publications.is_empty(), "{sub:?}");
}

async fn gap_longer_than_history_is_not_recovered(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    let sub = c.subscribe("tiny:a").await;
    let epoch = sub.epoch.clone();
    server.api.publish("tiny:a", json!({"i": 1})).await;
    assert_eq!(c.expect_pub("tiny:a").await.offset, 1);
    drop(c);

    // Five missed, three kept.
    for i in 2..=6 {
        server.api.publish("tiny:a", json!({"i": i})).await;
    }
    let (mut c, _) = server.connected(enc, "alice").await;
    let sub = c.subscribe_cmd(cmd::recover("tiny:a", 1, &epoch)).await;
    assert!(!sub.recovered, "history keeps 3 of 5 missed: {sub:?}");
    assert!(sub.was_recovering);
    assert_eq!(sub.epoch, epoch);
    assert_eq!(sub.offset, 6, "the current top position");
    // Still subscribed from now on.
    server.api.publish("tiny:a", json!({"i": 7})).await;
    assert_eq!(c.expect_pub("tiny:a").await.offset, 7);
}

async fn wrong_epoch_is_not_recovered(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    let sub = c.subscribe("rec:e").await;
    let epoch = sub.epoch.clone();
    for i in 1..=3 {
        server.api.publish("rec:e", json!({"i": i})).await;
    }
    drop(c);

    let (mut c, _) = server.connected(enc, "alice").await;
    let sub = c
        .subscribe_cmd(cmd::recover("rec:e", 1, "other-epoch"))
        .await;
    assert!(!sub.recovered, "wrong epoch: {sub:?}");
    assert!(
        sub.publications.is_empty(),
        "nothing from another epoch's stream"
    );
    assert_eq!(sub.epoch, epoch, "the stream's real epoch is returned");
    assert_eq!(sub.offset, 3);
}

const CONCURRENT_TOTAL: usize = 200;
const PUBLISHERS: usize = 4;

async fn subscribe_during_concurrent_publishing_has_no_gap_or_duplicate(enc: Encoding) {
    let server = TestServer::start(config()).await;
    // Fix the stream's epoch before the first publication (a history read creates it).
    let h = server
        .api
        .ok("history", json!({"channel": "big:c", "limit": 0}))
        .await;
    let epoch = h["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(h["offset"], json!(0));

    let (mut c, _) = server.connected(enc, "alice").await;
    let published = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..PUBLISHERS {
        let api = server.api.clone();
        let published = published.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..CONCURRENT_TOTAL / PUBLISHERS {
                api.publish("big:c", json!({"w": w, "i": i})).await;
                published.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Subscribe once publishing is well under way.
    let deadline = tokio::time::Instant::now() + WAIT;
    while published.load(Ordering::Relaxed) < CONCURRENT_TOTAL / 4 {
        assert!(tokio::time::Instant::now() < deadline, "publishers stalled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let sub = c.subscribe_cmd(cmd::recover("big:c", 0, &epoch)).await;
    assert!(sub.recovered, "{sub:?}");
    let mut seen = offsets(&sub.publications);
    assert!(
        !seen.is_empty(),
        "publications before the subscribe are recovered"
    );
    while seen.len() < CONCURRENT_TOTAL {
        let p = c.expect_pub("big:c").await;
        seen.push(p.offset);
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
    let expected: Vec<u64> = (1..=CONCURRENT_TOTAL as u64).collect();
    assert_eq!(
        seen,
        expected,
        "recovered {} then pushed: every offset once, in order",
        sub.publications.len()
    );
    c.expect_no_push(Duration::from_millis(100)).await;
}

async fn server_side_subscription_recovers_from_connect_request(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let token = server.token_with(json!({"sub": "alice", "channels": ["rec:srv"]}));
    let mut c = server.open(enc).await;
    let res = c.connect(&token).await;
    let sub = &res.subs["rec:srv"];
    assert!(sub.recoverable, "force_recovery: {sub:?}");
    let epoch = sub.epoch.clone();
    server.api.publish("rec:srv", json!({"i": 1})).await;
    assert_eq!(c.expect_pub("rec:srv").await.offset, 1);
    drop(c);

    for i in 2..=4 {
        server.api.publish("rec:srv", json!({"i": i})).await;
    }
    // The SDK sends the positions of its server-side subscriptions in the connect request.
    let mut c = server.open(enc).await;
    let mut connect = cmd::connect(&token);
    connect.connect.as_mut().unwrap().subs.insert(
        "rec:srv".into(),
        proto::SubscribeRequest {
            recover: true,
            offset: 1,
            epoch: epoch.clone(),
            ..Default::default()
        },
    );
    let res = c.call_ok(connect).await.connect.expect("connect result");
    let sub = &res.subs["rec:srv"];
    assert!(sub.recovered, "{sub:?}");
    assert_eq!(offsets(&sub.publications), [2, 3, 4]);
    server.api.publish("rec:srv", json!({"i": 5})).await;
    assert_eq!(c.expect_pub("rec:srv").await.offset, 5);
    c.expect_no_push(Duration::from_millis(100)).await;
}
