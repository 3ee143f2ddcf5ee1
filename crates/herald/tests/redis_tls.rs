//! Herald nodes reach Redis over TLS (`rediss://`, `engine.redis.tls.*`): a real
//! redis-server with a TLS port and certificates made by the test (its own CA), two nodes
//! passing a publication through it, client certificates for a Redis that asks for them,
//! and a node that trusts another CA refused, saying why, while one told to skip
//! verification gets through.
//!
//! The servers keep a plain port for the test's own commands; Herald is given only the
//! TLS port, where a plain connection gets no answer, so a working node is a TLS one.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::Herald;
use common::redis_server::{RedisCluster, RedisSentinel, RedisServer, TestCa};
use herald::protocol::Encoding;
use serde_json::{Value, json};
use support::{Api, Client, payload_json};

/// A Herald process on `address` with `tls` as `engine.redis.tls`.
fn node(address: &str, tls: Value) -> Herald {
    node_with(address, json!({"tls": tls}))
}

/// A Herald process on `address` with more `engine.redis` keys.
fn node_with(address: &str, redis: Value) -> Herald {
    let mut config = common::default_config();
    support::merge(
        &mut config,
        json!({"engine": {"type": "redis", "redis": {
            "address": address, "io_timeout": "1s", "connect_timeout": "500ms"
        }}}),
    );
    support::merge(&mut config, json!({"engine": {"redis": redis}}));
    Herald::start(config)
}

fn api(h: &Herald) -> Api {
    Api::new(h.base_url(), h.api_key.clone())
}

/// `herald_redis_up` of `connection` on the shard at `address`.
fn up_series(shard: &str, connection: &str) -> String {
    format!("herald_redis_up{{shard=\"{shard}/0\",connection=\"{connection}\"}}")
}

