//! Helpers for the tests that run several Herald processes on one Redis (`cluster_*.rs`):
//! start a node on a `redis-server`, its server API, a connected WebSocket client, and the
//! node list `info` shows once the nodes have heard of each other.
//!
//! Use from a test file that also has `mod common;` and `mod support;`, with `mod cluster;`.
#![allow(dead_code)]

use std::time::Duration;

use herald::protocol::Encoding;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common::Herald;
use crate::common::redis_server::RedisServer;
use crate::support::{self, Api, Client};

/// How long nodes may take to hear each other's announcements (every 3 s).
pub const SEE_EACH_OTHER: Duration = Duration::from_secs(10);

/// A Herald process on `redis` with the tests' default config.
pub fn node(redis: &RedisServer) -> Herald {
    node_with(redis, json!({}))
}

/// A Herald process on `redis` with the default config and `extra` merged over it.
pub fn node_with(redis: &RedisServer, extra: Value) -> Herald {
    let mut config = crate::common::default_config();
    support::merge(
        &mut config,
        json!({"engine": {"type": "redis", "redis": {"address": redis.url(), "io_timeout": "1s"}}}),
    );
    support::merge(&mut config, extra);
    Herald::start(config)
}

/// The server API of `h`.
pub fn api(h: &Herald) -> Api {
    Api::new(h.base_url(), h.api_key.clone())
}

/// A WebSocket (JSON) client of `h`, connected as `user`.
pub async fn connected(h: &Herald, user: &str) -> Client {
    let mut c = Client::open_at(h.addr(), Encoding::Json, None).await;
    c.connect(&support::sign(&h.secret, &json!({"sub": user})))
        .await;
    c
}

/// The uids `info` lists through `h`, once it lists at least `n` of them (or what it
/// lists after [`SEE_EACH_OTHER`]).
pub async fn nodes_listed(h: &Herald, n: usize) -> Vec<String> {
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

/// Waits until every node in `nodes` lists all of them in `info`; panics otherwise.
pub async fn see_each_other(nodes: &[&Herald]) {
    for h in nodes {
        let listed = nodes_listed(h, nodes.len()).await;
        assert_eq!(
            listed.len(),
            nodes.len(),
            "info through {} lists {listed:?}",
            h.base_url()
        );
    }
}
