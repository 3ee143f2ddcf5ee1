//! Presence over WebSocket, in JSON and Protobuf: who is in a channel, the counts, and the
//! join and leave pushes (forced by the namespace, or asked for by the subscriber).

#[macro_use]
mod support;

use std::time::Duration;

use herald::protocol::Encoding;
use herald::protocol::proto::{self, Push};
use serde_json::json;
use support::{TestServer, cmd};

fn config() -> serde_json::Value {
    json!({
        "channel": {
            "namespaces": [
                {"name": "room", "presence": true, "join_leave": true,
                 "force_push_join_leave": true,
                 "allow_subscribe_for_client": true, "allow_presence_for_subscriber": true},
                {"name": "optin", "join_leave": true, "allow_subscribe_for_client": true}
            ]
        }
    })
}

both_encodings!(
    presence_lists_both_clients,
    join_and_leave_pushes_when_forced,
    join_and_leave_pushes_when_asked_for,
);

async fn presence_lists_both_clients(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut alice, a) = server.connected(enc, "alice").await;
    let (mut bob, b) = server.connected(enc, "bob").await;
    alice.subscribe("room:1").await;
    bob.subscribe("room:1").await;

    let presence = alice
        .call_ok(cmd::presence("room:1"))
        .await
        .presence
        .expect("presence result")
        .presence;
    assert_eq!(presence.len(), 2, "{presence:?}");
    assert_eq!(presence[&a.client].user, "alice");
    assert_eq!(presence[&a.client].client, a.client);
    assert_eq!(presence[&b.client].user, "bob");

    let stats = bob
        .call_ok(cmd::presence_stats("room:1"))
        .await
        .presence_stats
        .expect("presence_stats result");
    assert_eq!((stats.num_clients, stats.num_users), (2, 2));

    // A second connection of the same user: three clients, two users.
    let (mut alice2, _) = server.connected(enc, "alice").await;
    alice2.subscribe("room:1").await;
    let stats = alice2
        .call_ok(cmd::presence_stats("room:1"))
        .await
        .presence_stats
        .unwrap();
    assert_eq!((stats.num_clients, stats.num_users), (3, 2));

    // Not subscribed: no presence for you.
    let (mut carol, _) = server.connected(enc, "carol").await;
    assert_eq!(carol.call_err(cmd::presence("room:1")).await, 103);

    // Bob leaves: one entry fewer, and the API agrees.
    bob.call_ok(cmd::unsubscribe("room:1")).await;
    let api = server
        .api
        .ok("presence", json!({"channel": "room:1"}))
        .await;
    let clients = api["presence"].as_object().expect("presence map");
    assert_eq!(clients.len(), 2, "{api}");
    assert!(!clients.contains_key(&b.client));
    let api = server
        .api
        .ok("presence_stats", json!({"channel": "room:1"}))
        .await;
    assert_eq!(api["num_clients"], json!(2));
    assert_eq!(api["num_users"], json!(1));

    // A connection that just goes away leaves presence too.
    drop(alice2);
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let presence = alice
            .call_ok(cmd::presence("room:1"))
            .await
            .presence
            .unwrap()
            .presence;
        if presence.len() == 1 {
            assert!(presence.contains_key(&a.client), "{presence:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence still lists a closed connection: {presence:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_join_of(p: &Push, client: &str) -> bool {
    p.join
        .as_ref()
        .and_then(|j| j.info.as_ref())
        .is_some_and(|i| i.client == client)
}

fn is_leave_of(p: &Push, client: &str) -> bool {
    p.leave
        .as_ref()
        .and_then(|l| l.info.as_ref())
        .is_some_and(|i| i.client == client)
}

async fn join_and_leave_pushes_when_forced(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut alice, _) = server.connected(enc, "alice").await;
    alice.subscribe("room:jl").await;

    let (mut bob, b) = server.connected(enc, "bob").await;
    bob.subscribe("room:jl").await;
    let join = alice
        .push_where("bob's join", |p| is_join_of(p, &b.client))
        .await;
    assert_eq!(join.channel, "room:jl");
    assert_eq!(join.join.unwrap().info.unwrap().user, "bob");

    bob.call_ok(cmd::unsubscribe("room:jl")).await;
    let leave = alice
        .push_where("bob's leave", |p| is_leave_of(p, &b.client))
        .await;
    assert_eq!(leave.channel, "room:jl");
    assert_eq!(leave.leave.unwrap().info.unwrap().user, "bob");

    // Subscribed again, then the socket goes away: leave again.
    bob.subscribe("room:jl").await;
    alice
        .push_where("bob's second join", |p| is_join_of(p, &b.client))
        .await;
    drop(bob);
    alice
        .push_where("bob's leave on disconnect", |p| is_leave_of(p, &b.client))
        .await;
}

async fn join_and_leave_pushes_when_asked_for(enc: Encoding) {
    let server = TestServer::start(config()).await;
    let (mut alice, _) = server.connected(enc, "alice").await;
    alice
        .subscribe_cmd(cmd::subscribe_with(proto::SubscribeRequest {
            channel: "optin:x".into(),
            join_leave: true,
            ..Default::default()
        }))
        .await;
    let (mut carol, _) = server.connected(enc, "carol").await;
    carol.subscribe("optin:x").await;

    let (mut bob, b) = server.connected(enc, "bob").await;
    bob.subscribe("optin:x").await;
    alice
        .push_where("bob's join", |p| is_join_of(p, &b.client))
        .await;
    bob.call_ok(cmd::unsubscribe("optin:x")).await;
    alice
        .push_where("bob's leave", |p| is_leave_of(p, &b.client))
        .await;
    // Carol did not ask for them.
    carol.expect_no_push(Duration::from_millis(200)).await;
}
