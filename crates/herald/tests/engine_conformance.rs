//! One conformance suite for every engine: what `Broker` and `PresenceManager` promise,
//! checked against the memory engine, the Redis engine on a real `redis-server` (started
//! per test on a free loopback port, no persistence) and on a three-node Redis Cluster.
//!
//! Each check is an `async fn(&mut Harness)`; [`conformance!`] runs it once per engine.
//! A new engine adds a constructor to [`Harness`] and a module to the macro. The suite
//! lives here, beside the other end-to-end tests, because it needs nothing but the public
//! engine API: the library ships no test code.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::redis_server::{RedisCluster, RedisServer};
use herald::config::{EngineConfig, EngineType, RedisConfig};
use herald::engine::{
    BrokerEventHandler, ClientInfo, Engine, HistoryFilter, Publication, PublishOptions,
    StreamPosition,
};
use parking_lot::Mutex;

/// Bound on every wait for an event.
const WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Publication {
        channel: String,
        data: Bytes,
        position: StreamPosition,
    },
    Join(String, String),
    Leave(String, String),
}

/// Records what the broker hands to the node.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl BrokerEventHandler for Recorder {
    fn handle_publication(&self, channel: &str, p: Arc<Publication>, position: &StreamPosition) {
        assert_eq!(p.offset, position.offset, "publication offset = position");
        self.events.lock().push(Event::Publication {
            channel: channel.into(),
            data: p.data.clone(),
            position: position.clone(),
        });
    }
    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        self.events
            .lock()
            .push(Event::Join(channel.into(), info.client.clone()));
    }
    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        self.events
            .lock()
            .push(Event::Leave(channel.into(), info.client.clone()));
    }
}

