//! Node-to-node control over Redis (`engine::redis::RedisController`): a server-API call
//! made through any node reaches the sessions it is meant for on every node, and only
//! those; `info` lists every live node; `channels` answers for the whole cluster (a survey
//! of every node, subscriber counts summed, as Centrifugo). Three Herald processes on one
//! real `redis-server`.

mod cluster;
mod common;
#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{SEE_EACH_OTHER, api, connected, node, nodes_listed, see_each_other};
use common::Herald;
use common::redis_server::RedisServer;
use serde_json::{Value, json};
use support::{Client, cmd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_lists_every_live_node_through_each_node() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    let mut lists = Vec::new();
    for h in [&a, &b, &c] {
        let mut uids = nodes_listed(h, 3).await;
        assert_eq!(uids.len(), 3, "info through {}: {uids:?}", h.base_url());
        // The node asked comes first.
        let first = uids[0].clone();
        uids.sort();
        lists.push((first, uids));
    }
    assert_eq!(lists[0].1, lists[1].1, "A and B list the same nodes");
    assert_eq!(lists[1].1, lists[2].1, "B and C list the same nodes");
    let firsts: std::collections::HashSet<&String> = lists.iter().map(|(f, _)| f).collect();
    assert_eq!(firsts.len(), 3, "each node lists itself first: {lists:?}");

    // A node that stops is no longer listed once its announcements stop.
    drop(c);
    let deadline = Instant::now() + SEE_EACH_OTHER * 2;
    let mut listed = nodes_listed(&a, 0).await;
    while listed.len() != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        listed = nodes_listed(&a, 0).await;
    }
    assert_eq!(
        listed.len(),
        2,
        "the stopped node leaves the list: {listed:?}"
    );
    assert_eq!(nodes_listed(&b, 0).await.len(), 2);
}

