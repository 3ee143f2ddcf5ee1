//! Connecting over WebSocket, in JSON and Protobuf: tokens (valid, expired, forged, absent),
//! anonymous access, and the ping/pong keepalive.

#[macro_use]
mod support;

use std::time::Duration;

use herald::protocol::Encoding;
use serde_json::json;
use support::{TestServer, cmd, now_secs, sign};

fn config() -> serde_json::Value {
    json!({
        "channel": {
            "without_namespace": {"allow_subscribe_for_client": true},
            "namespaces": [
                {"name": "chat", "allow_subscribe_for_client": true, "presence": true,
                 "allow_publish_for_subscriber": true, "allow_presence_for_subscriber": true},
                {"name": "public", "presence": true,
                 "allow_subscribe_for_client": true, "allow_subscribe_for_anonymous": true}
            ]
        }
    })
}

both_encodings!(
    valid_token_connects,
    expired_token_is_error_109,
    forged_signature_closes_with_3500,
    missing_token_is_error_101,
    anonymous_connect_when_allowed,
    server_pings_are_answered_and_silence_disconnects,
    expired_connection_is_closed_with_3005,
    token_info_reaches_presence_and_publications,
    shutdown_tells_clients_to_reconnect,
);

async fn valid_token_connects(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let mut c = server.open(enc).await;
    let res = c.connect(&server.token("alice")).await;
    assert!(!res.client.is_empty(), "connect result has a client id");
    assert!(
        uuid_like(&res.client),
        "client id looks like a UUID: {:?}",
        res.client
    );
    assert_eq!(res.ping, 25, "default ping interval in seconds");
    assert!(res.pong, "bidirectional transport expects pongs");
    assert!(!res.expires, "token without exp does not expire");

    // A second client gets another id.
    let (_other, res2) = server.connected(enc, "alice").await;
    assert_ne!(res.client, res2.client);

    // The connection is usable.
    let reply = c.call_ok(cmd::ping()).await;
    assert!(reply.ping.is_some(), "ping command answered: {reply:?}");
    c.subscribe("news").await;
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

async fn expired_token_is_error_109(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let mut c = server.open(enc).await;
    let token = server.token_with(json!({"sub": "alice", "exp": now_secs() - 60}));
    assert_eq!(c.call_err(cmd::connect(&token)).await, 109);

    // A token that is still valid shows its ttl.
    let mut c2 = server.open(enc).await;
    let token = server.token_with(json!({"sub": "alice", "exp": now_secs() + 600}));
    let res = c2.connect(&token).await;
    assert!(res.expires, "token with exp expires");
    assert!(
        (590..=600).contains(&res.ttl),
        "ttl close to 600 s: {}",
        res.ttl
    );
}

async fn forged_signature_closes_with_3500(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let mut c = server.open(enc).await;
    let forged = sign(
        "not-the-server-secret-0123456789abcdef",
        &json!({"sub": "mallory"}),
    );
    c.send(cmd::connect(&forged)).await;
    c.expect_close_code(3500).await;

    // Not a JWT at all: same.
    let mut c = server.open(enc).await;
    c.send(cmd::connect("definitely.not.a-jwt")).await;
    c.expect_close_code(3500).await;
}

async fn missing_token_is_error_101(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let mut c = server.open(enc).await;
    assert_eq!(c.call_err(cmd::connect("")).await, 101);
}

async fn anonymous_connect_when_allowed(enc: Encoding) {
    let mut cfg = config();
    support::merge(
        &mut cfg,
        json!({"client": {"allow_anonymous_connect_without_token": true}}),
    );
    let server = TestServer::start(cfg).await;
    let mut c = server.open(enc).await;
    let res = c.connect("").await;
    assert!(!res.client.is_empty());

    // Namespaces without allow_subscribe_for_anonymous refuse anonymous users.
    assert_eq!(c.call_err(cmd::subscribe("chat:room")).await, 103);
    assert_eq!(c.call_err(cmd::subscribe("news")).await, 103);

    // The one that allows it accepts, and presence shows the empty user.
    c.subscribe("public:lobby").await;
    let presence = server
        .api
        .ok("presence", json!({"channel": "public:lobby"}))
        .await;
    let entry = &presence["presence"][&res.client];
    assert_eq!(
        entry["user"],
        json!(""),
        "anonymous user is \"\": {presence}"
    );

    // An authenticated client still may subscribe where anonymous ones may not.
    let (mut alice, _) = server.connected(enc, "alice").await;
    alice.subscribe("chat:room").await;
}

async fn server_pings_are_answered_and_silence_disconnects(enc: Encoding) {
    let mut cfg = config();
    support::merge(
        &mut cfg,
        json!({"client": {"ping_interval": "1s", "pong_timeout": "500ms"}}),
    );
    let server = TestServer::start(cfg).await;
    let (mut good, res) = server.connected(enc, "alice").await;
    assert_eq!(res.ping, 1);
    assert!(res.pong);
    let (mut silent, _) = server.connected(enc, "bob").await;
    silent.auto_pong = false;

    // Past one ping interval plus the pong timeout, the client that answers is still here.
    good.expect_no_push(Duration::from_millis(2000)).await;
    assert!(good.pings >= 1, "server pinged (empty reply)");
    good.call_ok(cmd::ping()).await;

    // The one that never answered is gone with "no pong".
    let (code, reason) = silent
        .expect_close(Duration::from_secs(3))
        .await
        .expect("close frame");
    assert_eq!(code, 3012, "no pong ({reason})");
    assert!(silent.pings >= 1);
}

async fn expired_connection_is_closed_with_3005(enc: Encoding) {
    // No grace period: close as soon as the credentials expire.
    let mut cfg = config();
    cfg["client"] = json!({"expired_close_delay": "0s"});
    let server = TestServer::start(cfg).await;
    let mut c = server.open(enc).await;
    let token = server.token_with(json!({"sub": "alice", "exp": now_secs() + 1}));
    let res = c.connect(&token).await;
    assert!(res.expires && res.ttl <= 1, "{res:?}");
    let (code, reason) = c
        .expect_close(Duration::from_secs(4))
        .await
        .expect("close frame");
    assert_eq!(code, 3005, "connection expired ({reason})");
}

async fn token_info_reaches_presence_and_publications(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let info = json!({"name": "Alice", "role": "admin"});
    let mut c = server.open(enc).await;
    let res = c
        .connect(&server.token_with(json!({"sub": "alice", "info": info})))
        .await;
    c.subscribe("chat:info").await;

    let presence = c
        .call_ok(cmd::presence("chat:info"))
        .await
        .presence
        .expect("presence result")
        .presence;
    let me = &presence[&res.client];
    assert_eq!(me.user, "alice");
    assert!(
        !me.conn_info.is_empty(),
        "presence carries the token's info claim as conn_info: {me:?}"
    );
    assert_eq!(support::payload_json(&me.conn_info), info);

    c.call_ok(cmd::publish("chat:info", &json!({"m": 1}))).await;
    let publication = c.expect_pub("chat:info").await;
    let pub_info = publication.info.expect("client publication has info");
    assert_eq!(support::payload_json(&pub_info.conn_info), info);
}

async fn shutdown_tells_clients_to_reconnect(enc: Encoding) {
    let mut server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    c.subscribe("news").await;
    server.shutdown();
    let (code, reason) = c.expect_close(support::WAIT).await.expect("close frame");
    assert_eq!(code, 3001, "shutdown ({reason})");
}
