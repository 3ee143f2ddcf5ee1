//! What subscribers see when Redis fails under a running cluster, counting every
//! publication the server API acknowledged: the PUB/SUB connections dropped, Redis killed
//! and restarted empty, Redis flushed. Every subscriber receives every acknowledged
//! publication exactly once and in order (a node that lost its PUB/SUB connection
//! delivers from the stream what it missed), and a client holding a position of a lost
//! stream is told it cannot recover.
//!
//! Each test starts its own redis-server (no persistence) and two Herald processes.

mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Herald;
use common::redis_server::RedisServer;
use herald::protocol::Encoding;
use herald::protocol::proto;
use parking_lot::Mutex;
use serde_json::{Value, json};
use support::{Api, Client, cmd, payload_json};
use tokio_util::sync::CancellationToken;

fn node(redis: &RedisServer) -> Herald {
    let mut config = common::default_config();
    support::merge(
        &mut config,
        json!({"engine": {"type": "redis", "redis": {"address": redis.url(), "io_timeout": "1s", "connect_timeout": "500ms"}}}),
    );
    // Long histories: the whole run stays recoverable.
    support::merge(
        &mut config,
        json!({"channel": {"namespaces": [{"name": "chat", "history_size": 10000, "history_ttl": "300s",
            "force_recovery": true, "allow_subscribe_for_client": true}]}}),
    );
    Herald::start(config)
}

fn api(h: &Herald) -> Api {
    Api::new(h.base_url(), h.api_key.clone())
}

/// A subscriber that behaves as the SDKs do: it keeps the position of its last
/// publication and, on an unsubscribe push with a code of 2500 or more (the node found a
/// gap it cannot fill), resubscribes asking to recover from it. A task drives it.
struct Collector {
    state: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default, Debug)]
struct Seen {
    /// The `n` of every publication received, live or recovered.
    got: Vec<i64>,
    /// Recoveries asked for, and whether each recovered.
    recoveries: Vec<bool>,
}

impl Collector {
    async fn start(h: &Herald, user: &str, channel: &str) -> (Collector, String) {
        let mut c = Client::open_at(h.addr(), Encoding::Json, None).await;
        c.connect(&support::sign(&h.secret, &json!({"sub": user})))
            .await;
        let sub = c.subscribe(channel).await;
        assert!(sub.recoverable && !sub.epoch.is_empty(), "{sub:?}");
        let first_epoch = sub.epoch.clone();
        let state = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let (seen, s, ch) = (state.clone(), stop.clone(), channel.to_string());
        let (mut offset, mut epoch) = (sub.offset, sub.epoch);
        let task = tokio::spawn(async move {
            let n_of = |p: &proto::Publication| payload_json(&p.data)["n"].as_i64().unwrap();
            while !s.is_cancelled() {
                let Some(p) = c.next_push(Duration::from_millis(50)).await else {
                    continue;
                };
                assert_eq!(p.channel, ch);
                if let Some(publication) = &p.r#pub {
                    offset = publication.offset;
                    seen.lock().got.push(n_of(publication));
                } else if let Some(u) = &p.unsubscribe {
                    assert!(
                        u.code >= 2500,
                        "an unsubscribe the SDK would not recover from: {u:?}"
                    );
                    let sub = c.subscribe_cmd(cmd::recover(&ch, offset, &epoch)).await;
                    let mut seen = seen.lock();
                    seen.recoveries.push(sub.recovered);
                    seen.got.extend(sub.publications.iter().map(n_of));
                    (offset, epoch) = (sub.offset, sub.epoch);
                    if let Some(last) = sub.publications.last() {
                        offset = last.offset.max(offset);
                    }
                }
            }
        });
        (Collector { state, stop, task }, first_epoch)
    }

    /// Stops the subscriber once it holds the last acknowledged publication (or a bound
    /// passed) and returns what it saw.
    async fn finish(self, acked: &[i64]) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            // Deliveries keep their order: once the last one is in, so is whatever else
            // is coming.
            if acked
                .last()
                .is_none_or(|n| self.state.lock().got.contains(n))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
        self.task.await.expect("subscriber task");
        std::mem::take(&mut *self.state.lock())
    }

    /// Asserts every acknowledged publication arrived exactly once and in order, and that
    /// the subscriber never had to be told it could not recover.
    async fn assert_got_all(self, who: &str, acked: &[i64]) {
        let seen = self.finish(acked).await;
        assert_exactly_once_in_order(who, &seen.got, acked);
        assert!(
            seen.recoveries.iter().all(|r| *r),
            "{who}: told it could not recover, though nothing was lost: {seen:?}"
        );
    }
}

/// Every acknowledged publication in `got`, once each, in the order acknowledged.
fn assert_exactly_once_in_order(who: &str, got: &[i64], acked: &[i64]) {
    let missing: Vec<i64> = acked.iter().copied().filter(|n| !got.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{who}: acknowledged publications never delivered: {missing:?}"
    );
    let of_acked: Vec<i64> = got.iter().copied().filter(|n| acked.contains(n)).collect();
    assert_eq!(
        of_acked, acked,
        "{who}: acknowledged publications must arrive exactly once, in order"
    );
}

