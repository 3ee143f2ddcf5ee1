//! The control seam between nodes: two Herald nodes in one process, each with its own
//! memory engine, whose controllers are joined by a bus that carries every message as
//! bytes (what a PUB/SUB channel does between processes). Server-API commands sent to one
//! node reach the sessions on the other; `/emulation` posted to one node reaches an
//! HTTP-streaming session on the other; `info` on either lists both nodes with their
//! counts. (With the memory engine alone, another node's session is unknown: 404, pinned
//! in transports_bad_input.)

#[macro_use]
mod support;

use std::time::Duration;

use herald::protocol::Encoding;
use serde_json::{Value, json};
use support::engines::ControlBus;
use support::streams::{self, Commander, Conn, Event, Http};
use support::{TestServer, WAIT};
use tokio::time::Instant;

fn config() -> Value {
    json!({
        "channel": {
            "namespaces": [
                {"name": "chat", "history_size": 10, "history_ttl": "300s",
                 "allow_subscribe_for_client": true}
            ]
        }
    })
}

async fn two_nodes() -> (TestServer, TestServer) {
    let bus = ControlBus::new();
    let a = TestServer::start_with_engine(config(), bus.engine()).await;
    let b = TestServer::start_with_engine(config(), bus.engine()).await;
    (a, b)
}

/// `info` of `server`, polled until `pred` holds for its node list (nodes announce
/// themselves every 3 s); panics after 10 s.
async fn info_until(
    server: &TestServer,
    what: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = server.api.ok("info", json!({})).await;
        let nodes = info["nodes"].as_array().cloned().unwrap_or_default();
        if pred(&nodes) {
            return nodes;
        }
        assert!(
            Instant::now() < deadline,
            "info never showed {what}: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_lists_every_live_node_with_its_counts() {
    let (a, b) = two_nodes().await;
    let (_client, connected) = a.connected(Encoding::Json, "alice").await;
    let a_uid = connected.node.clone();
    let nodes = info_until(&b, "node A with its client", |nodes| {
        nodes
            .iter()
            .any(|n| n["uid"] == a_uid.as_str() && n["num_clients"] == 1)
    })
    .await;
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert_ne!(
        nodes[0]["uid"],
        a_uid.as_str(),
        "the node asked comes first"
    );
    let nodes = info_until(&a, "both nodes", |nodes| nodes.len() == 2).await;
    assert_eq!(nodes[0]["uid"], a_uid.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_commands_reach_sessions_on_the_other_node() {
    let (a, b) = two_nodes().await;
    let (mut alice, _) = a.connected(Encoding::Json, "alice").await;

    b.api
        .ok("subscribe", json!({"user": "alice", "channel": "chat:x"}))
        .await;
    let push = alice
        .push_where("subscribe push", |p| p.subscribe.is_some())
        .await;
    assert_eq!(push.channel, "chat:x");

    b.api
        .ok("unsubscribe", json!({"user": "alice", "channel": "chat:x"}))
        .await;
    let push = alice
        .push_where("unsubscribe push", |p| p.unsubscribe.is_some())
        .await;
    assert_eq!(push.unsubscribe.unwrap().code, 2000);

    let expire_at = support::now_secs() + 3600;
    b.api
        .ok("refresh", json!({"user": "alice", "expire_at": expire_at}))
        .await;
    let push = alice
        .push_where("refresh push", |p| p.refresh.is_some())
        .await;
    assert!(push.refresh.unwrap().expires);

    // A whitelisted client stays; the others of the user are closed with the code given.
    let (mut kept, kept_connect) = a.connected(Encoding::Json, "alice").await;
    b.api
        .ok(
            "disconnect",
            json!({"user": "alice", "whitelist": [kept_connect.client],
                   "disconnect": {"code": 4000, "reason": "moved"}}),
        )
        .await;
    assert_eq!(alice.expect_close_code(4000).await, "moved");
    kept.call_ok(support::cmd::ping()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulation_posted_to_another_node_reaches_the_session() {
    let (a, b) = two_nodes().await;
    // B must know A is alive before it forwards to it.
    let (_w, connected) = a.connected(Encoding::Json, "witness").await;
    let a_uid = connected.node;
    info_until(&b, "node A", |nodes| {
        nodes.iter().any(|n| n["uid"] == a_uid.as_str())
    })
    .await;

    for protobuf in [false, true] {
        let connect = streams::connect_command(&a.token("alice"));
        let body = if protobuf {
            streams::command_to_protobuf(&connect)
        } else {
            connect.to_string().into_bytes()
        };
        let stream = streams::http_stream_raw(&Http::h1(a.addr), protobuf, body)
            .await
            .unwrap_or_else(|(status, text)| panic!("http_stream refused: {status} {text}"));
        // Every later command of this session is posted to node B.
        let commander = Commander::Emulation {
            http: Http::h1(b.addr),
            session: String::new(),
            node: String::new(),
            protobuf,
        };
        let mut conn = Conn::after_connect(stream, commander).await;
        assert_eq!(conn.connect.node, a_uid);
        conn.subscribe("chat:e", None).await;
        a.api.publish("chat:e", json!({"via": "b"})).await;
        let pubs = conn.events.pubs("chat:e", 1, WAIT).await;
        assert_eq!(pubs[0].data, json!({"via": "b"}));
        match conn
            .call(json!({"presence_stats": {"channel": "chat:e"}}))
            .await
        {
            Event::Reply { error, .. } => assert_eq!(error.map(|e| e.0), Some(103)),
            other => panic!("presence_stats: {other:?}"),
        }
    }
}
