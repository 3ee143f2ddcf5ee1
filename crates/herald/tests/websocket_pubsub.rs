//! Subscribing and publishing over WebSocket, in JSON and Protobuf: API publications with
//! their data and offsets, client publications where allowed, history filters, the errors
//! of subscribe (unknown namespace, already subscribed), unsubscribe, and server-side
//! subscriptions from the token's `channels` claim.

#[macro_use]
mod support;

use std::time::Duration;

use herald::protocol::Encoding;
use herald::protocol::proto;
use serde_json::json;
use support::{TestServer, cmd, offsets, payload_json};

fn config() -> serde_json::Value {
    json!({
        "channel": {
            "without_namespace": {"allow_subscribe_for_client": true},
            "namespaces": [
                {"name": "chat", "history_size": 10, "history_ttl": "300s",
                 "allow_recovery": true, "allow_subscribe_for_client": true, "allow_publish_for_subscriber": true,
                 "allow_history_for_subscriber": true},
                {"name": "readonly", "allow_subscribe_for_client": true}
            ]
        }
    })
}

both_encodings!(
    api_publications_reach_subscriber_in_order,
    client_publish_where_allowed_and_refused_elsewhere,
    history_limit_since_reverse_and_wrong_epoch,
    unknown_namespace_is_102,
    already_subscribed_is_105,
    unsubscribe_stops_delivery,
    token_channels_claim_subscribes_server_side,
    api_subscribe_and_unsubscribe_push_to_the_client,
    channel_limit_is_106,
);

async fn api_publications_reach_subscriber_in_order(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    let sub = c
        .subscribe_cmd(cmd::subscribe_with(proto::SubscribeRequest {
            channel: "chat:room".into(),
            recoverable: true,
            ..Default::default()
        }))
        .await;
    assert!(sub.recoverable && sub.positioned, "{sub:?}");
    assert_eq!(sub.offset, 0, "fresh stream");
    assert!(!sub.epoch.is_empty(), "history namespace has an epoch");

    for i in 1..=5u64 {
        let data = json!({"text": "héllo \"q\" \n✓", "i": i, "nested": {"ok": true, "n": null}});
        let res = server.api.publish("chat:room", data.clone()).await;
        assert_eq!(res["offset"], json!(i), "API publish result: {res}");
        assert_eq!(res["epoch"], json!(sub.epoch));
        let publication = c.expect_pub("chat:room").await;
        assert_eq!(payload_json(&publication.data), data);
        assert_eq!(publication.offset, i);
    }

    // Without history: delivered, no offset.
    c.subscribe("news").await;
    server.api.publish("news", json!({"headline": "x"})).await;
    let publication = c.expect_pub("news").await;
    assert_eq!(payload_json(&publication.data), json!({"headline": "x"}));
    assert_eq!(publication.offset, 0);
}

async fn client_publish_where_allowed_and_refused_elsewhere(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut alice, _) = server.connected(enc, "alice").await;
    let (mut bob, _) = server.connected(enc, "bob").await;
    alice.subscribe("chat:room").await;
    bob.subscribe("chat:room").await;

    let data = json!({"from": "alice"});
    let reply = alice.call_ok(cmd::publish("chat:room", &data)).await;
    assert!(reply.publish.is_some(), "publish result: {reply:?}");
    for c in [&mut alice, &mut bob] {
        let publication = c.expect_pub("chat:room").await;
        assert_eq!(payload_json(&publication.data), data);
        assert_eq!(publication.offset, 1);
        let info = publication
            .info
            .expect("client publication carries its info");
        assert_eq!(info.user, "alice");
    }

    // Not subscribed: allow_publish_for_subscriber does not apply.
    assert_eq!(alice.call_err(cmd::publish("chat:other", &data)).await, 103);
    // Namespace without publish permissions.
    alice.subscribe("readonly:feed").await;
    assert_eq!(
        alice.call_err(cmd::publish("readonly:feed", &data)).await,
        103
    );
    // Nothing leaked to subscribers.
    bob.expect_no_push(Duration::from_millis(200)).await;
}

