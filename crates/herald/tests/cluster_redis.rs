//! Several Herald processes on one real `redis-server` (`engine.type = "redis"`) act as one
//! server: a publication made through any node reaches subscribers on every node in order
//! with its offsets, history and recovery work from any node, presence is cluster-wide,
//! and a publish answers an error (never a silent success) when Redis is unreachable.
//!
//! Each test starts its own redis-server on a free loopback port (no persistence) and its
//! own Herald processes; clients are real WebSocket clients speaking the JSON protocol.

mod cluster;
mod common;
#[macro_use]
mod support;

use std::time::{Duration, Instant};

use cluster::{api, connected, node, node_with};
use common::redis_server::{RedisCluster, RedisSentinel, RedisServer};
use serde_json::json;
use support::{Client, cmd, payload_json};

/// The next `n` publications on `channel`: (offset, data "n").
async fn publications(c: &mut Client, channel: &str, n: usize) -> Vec<(u64, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let p = c
            .push_where(
                &format!("publication {} on {channel}", out.len() + 1),
                |p| p.channel == channel && p.r#pub.is_some(),
            )
            .await;
        let p = p.r#pub.unwrap();
        out.push((p.offset, payload_json(&p.data)["n"].as_i64().unwrap_or(-1)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_through_one_node_reaches_subscribers_on_every_node_in_order() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let channel = "chat:cross";
    let mut on_a = connected(&a, "alice").await;
    on_a.subscribe(channel).await;
    let mut on_b = connected(&b, "bob").await;
    on_b.subscribe(channel).await;

    let api_b = api(&b);
    for n in 1..=30 {
        let r = api_b.publish(channel, json!({"n": n})).await;
        assert_eq!(r["offset"], json!(n), "publish result {r}");
    }
    let want: Vec<(u64, i64)> = (1..=30).map(|n| (n as u64, n)).collect();
    assert_eq!(publications(&mut on_a, channel, 30).await, want, "node A");
    assert_eq!(publications(&mut on_b, channel, 30).await, want, "node B");

    // A client publication on node A reaches node B too.
    on_a.call_ok(cmd::publish(channel, &json!({"n": 31}))).await;
    assert_eq!(publications(&mut on_b, channel, 1).await, vec![(31, 31)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_recovery_work_from_either_node() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let channel = "chat:recover";
    let mut first = connected(&a, "alice").await;
    let sub = first.subscribe_cmd(cmd::recover(channel, 0, "")).await;
    let epoch = sub.epoch.clone();
    assert!(!epoch.is_empty(), "an empty stream has an epoch: {sub:?}");
    api(&a).publish(channel, json!({"n": 1})).await;
    assert_eq!(publications(&mut first, channel, 1).await, vec![(1, 1)]);
    drop(first);

    // Missed while away, published through both nodes.
    api(&a).publish(channel, json!({"n": 2})).await;
    api(&b).publish(channel, json!({"n": 3})).await;

    let history = api(&b)
        .ok("history", json!({"channel": channel, "limit": 10}))
        .await;
    assert_eq!(history["epoch"], json!(epoch), "one epoch on both nodes");
    let ns: Vec<i64> = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [1, 2, 3]);

    let mut back = connected(&b, "alice").await;
    let sub = back.subscribe_cmd(cmd::recover(channel, 1, &epoch)).await;
    assert!(sub.recovered, "recovered on the other node: {sub:?}");
    let got: Vec<u64> = sub.publications.iter().map(|p| p.offset).collect();
    assert_eq!(got, [2, 3]);
    api(&a).publish(channel, json!({"n": 4})).await;
    assert_eq!(publications(&mut back, channel, 1).await, vec![(4, 4)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_span_the_nodes() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let channel = "chat:presence";
    let mut alice = connected(&a, "alice").await;
    alice.subscribe(channel).await;
    let mut bob = connected(&b, "bob").await;
    bob.subscribe(channel).await;

    // Alice, on A, sees Bob join on B.
    let join = alice
        .push_where("bob's join", |p| {
            p.channel == channel
                && p.join
                    .as_ref()
                    .is_some_and(|j| j.info.as_ref().is_some_and(|i| i.user == "bob"))
        })
        .await;
    assert_eq!(join.join.unwrap().info.unwrap().conn_info.len(), 0);

    for h in [&a, &b] {
        let r = api(h).ok("presence", json!({"channel": channel})).await;
        let mut users: Vec<&str> = r["presence"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c["user"].as_str().unwrap())
            .collect();
        users.sort_unstable();
        assert_eq!(users, ["alice", "bob"], "presence on {}", h.base_url());
        let stats = api(h)
            .ok("presence_stats", json!({"channel": channel}))
            .await;
        assert_eq!(stats, json!({"num_clients": 2, "num_users": 2}));
    }

    // Bob leaves: Alice sees it, and presence shrinks on both nodes.
    bob.call_ok(cmd::unsubscribe(channel)).await;
    alice
        .push_where("bob's leave", |p| {
            p.channel == channel
                && p.leave
                    .as_ref()
                    .is_some_and(|l| l.info.as_ref().is_some_and(|i| i.user == "bob"))
        })
        .await;
    let stats = api(&a)
        .ok("presence_stats", json!({"channel": channel}))
        .await;
    assert_eq!(stats, json!({"num_clients": 1, "num_users": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_an_error_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let a = node(&redis);
    let channel = "chat:down";
    let mut alice = connected(&a, "alice").await;
    alice.subscribe(channel).await;
    api(&a).publish(channel, json!({"n": 1})).await;
    assert_eq!(publications(&mut alice, channel, 1).await, vec![(1, 1)]);

    redis.kill();
    for n in 2..=4 {
        let started = Instant::now();
        let r = api(&a)
            .call("publish", json!({"channel": channel, "data": {"n": n}}))
            .await;
        assert!(
            r.get("result").is_none() && r["error"]["code"] == json!(100),
            "a publish while Redis is down must fail with an internal error, got {r}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the failure took {:?}",
            started.elapsed()
        );
    }
    // The client stays connected meanwhile.
    alice.call_ok(cmd::ping()).await;
    // The metrics show the connections down and the failed publishes.
    let shard = format!("{}/0", redis.url());
    let up = |connection: &str| {
        format!("herald_redis_up{{shard=\"{shard}\",connection=\"{connection}\"}}")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while api(&a).metric(&up("pubsub")).await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the PUB/SUB connection still counts as up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(api(&a).metric(&up("commands")).await, 0.0);
    assert!(
        api(&a)
            .metric(&format!(
                "herald_redis_publish_errors_total{{shard=\"{shard}\"}}"
            ))
            .await
            >= 3.0
    );

    // Redis comes back empty: publishing works again, the node subscribed the channel
    // again, and the stream starts over in a new epoch, which the subscriber is told about
    // (2500: its SDK resubscribes and learns it cannot recover) instead of a silent gap.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        let r = api(&a)
            .call("publish", json!({"channel": channel, "data": {"n": 5}}))
            .await;
        if r.get("result").is_some() {
            break r["result"].clone();
        }
        assert!(Instant::now() < deadline, "publish still fails: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(r["offset"], json!(1), "a new stream after the restart: {r}");
    let push = alice
        .push_where("the unsubscribe for the lost stream", |p| {
            p.channel == channel && p.unsubscribe.is_some()
        })
        .await;
    assert_eq!(push.unsubscribe.unwrap().code, 2500);
    let sub = alice.subscribe_cmd(cmd::recover(channel, 1, "old")).await;
    assert!(!sub.recovered);
    assert_eq!(sub.epoch, r["epoch"].as_str().unwrap());
    api(&a).publish(channel, json!({"n": 6})).await;
    let p = alice
        .push_where("a publication after the restart", |p| p.r#pub.is_some())
        .await;
    assert_eq!(payload_json(&p.r#pub.unwrap().data)["n"], json!(6));
    // Every connection is back, each counted as one reconnect.
    for connection in ["commands", "pubsub", "control"] {
        assert_eq!(api(&a).metric(&up(connection)).await, 1.0, "{connection}");
        let reconnects = format!(
            "herald_redis_reconnects_total{{shard=\"{shard}\",connection=\"{connection}\"}}"
        );
        assert_eq!(api(&a).metric(&reconnects).await, 1.0, "{connection}");
    }
}

/// The real centrifuge JS SDK across two nodes: `tests/js/sdk_cluster.cjs` (cross-node
/// delivery in order with offsets, client publications, join/leave, presence, recovery on
/// the other node, shared history). Needs Node 20+ and `npm ci --prefix tests/js`.
#[test]
fn centrifuge_js_sdk_across_two_nodes() {
    let script = common::repo_root().join("tests/js/sdk_cluster.cjs");
    assert!(
        common::repo_root()
            .join("tests/js/node_modules/centrifuge")
            .is_dir(),
        "run `npm ci --prefix tests/js` first"
    );
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let token = |user: &str| support::sign(&a.secret, &json!({"sub": user}));
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(common::repo_root())
        .arg(&script)
        .args(["--a", &a.base_url(), "--b", &b.base_url()])
        .args(["--api-key", &a.api_key])
        .args([
            "--token-alice",
            &token("alice"),
            "--token-bob",
            &token("bob"),
        ]);
    let out = common::run_with_timeout(cmd, Duration::from_secs(90));
    out.assert_all_checks_passed("node tests/js/sdk_cluster.cjs");
}

/// Two independent Redis instances in `engine.redis.address`: channels are spread over
/// both, and each channel still works across nodes (delivery, history) because every node
/// picks the same instance for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_are_sharded_over_several_redis_instances() {
    let (r1, r2) = (RedisServer::start(), RedisServer::start());
    let sharded = json!({"engine": {"redis": {"address": [r1.url(), r2.url()]}}});
    let a = node_with(&r1, sharded.clone());
    let b = node_with(&r1, sharded);
    let channels: Vec<String> = (0..24).map(|i| format!("chat:shard-{i}")).collect();
    let mut alice = connected(&a, "alice").await;
    for c in &channels {
        alice.subscribe(c).await;
    }
    let api_b = api(&b);
    for (i, c) in channels.iter().enumerate() {
        let r = api_b.publish(c, json!({"n": i})).await;
        assert_eq!(r["offset"], json!(1), "{c}: {r}");
    }
    let mut got = Vec::new();
    for _ in &channels {
        let p = alice
            .push_where("a publication", |p| p.r#pub.is_some())
            .await;
        got.push(p.channel);
    }
    got.sort();
    let mut want = channels.clone();
    want.sort();
    assert_eq!(got, want, "every channel delivered across nodes once");

    let keys = |r: &RedisServer| -> u64 {
        r.cmd(&["DBSIZE"])
            .trim_start_matches(':')
            .parse()
            .expect("DBSIZE")
    };
    let (k1, k2) = (keys(&r1), keys(&r2));
    assert!(
        k1 > 0 && k2 > 0 && k1 + k2 >= 2 * channels.len() as u64,
        "streams spread over both instances: {k1} and {k2} keys"
    );
    for (i, c) in channels.iter().enumerate() {
        let h = api(&a)
            .ok("history", json!({"channel": c, "limit": 10}))
            .await;
        assert_eq!(h["publications"][0]["data"]["n"], json!(i), "{c}: {h}");
    }
}

/// Redis Cluster, detected from an ordinary `redis://` address (the other nodes as
/// `addr=` seeds): channels land on every master, and two Herald nodes still act as one
/// (delivery across nodes in order, history, presence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let on_cluster = json!({"engine": {"redis": {"address": cluster.url()}}});
    let a = node_with(&cluster.nodes[0], on_cluster.clone());
    let b = node_with(&cluster.nodes[0], on_cluster);
    let channels: Vec<String> = (0..12).map(|i| format!("chat:cluster-{i}")).collect();
    let mut alice = connected(&a, "alice").await;
    let mut bob = connected(&b, "bob").await;
    for c in &channels {
        alice.subscribe(c).await;
        bob.subscribe(c).await;
    }
    let api_b = api(&b);
    for round in 1..=3 {
        for c in &channels {
            let r = api_b.publish(c, json!({"n": round})).await;
            assert_eq!(r["offset"], json!(round), "{c}: {r}");
        }
    }
    let mut got: std::collections::HashMap<String, Vec<(u64, i64)>> = Default::default();
    for _ in 0..channels.len() * 3 {
        let p = alice
            .push_where("a publication", |p| p.r#pub.is_some())
            .await;
        let publication = p.r#pub.unwrap();
        let n = payload_json(&publication.data)["n"].as_i64().unwrap();
        got.entry(p.channel)
            .or_default()
            .push((publication.offset, n));
    }
    for c in &channels {
        assert_eq!(got[c], vec![(1, 1), (2, 2), (3, 3)], "{c} on node A");
    }
    let masters_with_keys = cluster
        .nodes
        .iter()
        .filter(|n| n.cmd(&["DBSIZE"]) != ":0")
        .count();
    assert_eq!(masters_with_keys, 3, "channels spread over every master");
    let h = api(&a)
        .ok("history", json!({"channel": channels[5], "limit": 10}))
        .await;
    assert_eq!(h["publications"].as_array().unwrap().len(), 3, "{h}");
    let stats = api(&a)
        .ok("presence_stats", json!({"channel": channels[7]}))
        .await;
    assert_eq!(stats, json!({"num_clients": 2, "num_users": 2}));
}

/// `redis+sentinel://`: the nodes ask the Sentinel for the master. When the master dies
/// the Sentinel promotes its replica; publishing resumes on the new master (offsets go on
/// in the same epoch, the replica had the streams) and subscribers get every publication
/// acknowledged before and after, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_the_cluster_publishing() {
    let mut sentinel = RedisSentinel::start();
    let on_sentinel = json!({"engine": {"redis": {"address": sentinel.url()}}});
    let a = node_with(&sentinel.master, on_sentinel.clone());
    let b = node_with(&sentinel.master, on_sentinel);
    let channel = "chat:sentinel";
    let mut alice = connected(&a, "alice").await;
    alice.subscribe(channel).await;
    let api_b = api(&b);
    for n in 1..=10 {
        api_b.publish(channel, json!({"n": n})).await;
    }
    let first: Vec<(u64, i64)> = (1..=10).map(|n| (n as u64, n)).collect();
    assert_eq!(publications(&mut alice, channel, 10).await, first);
    // Let the replica catch up before its master dies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old_master = sentinel.master.port;
    sentinel.master.kill();

    let deadline = Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = api_b
            .call("publish", json!({"channel": channel, "data": {"n": 11}}))
            .await;
        if let Some(result) = r.get("result") {
            break result.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no publish after the failover: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sentinel.master_port(), Some(sentinel.replica.port));
    assert_ne!(sentinel.replica.port, old_master);
    assert_eq!(r["offset"], json!(11), "the stream went on: {r}");
    api_b.publish(channel, json!({"n": 12})).await;
    assert_eq!(
        publications(&mut alice, channel, 2).await,
        vec![(11, 11), (12, 12)]
    );
}
