//! Subscription tokens over WebSocket: a private channel needs one, its expiry closes the
//! connection (3006) unless the client refreshes it with sub_refresh.

#[macro_use]
mod support;

use std::time::Duration;

use herald::protocol::Encoding;
use herald::protocol::proto::{self, Command};
use serde_json::json;
use support::{TestServer, cmd, now_secs};

fn config() -> serde_json::Value {
    json!({
        "client": {"expired_close_delay": "0s"},
        "channel": {"namespaces": [{"name": "chat"}]}
    })
}

both_encodings!(
    private_channel_needs_a_token,
    expired_subscription_closes_with_3006,
    sub_refresh_extends_the_subscription,
);

fn sub_with_token(channel: &str, token: &str) -> Command {
    cmd::subscribe_with(proto::SubscribeRequest {
        channel: channel.into(),
        token: token.into(),
        ..Default::default()
    })
}

async fn private_channel_needs_a_token(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    assert_eq!(c.call_err(cmd::subscribe("$chat:secret")).await, 103);
    let wrong_user = server.token_with(json!({"sub": "bob", "channel": "$chat:secret"}));
    assert_eq!(
        c.call_err(sub_with_token("$chat:secret", &wrong_user))
            .await,
        103
    );
    let good = server.token_with(json!({"sub": "alice", "channel": "$chat:secret"}));
    let res = c.subscribe_cmd(sub_with_token("$chat:secret", &good)).await;
    assert!(!res.expires, "{res:?}");
}

async fn expired_subscription_closes_with_3006(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    let token =
        server.token_with(json!({"sub": "alice", "channel": "$chat:s", "exp": now_secs() + 1}));
    let res = c.subscribe_cmd(sub_with_token("$chat:s", &token)).await;
    assert!(res.expires && res.ttl <= 1, "{res:?}");
    let (code, reason) = c
        .expect_close(Duration::from_secs(4))
        .await
        .expect("close frame");
    assert_eq!(code, 3006, "subscription expired ({reason})");
}

async fn sub_refresh_extends_the_subscription(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut c, _) = server.connected(enc, "alice").await;
    let short =
        server.token_with(json!({"sub": "alice", "channel": "$chat:r", "exp": now_secs() + 1}));
    c.subscribe_cmd(sub_with_token("$chat:r", &short)).await;
    let long =
        server.token_with(json!({"sub": "alice", "channel": "$chat:r", "exp": now_secs() + 3600}));
    let reply = c
        .call_ok(Command {
            sub_refresh: Some(proto::SubRefreshRequest {
                channel: "$chat:r".into(),
                token: long,
            }),
            ..Default::default()
        })
        .await;
    let refreshed = reply.sub_refresh.expect("sub_refresh result");
    assert!(refreshed.expires && refreshed.ttl > 3000, "{refreshed:?}");
    // Past the first token's expiry the connection still answers.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pong = c
        .call_ok(Command {
            ping: Some(proto::PingRequest {}),
            ..Default::default()
        })
        .await;
    assert!(
        pong.ping.is_some(),
        "refreshed subscription outlives the first token"
    );
}