/// Either every acknowledged publication arrived exactly once and in order, or the
/// subscriber was told it could not recover; and nothing arrived twice or out of order.
fn assert_complete_or_told(who: &str, seen: &Seen, acked: &[i64]) {
    let told = seen.recoveries.iter().any(|r| !*r);
    let of_acked: Vec<i64> = seen
        .got
        .iter()
        .copied()
        .filter(|n| acked.contains(n))
        .collect();
    assert!(
        of_acked.windows(2).all(|w| w[0] < w[1]),
        "{who}: duplicates or disorder: {seen:?}"
    );
    if !told {
        assert_exactly_once_in_order(who, &seen.got, acked);
    }
}

/// Publishes `n` = 1..=count through `api`, `pause` apart, calling `fault(n)` before
/// each; returns the acknowledged `n` and the results.
async fn publish_through(
    api: &Api,
    channel: &str,
    count: i64,
    pause: Duration,
    mut fault: impl FnMut(i64),
) -> (Vec<i64>, Vec<Value>) {
    let (mut acked, mut results) = (Vec::new(), Vec::new());
    for n in 1..=count {
        fault(n);
        let r = api
            .call("publish", json!({"channel": channel, "data": {"n": n}}))
            .await;
        if let Some(result) = r.get("result") {
            acked.push(n);
            results.push(result.clone());
        } else {
            assert_eq!(
                r["error"]["code"],
                json!(100),
                "a failed publish is an internal error: {r}"
            );
        }
        tokio::time::sleep(pause).await;
    }
    (acked, results)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_pubsub_connections_lose_no_acknowledged_publication() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let channel = "chat:pubsub-drop";
    let (on_a, _) = Collector::start(&a, "alice", channel).await;
    let (on_b, _) = Collector::start(&b, "bob", channel).await;
    let (acked, results) = publish_through(&api(&b), channel, 300, Duration::from_millis(3), |n| {
        if n == 60 || n == 180 {
            // Every node's PUB/SUB connection drops; publishing goes on meanwhile.
            let killed = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            assert!(killed.starts_with(':'), "CLIENT KILL: {killed}");
        }
    })
    .await;
    assert_eq!(acked.len(), 300, "publishing does not depend on PUB/SUB");
    let offsets: Vec<u64> = results
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (1..=300).collect::<Vec<u64>>());
    on_a.assert_got_all("subscriber on node A", &acked).await;
    on_b.assert_got_all("subscriber on node B", &acked).await;

    // The metrics tell the story: on each node both PUB/SUB connections (channels and
    // control) were made again twice, the channel subscribed again each time, and what
    // the outages missed was read from the stream.
    let shard = format!("{}/0", redis.url());
    let mut recovered = 0.0;
    for h in [&a, &b] {
        let api = api(h);
        let series =
            |name: &str, extra: &str| format!("herald_redis_{name}{{shard=\"{shard}\"{extra}}}");
        for connection in ["pubsub", "control"] {
            let conn = format!(",connection=\"{connection}\"");
            assert_eq!(
                api.metric(&series("reconnects_total", &conn)).await,
                2.0,
                "{connection}"
            );
            assert_eq!(api.metric(&series("up", &conn)).await, 1.0, "{connection}");
        }
        assert_eq!(api.metric(&series("resubscribes_total", "")).await, 2.0);
        assert_eq!(
            api.metric(&series("resubscribed_channels_total", "")).await,
            2.0
        );
        assert_eq!(api.metric(&series("catch_ups_total", "")).await, 2.0);
        assert_eq!(api.metric(&series("catch_up_errors_total", "")).await, 0.0);
        assert_eq!(api.metric(&series("publish_errors_total", "")).await, 0.0);
        recovered += api.metric(&series("catch_up_publications_total", "")).await;
    }
    assert!(
        recovered >= 1.0,
        "publications read from the stream: {recovered}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_loses_no_acknowledged_publication_silently() {
    let mut redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let channel = "chat:restart";
    let (on_a, _) = Collector::start(&a, "alice", channel).await;
    let (on_b, _) = Collector::start(&b, "bob", channel).await;
    let api_a = api(&a);
    let (acked, results) = {
        let redis = &mut redis;
        publish_through(&api_a, channel, 200, Duration::from_millis(5), move |n| {
            if n == 60 {
                redis.kill();
            }
            if n == 80 {
                redis.restart();
            }
        })
        .await
    };
    let epochs: std::collections::BTreeSet<&str> = results
        .iter()
        .map(|r| r["epoch"].as_str().unwrap())
        .collect();
    assert_eq!(epochs.len(), 2, "a new epoch after Redis came back empty");
    assert!(
        acked.contains(&59) && !acked.contains(&61),
        "down from 60: {acked:?}"
    );
    assert!(
        acked.len() >= 150,
        "publishing resumed after the restart: {acked:?}"
    );
    let before: Vec<i64> = acked.iter().copied().filter(|n| *n < 60).collect();
    for (who, c) in [
        ("subscriber on node A", on_a),
        ("subscriber on node B", on_b),
    ] {
        let seen = c.finish(&acked).await;
        assert_complete_or_told(who, &seen, &acked);
        // The stream was lost with Redis: a client cannot know what it missed, so it is
        // told (recovered: false) instead of skipping silently; what came before, it has.
        assert_eq!(seen.recoveries, [false], "{who}: {seen:?}");
        assert_exactly_once_in_order(who, &seen.got[..before.len()], &before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_redis_starts_a_new_epoch_and_old_positions_do_not_recover() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis), node(&redis));
    let channel = "chat:flush";
    let (on_a, epoch) = Collector::start(&a, "alice", channel).await;
    let (acked, results) = publish_through(&api(&b), channel, 100, Duration::from_millis(3), |n| {
        if n == 50 {
            redis.flushall();
        }
    })
    .await;
    assert_eq!(acked.len(), 100);
    assert_eq!(results[48]["epoch"], json!(epoch));
    assert_eq!(
        results[49]["offset"],
        json!(1),
        "offsets start over: {}",
        results[49]
    );
    assert_ne!(results[49]["epoch"], json!(epoch));
    let seen = on_a.finish(&acked).await;
    assert_complete_or_told("subscriber on node A", &seen, &acked);
    assert_eq!(seen.recoveries, [false], "told of the new epoch: {seen:?}");

    // A client that was away since offset 40 of the lost stream, on either node, is told
    // it cannot recover.
    for h in [&a, &b] {
        let mut c = Client::open_at(h.addr(), Encoding::Json, None).await;
        c.connect(&support::sign(&h.secret, &json!({"sub": "carol"})))
            .await;
        let sub = c.subscribe_cmd(cmd::recover(channel, 40, &epoch)).await;
        assert!(!sub.recovered, "recovered from a lost stream: {sub:?}");
        assert_eq!(sub.epoch, results[99]["epoch"].as_str().unwrap());
        assert_eq!(sub.offset, 51);
    }
}