impl Recorder {
    /// Waits until `pred` holds for the events so far; panics after [`WAIT`].
    async fn wait_for(&self, what: &str, pred: impl Fn(&[Event]) -> bool) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            {
                let events = self.events.lock();
                if pred(&events) {
                    return events.clone();
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{what}: not seen within {WAIT:?}; events: {:?}",
                    self.events.lock()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn publications(&self, channel: &str) -> Vec<StreamPosition> {
        self.events
            .lock()
            .iter()
            .filter_map(|e| match e {
                Event::Publication {
                    channel: c,
                    position,
                    ..
                } if c == channel => Some(position.clone()),
                _ => None,
            })
            .collect()
    }
}

/// One engine under test, with what the checks need to observe and disturb it.
struct Harness {
    engine: Engine,
    events: Arc<Recorder>,
    backend: Backend,
}

/// What the engine runs on (kept alive with the harness).
enum Backend {
    Memory,
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl Harness {
    fn memory() -> Harness {
        Self::on(Engine::memory(), Backend::Memory)
    }

    fn redis() -> Harness {
        let server = RedisServer::start();
        let engine = Engine::build(&redis_config(server.url())).expect("redis engine builds");
        Self::on(engine, Backend::Redis(server))
    }

    fn redis_cluster() -> Harness {
        let cluster = RedisCluster::start();
        let engine = Engine::build(&redis_config(cluster.url())).expect("redis engine builds");
        Self::on(engine, Backend::Cluster(cluster))
    }

    fn on(engine: Engine, backend: Backend) -> Harness {
        let events = Arc::new(Recorder::default());
        engine.broker.register_handler(events.clone());
        engine.start();
        Harness {
            engine,
            events,
            backend,
        }
    }

    /// Every stream and presence entry is lost: the memory engine restarts, Redis is
    /// flushed (as a Redis restarted without persistence is).
    async fn lose_everything(&mut self) {
        match &self.backend {
            Backend::Redis(server) => server.flushall(),
            Backend::Cluster(cluster) => cluster.nodes.iter().for_each(RedisServer::flushall),
            Backend::Memory => {
                self.engine.close().await;
                *self = Self::memory();
            }
        }
    }

    async fn publish(&self, channel: &str, data: &str, opts: &PublishOptions) -> StreamPosition {
        self.engine
            .broker
            .publish(channel, publication(data), opts)
            .await
            .unwrap_or_else(|e| panic!("publish to {channel}: {e}"))
    }

    async fn history(&self, channel: &str, filter: HistoryFilter) -> (Vec<u64>, StreamPosition) {
        let r = self
            .engine
            .broker
            .history(channel, &filter)
            .await
            .unwrap_or_else(|e| panic!("history of {channel}: {e}"));
        (
            r.publications.iter().map(|p| p.offset).collect(),
            r.position,
        )
    }
}

fn redis_config(url: String) -> EngineConfig {
    EngineConfig {
        kind: EngineType::Redis,
        redis: RedisConfig {
            address: vec![url],
            io_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    }
}

fn publication(data: &str) -> Publication {
    Publication {
        data: Bytes::copy_from_slice(data.as_bytes()),
        ..Default::default()
    }
}

fn kept(size: usize) -> PublishOptions {
    PublishOptions {
        history_size: size,
        history_ttl: Duration::from_secs(60),
        history_meta_ttl: Duration::from_secs(3600),
    }
}

fn client(user: &str, client: &str) -> ClientInfo {
    ClientInfo {
        user: user.into(),
        client: client.into(),
        conn_info: Bytes::from_static(b"{\"a\":1}"),
        chan_info: Bytes::new(),
    }
}

fn since(offset: u64, epoch: &str) -> Option<StreamPosition> {
    Some(StreamPosition {
        offset,
        epoch: epoch.into(),
    })
}

// ---------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------

/// Offsets rise by exactly one in one epoch; history returns what was kept, with the top.
async fn offsets_rise_by_one(h: &mut Harness) {
    let mut epoch = None;
    for n in 1..=5u64 {
        let pos = h.publish("c", &format!("{n}"), &kept(10)).await;
        assert_eq!(pos.offset, n);
        assert!(!pos.epoch.is_empty());
        assert_eq!(epoch.get_or_insert(pos.epoch.clone()), &pos.epoch);
    }
    let r = h
        .engine
        .broker
        .history("c", &HistoryFilter::default())
        .await
        .unwrap();
    let data: Vec<&[u8]> = r.publications.iter().map(|p| p.data.as_ref()).collect();
    assert_eq!(data, [b"1", b"2", b"3", b"4", b"5"]);
    assert_eq!(r.position.offset, 5);
    assert_eq!(Some(r.position.epoch), epoch);
    assert!(r.publications.iter().all(|p| p.time > 0), "time is set");
}

/// Publication fields survive the round trip through the engine.
async fn publication_fields_survive(h: &mut Harness) {
    h.engine.broker.subscribe("f").await.unwrap();
    let mut p = publication("{\"x\":1}");
    p.info = Some(client("alice", "c1"));
    p.tags = HashMap::from([("k".to_string(), "v".to_string())]);
    h.engine
        .broker
        .publish("f", p.clone(), &kept(10))
        .await
        .unwrap();
    let r = h
        .engine
        .broker
        .history("f", &HistoryFilter::default())
        .await
        .unwrap();
    let got = &r.publications[0];
    assert_eq!(got.data, p.data);
    assert_eq!(got.info, p.info);
    assert_eq!(got.tags, p.tags);
    assert_eq!(got.offset, 1);
    h.events
        .wait_for("the publication", |e| {
            e.iter().any(|e| matches!(e, Event::Publication { channel, data, .. } if channel == "f" && data == &p.data))
        })
        .await;
}

/// Without history: offset 0, no epoch, nothing kept, still delivered.
async fn no_history_is_offset_zero(h: &mut Harness) {
    h.engine.broker.subscribe("n").await.unwrap();
    let pos = h.publish("n", "x", &PublishOptions::default()).await;
    assert_eq!(pos, StreamPosition::default());
    h.events
        .wait_for("delivery without history", |e| {
            e.iter()
                .any(|e| matches!(e, Event::Publication { channel, position, .. } if channel == "n" && position.offset == 0))
        })
        .await;
}

/// An empty stream has an epoch that stays, and the first publication continues it.
async fn empty_stream_epoch_is_stable(h: &mut Harness) {
    let (pubs, first) = h.history("e", HistoryFilter::default()).await;
    assert!(pubs.is_empty());
    assert_eq!(first.offset, 0);
    assert!(!first.epoch.is_empty());
    let (_, again) = h.history("e", HistoryFilter::default()).await;
    assert_eq!(again, first);
    let pos = h.publish("e", "1", &kept(10)).await;
    assert_eq!(
        pos,
        StreamPosition {
            offset: 1,
            epoch: first.epoch
        }
    );
}

/// `remove_history` drops the stream: a new epoch, offsets from 1 again.
async fn remove_history_starts_a_new_epoch(h: &mut Harness) {
    let first = h.publish("r", "1", &kept(10)).await;
    h.publish("r", "2", &kept(10)).await;
    h.engine.broker.remove_history("r").await.unwrap();
    let (pubs, pos) = h.history("r", HistoryFilter::default()).await;
    assert!(pubs.is_empty());
    assert_eq!(pos.offset, 0);
    assert_ne!(pos.epoch, first.epoch);
    let next = h.publish("r", "3", &kept(10)).await;
    assert_eq!(
        next,
        StreamPosition {
            offset: 1,
            epoch: pos.epoch
        }
    );
}

/// A lost stream (restart, flush) comes back with a new epoch, so that a client holding
/// an old position learns it cannot recover instead of silently missing publications.
async fn lost_stream_gets_a_new_epoch(h: &mut Harness) {
    let before = h.publish("l", "1", &kept(10)).await;
    h.lose_everything().await;
    let (pubs, pos) = h
        .history(
            "l",
            HistoryFilter {
                since: since(before.offset, &before.epoch),
                ..Default::default()
            },
        )
        .await;
    assert!(pubs.is_empty());
    assert_ne!(pos.epoch, before.epoch);
    assert_eq!(pos.offset, 0);
    let after = h.publish("l", "2", &kept(10)).await;
    assert_eq!(
        after,
        StreamPosition {
            offset: 1,
            epoch: pos.epoch
        }
    );
}

/// since (exclusive), limit, limit 0 (position only), reverse, reverse with since, a
/// stale epoch.
async fn history_filters(h: &mut Harness) {
    let mut top = StreamPosition::default();
    for n in 1..=6 {
        top = h.publish("h", &n.to_string(), &kept(10)).await;
    }
    let e = top.epoch.as_str();
    let f = |since: Option<StreamPosition>, limit: Option<usize>, reverse: bool| HistoryFilter {
        since,
        limit,
        reverse,
    };
    let cases: Vec<(HistoryFilter, Vec<u64>)> = vec![
        (f(None, None, false), vec![1, 2, 3, 4, 5, 6]),
        (f(None, Some(2), false), vec![1, 2]),
        (f(None, Some(0), false), vec![]),
        (f(since(2, e), None, false), vec![3, 4, 5, 6]),
        (f(since(2, e), Some(2), false), vec![3, 4]),
        (f(since(6, e), None, false), vec![]),
        (f(since(0, e), None, false), vec![1, 2, 3, 4, 5, 6]),
        (f(None, None, true), vec![6, 5, 4, 3, 2, 1]),
        (f(None, Some(2), true), vec![6, 5]),
        (f(since(4, e), None, true), vec![3, 2, 1]),
        (f(since(4, e), Some(1), true), vec![3]),
        (f(since(0, e), None, true), vec![]),
        (f(since(2, "stale"), None, false), vec![]),
    ];
    for (filter, want) in cases {
        let shown = format!("{filter:?}");
        let (got, pos) = h.history("h", filter).await;
        assert_eq!(got, want, "history {shown}");
        assert_eq!(pos, top, "position with {shown}");
    }
}

/// The stream keeps at most `history_size` publications, the newest.
async fn history_size_is_kept(h: &mut Harness) {
    for n in 1..=7 {
        h.publish("s", &n.to_string(), &kept(3)).await;
    }
    let (got, pos) = h.history("s", HistoryFilter::default()).await;
    assert_eq!(got, vec![5, 6, 7]);
    assert_eq!(pos.offset, 7);
}

/// Publications expire after `history_ttl`; the position (offset and epoch) outlives them
/// until `history_meta_ttl`, then the stream starts over in a new epoch.
async fn history_and_meta_ttl_expire(h: &mut Harness) {
    let opts = PublishOptions {
        history_size: 10,
        history_ttl: Duration::from_millis(300),
        history_meta_ttl: Duration::from_millis(1200),
    };
    h.publish("t", "1", &opts).await;
    let top = h.publish("t", "2", &opts).await;
    let (got, _) = h.history("t", HistoryFilter::default()).await;
    assert_eq!(got, vec![1, 2]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (got, pos) = h.history("t", HistoryFilter::default()).await;
    assert!(got.is_empty(), "publications outlived history_ttl: {got:?}");
    assert_eq!(pos, top, "the position outlives the publications");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (got, pos) = h.history("t", HistoryFilter::default()).await;
    assert!(got.is_empty());
    assert_eq!(pos.offset, 0, "the position expired with history_meta_ttl");
    assert_ne!(pos.epoch, top.epoch);
}

/// Concurrent publishers to one channel: every offset given once, and the node receives
/// the channel's publications in offset order with none missing.
async fn order_under_concurrent_publishers(h: &mut Harness) {
    h.engine.broker.subscribe("o").await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let broker = h.engine.broker.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..50 {
                let p = publication(&format!("{t}-{n}"));
                offsets.push(broker.publish("o", p, &kept(1000)).await.unwrap().offset);
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<u64>>());
    h.events
        .wait_for("200 deliveries", |e| {
            e.iter()
                .filter(|e| matches!(e, Event::Publication { channel, .. } if channel == "o"))
                .count()
                >= 200
        })
        .await;
    let delivered: Vec<u64> = h
        .events
        .publications("o")
        .iter()
        .map(|p| p.offset)
        .collect();
    assert_eq!(delivered, (1..=200).collect::<Vec<u64>>());
}

/// Join and leave events reach a subscribed node.
async fn join_and_leave_are_delivered(h: &mut Harness) {
    h.engine.broker.subscribe("j").await.unwrap();
    let info = client("alice", "c1");
    h.engine.broker.publish_join("j", &info).await.unwrap();
    h.engine.broker.publish_leave("j", &info).await.unwrap();
    let events = h.events.wait_for("join and leave", |e| e.len() >= 2).await;
    assert_eq!(
        events,
        vec![
            Event::Join("j".into(), "c1".into()),
            Event::Leave("j".into(), "c1".into())
        ]
    );
}

/// Presence: add, refresh, remove, the entries by client id and the counts of clients
/// and distinct users.
async fn presence_add_remove_stats(h: &mut Harness) {
    let p = &h.engine.presence;
    let ttl = Duration::from_secs(60);
    for (user, c) in [("alice", "1"), ("alice", "2"), ("bob", "3")] {
        p.add("p", &client(user, c), ttl).await.unwrap();
    }
    p.add("p", &client("alice", "1"), ttl).await.unwrap();
    assert_eq!(p.stats("p").await.unwrap(), (3, 2));
    let all = p.presence("p").await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all["3"], client("bob", "3"));
    p.remove("p", "3").await.unwrap();
    p.remove("p", "absent").await.unwrap();
    assert_eq!(p.stats("p").await.unwrap(), (2, 1));
    assert_eq!(p.stats("other").await.unwrap(), (0, 0));
    assert!(p.presence("other").await.unwrap().is_empty());
}

/// An entry that is not refreshed expires (its node died); a refreshed one stays.
async fn presence_expires(h: &mut Harness) {
    let p = &h.engine.presence;
    p.add("x", &client("a", "dead"), Duration::from_millis(300))
        .await
        .unwrap();
    p.add("x", &client("b", "alive"), Duration::from_millis(300))
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        p.add("x", &client("b", "alive"), Duration::from_millis(300))
            .await
            .unwrap();
    }
    let all = p.presence("x").await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), vec!["alive"]);
    assert_eq!(p.stats("x").await.unwrap(), (1, 1));
}

macro_rules! conformance {
    ($($check:ident),+ $(,)?) => {
        mod memory {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let mut h = super::Harness::memory();
                super::$check(&mut h).await;
                h.engine.close().await;
            }
        )+}
        mod redis {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let mut h = super::Harness::redis();
                super::$check(&mut h).await;
                h.engine.close().await;
            }
        )+}
        mod redis_cluster {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let mut h = super::Harness::redis_cluster();
                super::$check(&mut h).await;
                h.engine.close().await;
            }
        )+}
    };
}

conformance!(
    offsets_rise_by_one,
    publication_fields_survive,
    no_history_is_offset_zero,
    empty_stream_epoch_is_stable,
    remove_history_starts_a_new_epoch,
    lost_stream_gets_a_new_epoch,
    history_filters,
    history_size_is_kept,
    history_and_meta_ttl_expire,
    order_under_concurrent_publishers,
    join_and_leave_are_delivered,
    presence_add_remove_stats,
    presence_expires,
);
