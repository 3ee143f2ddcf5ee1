//! Client limits, each configurable with its documented answer: connections per node and
//! per user and new connections per second (closed with 3504), commands and publications
//! per second per connection (error 111, the command not executed), counted in
//! `herald_limited_total`. A client within its limits is unaffected meanwhile.

mod support;

use std::time::Duration;

use herald::protocol::Encoding;
use serde_json::json;
use support::{Client, TestServer, cmd};

/// Connects as `user`: `Ok(())`, or the close code.
async fn connect(server: &TestServer, user: &str) -> (Client, Result<(), u16>) {
    let mut c = Client::open(server, Encoding::Json, None).await;
    let mut command = cmd::connect(&server.token(user));
    command.id = c.new_id();
    c.send(command).await;
    let outcome = match c.next_reply(Duration::from_secs(5)).await {
        Some(r) if r.connect.is_some() => Ok(()),
        Some(r) => panic!("unexpected reply {r:?}"),
        None => Err(c
            .expect_close(Duration::from_secs(1))
            .await
            .map_or(0, |(code, _)| code)),
    };
    (c, outcome)
}

#[tokio::test]
async fn connections_per_node_and_per_user() {
    let server = TestServer::start(json!({"client": {
        "connection_limit": 3, "user_connection_limit": 2}}))
    .await;
    let (_a1, r) = connect(&server, "alice").await;
    assert_eq!(r, Ok(()));
    let (_a2, r) = connect(&server, "alice").await;
    assert_eq!(r, Ok(()));
    let (_a3, r) = connect(&server, "alice").await;
    assert_eq!(r, Err(3504), "alice's third connection");
    let (_b1, r) = connect(&server, "bob").await;
    assert_eq!(r, Ok(()), "bob is not limited by alice");
    let (_c1, r) = connect(&server, "carol").await;
    assert_eq!(r, Err(3504), "the node's fourth connection");
    assert_eq!(
        server
            .api
            .metric("herald_limited_total{limit=\"user_connection_limit\"}")
            .await,
        1.0
    );
    // A connection that goes frees its place.
    drop(_b1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_c1, r) = connect(&server, "carol").await;
    assert_eq!(r, Ok(()));
}

#[tokio::test]
async fn new_connections_per_second() {
    let server = TestServer::start(json!({"client": {"connection_rate_limit": 5}})).await;
    let mut outcomes = Vec::new();
    let mut clients = Vec::new();
    for i in 0..10 {
        let (c, r) = connect(&server, &format!("u{i}")).await;
        outcomes.push(r);
        clients.push(c);
    }
    let accepted = outcomes.iter().filter(|r| r.is_ok()).count();
    assert!(
        (5..=6).contains(&accepted),
        "a burst of 5 (and what refilled meanwhile): {outcomes:?}"
    );
    assert!(outcomes.iter().all(|r| *r == Ok(()) || *r == Err(3504)));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_c, r) = connect(&server, "later").await;
    assert_eq!(r, Ok(()), "the rate refills");
}

#[tokio::test]
async fn commands_and_publications_per_second() {
    let server = TestServer::start(json!({
        "client": {"command_rate_limit": 10, "command_rate_burst": 20,
                   "publication_rate_limit": 3},
        "channel": {"without_namespace": {"allow_publish_for_client": true,
                    "allow_subscribe_for_client": true}}
    }))
    .await;
    let (mut reader, _) = connect(&server, "reader").await;
    reader.subscribe("room").await;

    // Publications: 3 at once pass, the 4th is refused with 111 and not published.
    let (mut writer, _) = connect(&server, "writer").await;
    let mut codes = Vec::new();
    for i in 0..5 {
        let reply = writer.call(cmd::publish("room", &json!({"i": i}))).await;
        codes.push(reply.error.map_or(0, |e| e.code));
    }
    assert_eq!(codes, [0, 0, 0, 111, 111]);
    for i in 0..3 {
        let p = reader.expect_pub("room").await;
        assert_eq!(support::payload_json(&p.data), json!({"i": i}));
    }
    reader.expect_no_push(Duration::from_millis(200)).await;

    // Commands: a burst of 20 passes, then 111; a ping a second later passes again.
    let (mut spammer, _) = connect(&server, "spammer").await;
    let batch: Vec<_> = (0..30).map(|_| cmd::ping()).collect();
    let ids = spammer.send_batch(batch).await;
    let mut refused = 0;
    for id in ids {
        let reply = spammer.wait_reply(id, "ping").await;
        if reply.error.is_some_and(|e| e.code == 111) {
            refused += 1;
        }
    }
    assert!((9..=10).contains(&refused), "{refused} of 30 refused");
    tokio::time::sleep(Duration::from_millis(300)).await;
    spammer.call_ok(cmd::ping()).await;
    assert!(
        server
            .api
            .metric("herald_limited_total{limit=\"command\"}")
            .await
            >= 9.0
    );
    // The reader, within its limits, was never refused anything.
    reader.call_ok(cmd::ping()).await;
}