/// A node killed (no drain) while its clients hold subscriptions: they reconnect to the
/// other node and recover exactly what was published meanwhile, from the shared stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_recover_on_another() {
    let redis = RedisServer::start();
    let (mut a, b) = (node(&redis), node(&redis));
    let channel = "chat:node-killed";
    let (on_a, epoch) = Collector::start(&a, "alice", channel).await;
    let (first, _) = publish_through(&api(&b), channel, 20, Duration::ZERO, |_| {}).await;
    let seen = on_a.finish(&first).await;
    assert_exactly_once_in_order("alice on node A", &seen.got, &first);

    a.kill();
    let (missed, _) = publish_through(&api(&b), channel, 5, Duration::ZERO, |_| {}).await;
    assert_eq!(missed.len(), 5);

    let mut c = Client::open_at(b.addr(), Encoding::Json, None).await;
    c.connect(&support::sign(&b.secret, &json!({"sub": "alice"})))
        .await;
    let sub = c.subscribe_cmd(cmd::recover(channel, 20, &epoch)).await;
    assert!(sub.recovered, "{sub:?}");
    let offsets: Vec<u64> = sub.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [21, 22, 23, 24, 25]);
}

/// A node killed while its clients are in a channel's presence: their entries stop being
/// refreshed and disappear after `engine.redis.presence_ttl`, while the live node's
/// entries, refreshed every `client.presence_update_interval`, outlive that TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_killed_node_expires_after_presence_ttl() {
    let redis = RedisServer::start();
    let start = || {
        let mut config = common::default_config();
        support::merge(
            &mut config,
            json!({"engine": {"type": "redis", "redis": {"address": redis.url(), "presence_ttl": "2s"}},
                   "client": {"presence_update_interval": "400ms"}}),
        );
        Herald::start(config)
    };
    let (mut a, b) = (start(), start());
    let channel = "chat:presence-ttl";
    let mut clients = Vec::new();
    for (h, user) in [(&a, "alice"), (&b, "bob")] {
        let mut c = Client::open_at(h.addr(), Encoding::Json, None).await;
        c.connect(&support::sign(&h.secret, &json!({"sub": user})))
            .await;
        c.subscribe(channel).await;
        clients.push(c);
    }
    let api_b = api(&b);
    let users = || async {
        let r = api_b.ok("presence", json!({"channel": channel})).await;
        let mut users: Vec<String> = r["presence"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c["user"].as_str().unwrap().to_owned())
            .collect();
        users.sort_unstable();
        users
    };
    assert_eq!(users().await, ["alice", "bob"]);
    // Past the TTL, both are still there: their nodes refresh them.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(
        users().await,
        ["alice", "bob"],
        "refreshed entries outlive the TTL"
    );

    a.kill();
    let killed = Instant::now();
    assert_eq!(
        users().await,
        ["alice", "bob"],
        "alice's entry lives on for a while"
    );
    let deadline = killed + Duration::from_secs(10);
    while users().await != ["bob"] {
        assert!(Instant::now() < deadline, "alice's entry never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_after = killed.elapsed();
    assert!(
        gone_after >= Duration::from_millis(1500) && gone_after <= Duration::from_millis(3500),
        "alice's entry expired {gone_after:?} after the kill (TTL 2s, refreshed every 400ms)"
    );
}
