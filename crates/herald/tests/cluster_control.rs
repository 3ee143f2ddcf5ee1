//! Node-to-node control over Redis (`engine::redis::RedisController`): a server-API call
//! made through any node reaches the sessions it is meant for on every node, and `info`
//! lists every live node. Two Herald processes on one real `redis-server`.

mod common;
#[macro_use]
mod support;

use std::time::{Duration, Instant};

use common::Herald;
use common::redis_server::RedisServer;
use herald::protocol::Encoding;
use serde_json::{Value, json};
use support::{Api, Client};

/// How long the nodes may take to hear each other's announcements.
const SEE_EACH_OTHER: Duration = Duration::from_secs(10);

fn node(redis: &RedisServer) -> Herald {
    let mut config = common::default_config();
    support::merge(
        &mut config,
        json!({"engine": {"type": "redis", "redis": {"address": redis.url(), "io_timeout": "1s"}}}),
    );
    Herald::start(config)
}

fn api(h: &Herald) -> Api {
    Api::new(h.base_url(), h.api_key.clone())
}

async fn connected(h: &Herald, user: &str) -> Client {
    let mut c = Client::open_at(h.addr(), Encoding::Json, None).await;
    c.connect(&support::sign(&h.secret, &json!({"sub": user})))
        .await;
    c
}

/// The uids `info` lists through `h`, once it lists `n` of them (or what it lists at the
/// deadline).
async fn nodes_listed(h: &Herald, n: usize) -> Vec<String> {
    let deadline = Instant::now() + SEE_EACH_OTHER;
    loop {
        let info = api(h).ok("info", json!({})).await;
        let uids: Vec<String> = info["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["uid"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if uids.len() >= n || Instant::now() > deadline {
            return uids;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_lists_every_live_node_through_either_node() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let mut from_a = nodes_listed(&a, 2).await;
    let mut from_b = nodes_listed(&b, 2).await;
    from_a.sort();
    from_b.sort();
    assert_eq!(from_a.len(), 2, "info through A: {from_a:?}");
    assert_eq!(from_a, from_b, "both nodes list the same nodes");

    // A node that stops is no longer listed once its announcements stop.
    drop(b);
    let deadline = Instant::now() + SEE_EACH_OTHER * 2;
    let mut listed = nodes_listed(&a, 0).await;
    while listed.len() != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        listed = nodes_listed(&a, 0).await;
    }
    assert_eq!(
        listed.len(),
        1,
        "the stopped node leaves the list: {listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_unsubscribe_and_subscribe_through_one_node_reach_a_user_on_the_other() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    assert_eq!(
        nodes_listed(&a, 2).await.len(),
        2,
        "the nodes see each other"
    );

    // Server-side subscribe and unsubscribe through A, for a user on B.
    let mut bob = connected(&b, "bob").await;
    api(&a)
        .ok("subscribe", json!({"user": "bob", "channel": "chat:moved"}))
        .await;
    let push = bob
        .push_where("subscribe push for chat:moved", |p| {
            p.channel == "chat:moved" && p.subscribe.is_some()
        })
        .await;
    assert!(push.subscribe.is_some(), "{push:?}");
    api(&a)
        .ok(
            "unsubscribe",
            json!({"user": "bob", "channel": "chat:moved"}),
        )
        .await;
    let push = bob
        .push_where("unsubscribe push for chat:moved", |p| {
            p.channel == "chat:moved" && p.unsubscribe.is_some()
        })
        .await;
    assert!(push.unsubscribe.is_some(), "{push:?}");

    // Disconnect through A closes bob's connection on B with the code asked for.
    let result: Value = api(&a)
        .ok(
            "disconnect",
            json!({"user": "bob", "disconnect": {"code": 4501, "reason": "moved"}}),
        )
        .await;
    assert!(result.is_object(), "{result}");
    let (code, reason) = bob
        .expect_close(Duration::from_secs(5))
        .await
        .expect("a close frame");
    assert_eq!((code, reason.as_str()), (4501, "moved"));
}