async fn history_limit_since_reverse_and_wrong_epoch(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    c.subscribe("chat:h").await;
    let mut epoch = String::new();
    for i in 1..=5 {
        let res = server.api.publish("chat:h", json!({"i": i})).await;
        epoch = res["epoch"].as_str().expect("epoch").to_string();
    }
    let history = |limit, since, reverse| cmd::history("chat:h", limit, since, reverse);

    let h = c.call_ok(history(-1, None, false)).await.history.unwrap();
    assert_eq!(offsets(&h.publications), [1, 2, 3, 4, 5]);
    assert_eq!((h.offset, h.epoch.as_str()), (5, epoch.as_str()));
    for (p, i) in h.publications.iter().zip(1..) {
        assert_eq!(payload_json(&p.data), json!({"i": i}));
    }

    let h = c.call_ok(history(0, None, false)).await.history.unwrap();
    assert!(h.publications.is_empty(), "limit 0: position only");
    assert_eq!(h.offset, 5);

    let h = c.call_ok(history(2, None, false)).await.history.unwrap();
    assert_eq!(offsets(&h.publications), [1, 2]);

    let h = c.call_ok(history(2, None, true)).await.history.unwrap();
    assert_eq!(offsets(&h.publications), [5, 4]);

    let h = c
        .call_ok(history(-1, Some((2, &epoch)), false))
        .await
        .history
        .unwrap();
    assert_eq!(offsets(&h.publications), [3, 4, 5]);

    let h = c
        .call_ok(history(1, Some((2, &epoch)), false))
        .await
        .history
        .unwrap();
    assert_eq!(offsets(&h.publications), [3]);

    let h = c
        .call_ok(history(10, Some((4, &epoch)), true))
        .await
        .history
        .unwrap();
    assert_eq!(offsets(&h.publications), [3, 2, 1]);

    assert_eq!(
        c.call_err(history(10, Some((2, "not-the-epoch")), false))
            .await,
        112
    );
    // Not subscribed: allow_history_for_subscriber does not apply.
    assert_eq!(
        c.call_err(cmd::history("chat:other", 10, None, false))
            .await,
        103
    );
}

async fn unknown_namespace_is_102(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    assert_eq!(c.call_err(cmd::subscribe("nope:x")).await, 102);
    // The connection is still fine.
    c.subscribe("chat:x").await;
}

async fn already_subscribed_is_105(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    c.subscribe("chat:x").await;
    assert_eq!(c.call_err(cmd::subscribe("chat:x")).await, 105);
    // Still subscribed once: one publication, one push.
    server.api.publish("chat:x", json!({"n": 1})).await;
    assert_eq!(c.expect_pub("chat:x").await.offset, 1);
    c.expect_no_push(Duration::from_millis(200)).await;
}

async fn unsubscribe_stops_delivery(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    c.subscribe("chat:u").await;
    server.api.publish("chat:u", json!({"n": 1})).await;
    assert_eq!(c.expect_pub("chat:u").await.offset, 1);

    let reply = c.call_ok(cmd::unsubscribe("chat:u")).await;
    assert!(reply.unsubscribe.is_some(), "unsubscribe result: {reply:?}");
    // The API returns after local delivery, so a push would already be on its way.
    server.api.publish("chat:u", json!({"n": 2})).await;
    c.expect_no_push(Duration::from_millis(300)).await;

    // Subscribing again works and delivers again.
    c.subscribe("chat:u").await;
    server.api.publish("chat:u", json!({"n": 3})).await;
    let publication = c.expect_pub("chat:u").await;
    assert_eq!(payload_json(&publication.data), json!({"n": 3}));
}

async fn token_channels_claim_subscribes_server_side(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let mut c = server.open(enc).await;
    let token = server.token_with(json!({"sub": "alice", "channels": ["chat:srv", "news"]}));
    let res = c.connect(&token).await;
    let mut subs: Vec<&String> = res.subs.keys().collect();
    subs.sort();
    assert_eq!(subs, ["chat:srv", "news"], "connect result subs");

    server.api.publish("chat:srv", json!({"srv": 1})).await;
    let publication = c.expect_pub("chat:srv").await;
    assert_eq!(payload_json(&publication.data), json!({"srv": 1}));
    assert_eq!(publication.offset, 1);
    server.api.publish("news", json!({"srv": 2})).await;
    assert_eq!(
        payload_json(&c.expect_pub("news").await.data),
        json!({"srv": 2})
    );
    // Already subscribed server-side.
    assert_eq!(c.call_err(cmd::subscribe("news")).await, 105);
}

async fn api_subscribe_and_unsubscribe_push_to_the_client(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    server
        .api
        .ok("subscribe", json!({"user": "alice", "channel": "chat:api"}))
        .await;
    let push = c.next_push(support::WAIT).await.expect("subscribe push");
    assert_eq!(push.channel, "chat:api");
    assert!(push.subscribe.is_some(), "subscribe push: {push:?}");

    server.api.publish("chat:api", json!({"n": 1})).await;
    assert_eq!(c.expect_pub("chat:api").await.offset, 1);

    server
        .api
        .ok(
            "unsubscribe",
            json!({"user": "alice", "channel": "chat:api"}),
        )
        .await;
    let push = c.next_push(support::WAIT).await.expect("unsubscribe push");
    assert_eq!(push.channel, "chat:api");
    let unsub = push.unsubscribe.expect("unsubscribe push");
    assert!((2000..3000).contains(&unsub.code), "{unsub:?}");
    server.api.publish("chat:api", json!({"n": 2})).await;
    c.expect_no_push(Duration::from_millis(200)).await;
}

async fn channel_limit_is_106(enc: Encoding) {
    let mut cfg = config();
    support::merge(&mut cfg, json!({"client": {"channel_limit": 3}}));
    let server = TestServer::start(cfg).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    for ch in ["a", "b", "c"] {
        c.subscribe(ch).await;
    }
    assert_eq!(c.call_err(cmd::subscribe("d")).await, 106);
    c.call_ok(cmd::unsubscribe("a")).await;
    c.subscribe("d").await;
}