/// Asserts that no push reaches `c` within a short while.
async fn quiet(c: &mut Client, what: &str) {
    if let Some(p) = c.next_push(Duration::from_millis(300)).await {
        panic!("{what}: unexpected push {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_commands_through_one_node_reach_the_right_node_among_three() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    see_each_other(&[&a, &b, &c]).await;
    let mut alice = connected(&a, "alice").await;
    let mut bob = connected(&b, "bob").await;
    let mut carol = connected(&c, "carol").await;

    // Subscribe and unsubscribe bob (on B) through C: bob alone gets the pushes.
    api(&c)
        .ok("subscribe", json!({"user": "bob", "channel": "chat:moved"}))
        .await;
    let push = bob
        .push_where("subscribe push for chat:moved", |p| {
            p.channel == "chat:moved" && p.subscribe.is_some()
        })
        .await;
    assert!(push.subscribe.is_some(), "{push:?}");
    // The server-side subscription is live on B: a publication through A reaches bob.
    api(&a).publish("chat:moved", json!({"n": 1})).await;
    // (bob's own join push may come first: the namespace has join/leave.)
    let push = bob
        .push_where("publication on chat:moved", |p| {
            p.channel == "chat:moved" && p.r#pub.is_some()
        })
        .await;
    let p = push.r#pub.expect("a publication");
    assert_eq!(support::payload_json(&p.data), json!({"n": 1}));
    api(&c)
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
    quiet(&mut alice, "alice, not subscribed").await;
    quiet(&mut carol, "carol, not subscribed").await;

    // Disconnect through B closes alice's connection on A with the code asked for; the
    // others stay connected.
    api(&b)
        .ok(
            "disconnect",
            json!({"user": "alice", "disconnect": {"code": 4501, "reason": "moved"}}),
        )
        .await;
    let (code, reason) = alice
        .expect_close(Duration::from_secs(5))
        .await
        .expect("a close frame");
    assert_eq!((code, reason.as_str()), (4501, "moved"));
    bob.call_ok(cmd::ping()).await;
    carol.call_ok(cmd::ping()).await;

    // A user with a connection on A and one on C: a disconnect through B naming one client
    // closes that one only; naming none closes both.
    let mut dave_a = connected(&a, "dave").await;
    let mut dave_c = Client::open_at(c.addr(), herald::protocol::Encoding::Json, None).await;
    let dave_c_id = dave_c
        .connect(&support::sign(&c.secret, &json!({"sub": "dave"})))
        .await
        .client;
    api(&b)
        .ok(
            "disconnect",
            json!({"user": "dave", "client": dave_c_id,
                   "disconnect": {"code": 4502, "reason": "one"}}),
        )
        .await;
    assert_eq!(dave_c.expect_close_code(4502).await, "one");
    dave_a.call_ok(cmd::ping()).await;
    let mut dave_c = connected(&c, "dave").await;
    api(&b)
        .ok(
            "disconnect",
            json!({"user": "dave", "disconnect": {"code": 4503, "reason": "all"}}),
        )
        .await;
    assert_eq!(dave_a.expect_close_code(4503).await, "all");
    assert_eq!(dave_c.expect_close_code(4503).await, "all");
    carol.call_ok(cmd::ping()).await;
}

/// `channels` through `h` (with `pattern`): name to subscriber count.
async fn channels(h: &Herald, pattern: &str) -> BTreeMap<String, u64> {
    let r = api(h).ok("channels", json!({"pattern": pattern})).await;
    r["channels"]
        .as_object()
        .unwrap_or_else(|| panic!("channels result: {r}"))
        .iter()
        .map(|(k, v)| (k.clone(), v["num_clients"].as_u64().unwrap()))
        .collect()
}

fn counts(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
    list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_lists_every_nodes_channels_with_counts_summed() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    see_each_other(&[&a, &b, &c]).await;
    let mut alice = connected(&a, "alice").await;
    alice.subscribe("chat:a").await;
    alice.subscribe("chat:all").await;
    let mut bob = connected(&b, "bob").await;
    bob.subscribe("chat:b").await;
    bob.subscribe("chat:all").await;
    let mut carol = connected(&c, "carol").await;
    carol.subscribe("chat:all").await;
    let mut carl = connected(&c, "carl").await;
    carl.subscribe("chat:all").await;
    carl.subscribe("news").await;

    let want = counts(&[("chat:a", 1), ("chat:all", 4), ("chat:b", 1), ("news", 1)]);
    for h in [&a, &b, &c] {
        assert_eq!(channels(h, "").await, want, "through {}", h.base_url());
    }
    // The pattern applies on every node.
    assert_eq!(
        channels(&b, "chat:a*").await,
        counts(&[("chat:a", 1), ("chat:all", 4)])
    );
    assert_eq!(channels(&c, "*b").await, counts(&[("chat:b", 1)]));
    assert_eq!(channels(&a, "nothing*").await, counts(&[]));
    // In a batch too.
    let r = api(&a)
        .call(
            "batch",
            json!({"commands": [{"channels": {"pattern": "news"}}]}),
        )
        .await;
    assert_eq!(
        r["replies"][0]["channels"]["channels"],
        json!({"news": {"num_clients": 1}}),
        "{r}"
    );

    // Leaving is seen everywhere: bob unsubscribes from chat:b, carl disconnects.
    bob.call_ok(cmd::unsubscribe("chat:b")).await;
    drop(carl);
    let want = counts(&[("chat:a", 1), ("chat:all", 3)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = channels(&a, "").await;
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "channels after leaving: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node killed without a goodbye stays in the others' registries for a few seconds:
/// `channels` meanwhile either answers without it or fails with an internal error (100),
/// never hangs, and answers with the survivors' channels once the node is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_answers_again_once_a_killed_node_is_forgotten() {
    let redis = RedisServer::start();
    let (a, mut b) = (node(&redis), node(&redis));
    see_each_other(&[&a, &b]).await;
    let mut alice = connected(&a, "alice").await;
    alice.subscribe("chat:here").await;
    let mut bob = connected(&b, "bob").await;
    bob.subscribe("chat:gone").await;
    assert_eq!(
        channels(&a, "").await,
        counts(&[("chat:gone", 1), ("chat:here", 1)])
    );
    b.kill();
    drop(bob);

    // Its own client for this test: a survey of a dead node takes up to 5 s to fail,
    // longer than the support client waits.
    herald::http_client::install_crypto_provider();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut failures = 0;
    loop {
        let started = Instant::now();
        let resp: Value = http
            .post(format!("{}/api/channels", a.base_url()))
            .header("X-API-Key", &a.api_key)
            .body("{}")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("channels answers")
            .json()
            .await
            .expect("JSON");
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "channels took {:?}",
            started.elapsed()
        );
        if let Some(result) = resp.get("result") {
            if result["channels"] == json!({"chat:here": {"num_clients": 1}}) {
                break;
            }
        } else {
            assert_eq!(resp["error"]["code"], json!(100), "{resp}");
            failures += 1;
        }
        assert!(
            Instant::now() < deadline,
            "channels still answers {resp} ({failures} failures)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
