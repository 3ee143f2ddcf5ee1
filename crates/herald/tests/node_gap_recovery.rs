//! Gap detection: a publication lost between the broker and this node is never a silent
//! loss. The broker here keeps history but loses chosen deliveries, as a remote broker's
//! PUB/SUB can. A subscriber that then sees the next publication (an offset jump) is not
//! given it but unsubscribed with 2500 "insufficient state", so that an SDK resubscribes
//! and recovers; a server-side subscription's connection is closed with 3010 instead, so
//! that the SDK reconnects and recovers; and a lost *last* publication, which no later one
//! reveals, is found by the periodic position check. Every case ends with the client
//! holding every publication exactly once, in order.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use herald::protocol::Encoding;
use herald::protocol::proto;
use serde_json::json;
use support::engines::RemoteLike;
use support::{Client, TestServer, WAIT, cmd, offsets, payload_json};
use tokio::time::Instant;

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

both_encodings!(
    offset_jump_makes_the_subscriber_recover,
    server_side_subscription_reconnects_and_recovers,
    position_check_finds_a_lost_last_publication,
);

/// Behaves as the SDKs do with one subscription: keeps the position of the last
/// publication, and on an unsubscribe push with a code of 2500 or more resubscribes
/// asking to recover from it.
struct SdkLike {
    client: Client,
    channel: String,
    offset: u64,
    epoch: String,
    /// Every publication received, live or recovered, as (offset, payload "n").
    received: Vec<(u64, u64)>,
    /// Unsubscribe pushes seen (codes).
    unsubscribes: Vec<u32>,
}

impl SdkLike {
    async fn subscribe(server: &TestServer, enc: Encoding, channel: &str) -> SdkLike {
        let (mut client, _) = server.connected(enc, "alice").await;
        let sub = client.subscribe(channel).await;
        assert!(sub.recoverable && !sub.epoch.is_empty(), "{sub:?}");
        SdkLike {
            client,
            channel: channel.to_string(),
            offset: sub.offset,
            epoch: sub.epoch,
            received: Vec::new(),
            unsubscribes: Vec::new(),
        }
    }

    fn take(&mut self, publication: &proto::Publication) {
        let n = payload_json(&publication.data)["n"].as_u64().unwrap();
        self.received.push((publication.offset, n));
        self.offset = publication.offset;
    }

    /// Handles pushes until it holds a publication with payload `last`.
    async fn run_until(&mut self, last: u64) {
        let deadline = Instant::now() + WAIT;
        while self.received.last().map(|r| r.1) != Some(last) {
            let left = deadline.saturating_duration_since(Instant::now());
            let push = self.client.next_push(left).await.unwrap_or_else(|| {
                panic!(
                    "no publication {last} within {WAIT:?}; received {:?}",
                    self.received
                )
            });
            assert_eq!(push.channel, self.channel);
            if let Some(p) = &push.r#pub {
                self.take(p);
            } else if let Some(u) = &push.unsubscribe {
                self.unsubscribes.push(u.code);
                assert!(
                    u.code >= 2500,
                    "an unsubscribe the SDK would not recover from: {u:?}"
                );
                let sub = self
                    .client
                    .subscribe_cmd(cmd::recover(&self.channel, self.offset, &self.epoch))
                    .await;
                assert!(sub.recovered, "recovery from {}: {sub:?}", self.offset);
                for p in &sub.publications {
                    self.take(p);
                }
                self.offset = sub.offset;
                self.epoch = sub.epoch;
            }
        }
    }
}

fn in_order(last: u64) -> Vec<(u64, u64)> {
    (1..=last).map(|n| (n, n)).collect()
}

async fn offset_jump_makes_the_subscriber_recover(enc: Encoding) {
    let broker = RemoteLike::new(Duration::ZERO, Duration::ZERO);
    let server = TestServer::start_with_engine(config(), broker.engine()).await;
    let mut sdk = SdkLike::subscribe(&server, enc, "rec:g").await;
    broker.lose("rec:g", 3);
    for n in 1..=5 {
        server.api.publish("rec:g", json!({ "n": n })).await;
    }
    sdk.run_until(5).await;
    assert_eq!(broker.lost(), vec![("rec:g".to_string(), 3)]);
    assert_eq!(
        sdk.unsubscribes,
        vec![2500],
        "told once, insufficient state"
    );
    for n in 6..=8 {
        server.api.publish("rec:g", json!({ "n": n })).await;
    }
    sdk.run_until(8).await;
    assert_eq!(
        sdk.received,
        in_order(8),
        "every publication once, in order"
    );
    assert_eq!(
        server
            .api
            .metric("herald_gaps_detected_total{detected_by=\"delivery\"}")
            .await,
        1.0
    );
}

async fn server_side_subscription_reconnects_and_recovers(enc: Encoding) {
    let broker = RemoteLike::new(Duration::ZERO, Duration::ZERO);
    let server = TestServer::start_with_engine(config(), broker.engine()).await;
    let token = server.token_with(json!({"sub": "alice", "channels": ["rec:s"]}));
    let mut c = server.open(enc).await;
    let connected = c.connect(&token).await;
    let sub = &connected.subs["rec:s"];
    let epoch = sub.epoch.clone();
    assert!(!epoch.is_empty(), "{sub:?}");
    broker.lose("rec:s", 2);
    for n in 1..=3 {
        server.api.publish("rec:s", json!({ "n": n })).await;
    }
    let first = c.expect_pub("rec:s").await;
    assert_eq!(first.offset, 1);
    // The SDK cannot resubscribe a server-side subscription alone: the connection closes
    // with 3010 (insufficient state; reconnect).
    c.expect_close_code(3010).await;

    let mut c = server.open(enc).await;
    let mut connect = cmd::connect(&token);
    connect.connect.as_mut().unwrap().subs = HashMap::from([(
        "rec:s".to_string(),
        proto::SubscribeRequest {
            recover: true,
            offset: 1,
            epoch: epoch.clone(),
            ..Default::default()
        },
    )]);
    let reply = c.call_ok(connect).await;
    let sub = &reply.connect.unwrap().subs["rec:s"];
    assert!(sub.recovered, "{sub:?}");
    assert_eq!(offsets(&sub.publications), vec![2, 3]);
}

async fn position_check_finds_a_lost_last_publication(enc: Encoding) {
    let broker = RemoteLike::new(Duration::ZERO, Duration::ZERO);
    let mut cfg = config();
    cfg["client"] = json!({"channel_position_check_delay": "300ms"});
    let server = TestServer::start_with_engine(cfg, broker.engine()).await;
    let mut sdk = SdkLike::subscribe(&server, enc, "rec:p").await;
    broker.lose("rec:p", 3);
    for n in 1..=3 {
        server.api.publish("rec:p", json!({ "n": n })).await;
    }
    // Nothing after 3 reveals the loss: only the position check can.
    sdk.run_until(3).await;
    assert_eq!(sdk.unsubscribes, vec![2500]);
    assert_eq!(sdk.received, in_order(3));
    assert_eq!(
        server
            .api
            .metric("herald_gaps_detected_total{detected_by=\"position_check\"}")
            .await,
        1.0
    );
    // A client that is up to date is left alone by later checks.
    tokio::time::sleep(Duration::from_millis(900)).await;
    sdk.client.expect_no_push(Duration::from_millis(100)).await;
}