/// Subscribes a client on `sub_node` to `channel`, publishes through `pub_node`'s API,
/// and returns the `n` the subscriber got.
async fn crosses(sub_node: &Herald, pub_node: &Herald, channel: &str, n: i64) -> i64 {
    let mut c = Client::open_at(sub_node.addr(), Encoding::Json, None).await;
    c.connect(&support::sign(&sub_node.secret, &json!({"sub": "alice"})))
        .await;
    c.subscribe(channel).await;
    let r = api(pub_node).publish(channel, json!({"n": n})).await;
    assert!(r["offset"].as_u64().unwrap() >= 1, "{r}");
    let p = c
        .push_where("the publication", |p| {
            p.channel == channel && p.r#pub.is_some()
        })
        .await;
    payload_json(&p.r#pub.unwrap().data)["n"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_tls_with_client_certificates() {
    let ca = TestCa::new();
    // Redis asks for a client certificate (its default).
    let redis = RedisServer::start_tls(&ca, true);
    let url = redis.tls_url();
    // Node A: `rediss://`, the CA as a file path, the client certificate as PEM text.
    let a = node(
        &url,
        json!({"server_ca_pem": ca.path("ca.pem"), "cert_pem": ca.client_pem, "key_pem": ca.client_key}),
    );
    // Node B: a `redis://` address with `tls.enabled`, the client key as a file path.
    let b = node(
        &url.replace("rediss://", "redis://"),
        json!({"enabled": true, "server_ca_pem": ca.ca_pem, "cert_pem": ca.path("client.pem"),
               "key_pem": ca.path("client.key")}),
    );
    assert_eq!(crosses(&a, &b, "chat:tls", 1).await, 1, "B to A");
    assert_eq!(crosses(&b, &a, "chat:tls", 2).await, 2, "A to B");
    // Both nodes' connections are up, and the shard is shown as rediss:// (no password).
    let shard = url.clone();
    for h in [&a, &b] {
        for connection in ["commands", "pubsub", "control"] {
            assert_eq!(
                api(h).metric(&up_series(&shard, connection)).await,
                1.0,
                "{connection} on {}",
                h.base_url()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_of_another_ca_is_refused() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let redis = RedisServer::start_tls(&ca, false);
    let url = redis.tls_url();
    let wrong = node(&url, json!({"server_ca_pem": other.ca_pem}));
    // Publishing fails with an internal error, never a silent success.
    let r = api(&wrong)
        .call("publish", json!({"channel": "chat:x", "data": {"n": 1}}))
        .await;
    assert_eq!(r["error"]["code"], json!(100), "{r}");
    // The log says why: the certificate's issuer is unknown.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = wrong.log_tail(200);
        if log.contains("UnknownIssuer") || log.contains("unknown issuer") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate error in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for connection in ["commands", "pubsub", "control"] {
        assert_eq!(
            api(&wrong).metric(&up_series(&url, connection)).await,
            0.0,
            "{connection}"
        );
    }
    assert!(
        api(&wrong)
            .metric(&format!(
                "herald_redis_publish_errors_total{{shard=\"{url}/0\"}}"
            ))
            .await
            >= 1.0
    );

    // Told to skip verification, a node accepts the same certificate; and one trusting
    // the right CA (from base64 of its PEM) works next to it.
    let insecure = node(
        &url,
        json!({"server_ca_pem": other.ca_pem, "insecure_skip_verify": true}),
    );
    use base64::Engine;
    let right = node(
        &url,
        json!({"server_ca_pem": base64::engine::general_purpose::STANDARD.encode(&ca.ca_pem)}),
    );
    assert_eq!(crosses(&insecure, &right, "chat:tls-skip", 7).await, 7);
}

/// A Redis Cluster over TLS: the nodes the cluster names (its TLS ports, as it answers a
/// TLS client) are reached with the same TLS settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster_over_tls() {
    let ca = TestCa::new();
    let cluster = RedisCluster::start_tls(&ca);
    let url = cluster.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let tls = json!({"server_ca_pem": ca.ca_pem});
    let (a, b) = (node(&url, tls.clone()), node(&url, tls));
    // Channels whose keys land on different masters.
    for (i, channel) in ["chat:c1", "chat:c2", "chat:c3", "chat:c4"]
        .into_iter()
        .enumerate()
    {
        let n = i as i64 + 1;
        assert_eq!(crosses(&a, &b, channel, n).await, n, "{channel}");
    }
    let keys: Vec<String> = cluster.nodes.iter().map(|n| n.cmd(&["DBSIZE"])).collect();
    assert!(
        keys.iter().filter(|k| *k != ":0").count() >= 2,
        "keys on several masters: {keys:?}"
    );
}

/// Sentinel over TLS: `rediss+sentinel://` (or `sentinel_tls.enabled`) reaches the
/// Sentinels over TLS with `engine.redis.sentinel_tls`, and `engine.redis.tls.enabled`
/// the master they name, which has only TLS to offer the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_through_sentinels_over_tls() {
    let ca = TestCa::new();
    let sentinel = RedisSentinel::start_tls(&ca);
    assert_eq!(
        sentinel.master_port(),
        sentinel.master.tls_port,
        "the Sentinel names the master's TLS port"
    );
    let tls = json!({"enabled": true, "server_ca_pem": ca.ca_pem});
    let a = node_with(
        &sentinel.tls_url(),
        json!({"tls": tls, "sentinel_tls": {"server_ca_pem": ca.path("ca.pem")}}),
    );
    let b = node_with(
        &sentinel.tls_url().replace("rediss+", "redis+"),
        json!({"tls": tls, "sentinel_tls": {"enabled": true, "server_ca_pem": ca.ca_pem}}),
    );
    assert_eq!(crosses(&a, &b, "chat:sentinel-tls", 1).await, 1);
    assert_eq!(crosses(&b, &a, "chat:sentinel-tls", 2).await, 2);
    // Without TLS to the master, the node it names cannot be used.
    let plain = node_with(
        &sentinel.tls_url(),
        json!({"sentinel_tls": {"server_ca_pem": ca.ca_pem}}),
    );
    let r = api(&plain)
        .call("publish", json!({"channel": "chat:x", "data": {"n": 1}}))
        .await;
    assert_eq!(r["error"]["code"], json!(100), "{r}");
}
