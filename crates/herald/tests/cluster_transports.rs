//! Three Herald processes on one real `redis-server` act as one server, whatever the
//! transport:
//! - a subscriber on every node over every transport (WebSocket JSON and Protobuf,
//!   http_stream JSON and Protobuf, SSE emulation, uni_websocket, uni_sse,
//!   uni_http_stream, gRPC `Consume` and `HeraldStream`, gRPC-Web) gets every publication
//!   made through the other nodes' APIs, in order, with the API's offsets; the emulation
//!   clients send their commands through another node than the one they stream from;
//! - `/emulation` posted to B and C reaches a session streaming from A (subscribe,
//!   unsubscribe, publish, in the order posted), and a request for a session that exists
//!   nowhere answers as Centrifugo does (204; 404 for an unknown node), whichever node
//!   gets it;
//! - a client that reconnects to another node (twice, the last time over
//!   uni_http_stream) recovers exactly what it missed;
//! - presence lists the clients of all three nodes, through each node.

mod cluster;
mod common;
#[macro_use]
mod support;

use std::time::Duration;

use cluster::{api, connected, node, see_each_other};
use common::Herald;
use common::redis_server::RedisServer;
use http::StatusCode;
use serde_json::{Value, json};
use support::streams::{self, Conn, Event, Http, Position, UniConnect};
use support::{WAIT, cmd, payload_json};

/// Publications per run.
const N: usize = 30;

/// A token for `user` on `h`, with a `channels` claim (server-side subscriptions) when
/// `channels` is not empty.
fn token(h: &Herald, user: &str, channels: &[&str]) -> String {
    let mut claims = json!({"sub": user});
    if !channels.is_empty() {
        claims["channels"] = json!(channels);
    }
    support::sign(&h.secret, &claims)
}

/// A bidirectional client subscribes once connected; the subscription must be positioned.
async fn subscribed(mut c: Conn, channel: &str) -> Conn {
    let sub = c.subscribe(channel, None).await;
    assert!(
        sub.recoverable && sub.positioned,
        "[{}] force_recovery: {sub:?}",
        c.label()
    );
    c
}

/// One client of every transport on `on`, subscribed to `channel`; the emulation clients
/// post their commands (the subscribe included) to `via`.
async fn every_transport(on: &Herald, via: &Herald, channel: &str) -> Vec<Conn> {
    let (h1, h2) = (Http::h1(on.addr()), Http::h2c(on.addr()));
    let bidi = token(on, "bidi", &[]);
    let uni = UniConnect::new(&token(on, "uni", &[channel]));
    let mut conns = Vec::new();
    for protobuf in [false, true] {
        let c = streams::websocket(&h1, protobuf, &bidi).await;
        conns.push(subscribed(c, channel).await);
    }
    let mut emulated = Vec::new();
    for protobuf in [false, true] {
        emulated.push(streams::http_stream(&h1, protobuf, &bidi).await);
    }
    emulated.push(streams::sse(&h1, &bidi).await);
    for mut c in emulated {
        c.emulate_via(Http::h1(via.addr()));
        conns.push(subscribed(c, channel).await);
    }
    let c = streams::grpc_stream(&h2, &bidi).await;
    conns.push(subscribed(c, channel).await);
    conns.push(streams::uni_websocket(&h1, &uni).await);
    conns.push(streams::uni_sse(&h1, &uni).await);
    conns.push(streams::uni_http_stream(&h1, &uni).await);
    conns.push(streams::grpc_consume(&h2, &uni).await);
    conns.push(streams::grpc_web_consume(&h1, &uni).await);
    for c in &conns {
        if let Some(sub) = c.connect.subs.get(channel) {
            assert!(sub.recoverable && sub.positioned, "[{}] {sub:?}", c.label());
        }
    }
    conns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_on_every_node_gets_publications_made_through_the_others() {
    let redis = RedisServer::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    see_each_other(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let channel = "chat:everywhere";
    let mut conns = Vec::new();
    for (i, on) in nodes.iter().enumerate() {
        let via = &nodes[(i + 1) % 3];
        let mut here = every_transport(on, via, channel).await;
        for c in &here {
            let node = &c.connect.node;
            assert!(
                !node.is_empty(),
                "[{}] no node in {:?}",
                c.label(),
                c.connect
            );
        }
        conns.append(&mut here);
    }

    // Publication n goes through node n % 3: every subscriber gets two thirds of them
    // through another node's API, and the order is the order acknowledged.
    let apis: Vec<_> = nodes.iter().map(api).collect();
    let mut sent = Vec::new();
    for n in 0..N {
        let data = json!({"n": n, "via": n % 3});
        let r = apis[n % 3].publish(channel, data.clone()).await;
        let offset = r["offset"].as_u64().expect("offset");
        assert_eq!(offset, n as u64 + 1, "one stream for the cluster: {r}");
        sent.push((offset, data));
    }
    for c in &mut conns {
        let got = c.events.pubs(channel, N, Duration::from_secs(15)).await;
        let got: Vec<(u64, Value)> = got.into_iter().map(|p| (p.offset, p.data)).collect();
        assert_eq!(got, sent, "[{}]", c.label());
        c.events.expect_quiet(Duration::from_millis(100)).await;
    }
}

/// Asserts that no publication reaches `conn` within `quiet` (other pushes may).
async fn no_publications(conn: &mut Conn, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.events.next_non_ping(left).await {
            streams::Next::Timeout => return,
            streams::Next::Event(Event::Pub(p)) => {
                panic!("[{}] unexpected publication {p:?}", conn.label())
            }
            streams::Next::Event(_) => {}
            streams::Next::Ended(why) => panic!("[{}] stream ended ({why})", conn.label()),
        }
    }
}

/// The status of `POST /emulation` to `to` carrying `commands` for `session` on `node`.
async fn post_emulation(to: &Herald, node: &str, session: &str, protobuf: bool) -> StatusCode {
    let content_type = if protobuf {
        "application/octet-stream"
    } else {
        "application/json"
    };
    let body = streams::emulation_body(session, node, &[json!({})], protobuf);
    let (status, text) = Http::h1(to.addr())
        .post("/emulation", content_type, body)
        .await;
    assert!(text.len() < 200, "{text}");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulation_posted_to_the_other_nodes_reaches_a_session_on_the_first() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    see_each_other(&[&a, &b, &c]).await;
    let (via_b, via_c) = (Http::h1(b.addr()), Http::h1(c.addr()));

    let mut a_uid = String::new();
    for (label, protobuf, sse) in [("sse", false, true), ("http_stream protobuf", true, false)] {
        let t = token(&a, "emu", &[]);
        let mut conn = if sse {
            streams::sse(&Http::h1(a.addr()), &t).await
        } else {
            streams::http_stream(&Http::h1(a.addr()), protobuf, &t).await
        };
        a_uid = conn.connect.node.clone();
        // Subscribe through B, the second channel through C.
        conn.emulate_via(via_b.clone());
        conn.subscribe("chat:one", None).await;
        conn.emulate_via(via_c.clone());
        conn.subscribe("chat:two", None).await;
        api(&b).publish("chat:one", json!({"n": 1})).await;
        api(&c).publish("chat:two", json!({"n": 2})).await;
        let got = conn.events.pubs_any(2, WAIT).await;
        let got: Vec<(&str, &Value)> = got.iter().map(|p| (p.channel.as_str(), &p.data)).collect();
        assert_eq!(
            got,
            [
                ("chat:one", &json!({"n": 1})),
                ("chat:two", &json!({"n": 2}))
            ],
            "{label}"
        );

        // Client publications posted alternately to B and C, each answered before the
        // next is sent, reach the session in the order posted.
        for n in 0..10 {
            conn.emulate_via(if n % 2 == 0 { &via_b } else { &via_c }.clone());
            let publish = json!({"publish": {"channel": "chat:one", "data": {"k": n}}});
            conn.send(publish).await;
        }
        let (mut ks, mut replies) = (Vec::new(), 0);
        while ks.len() < 10 || replies < 10 {
            match conn.events.expect("publications and replies", WAIT).await {
                Event::Pub(p) if p.channel == "chat:one" => ks.push(p.data["k"].as_i64().unwrap()),
                Event::Reply { error: None, .. } => replies += 1,
                Event::Other(_) => {}
                other => panic!("{label}: {other:?} after {ks:?} and {replies} replies"),
            }
        }
        assert_eq!(ks, (0..10).collect::<Vec<_>>(), "{label}");

        // Unsubscribe through C: nothing more on chat:one; chat:two still delivers.
        match conn
            .call(json!({"unsubscribe": {"channel": "chat:one"}}))
            .await
        {
            Event::Reply { error: None, .. } => {}
            other => panic!("{label}: unsubscribe: {other:?}"),
        }
        api(&a).publish("chat:one", json!({"n": 3})).await;
        api(&b).publish("chat:two", json!({"n": 4})).await;
        let got = conn.events.pubs_any(1, WAIT).await;
        assert_eq!(
            (got[0].channel.as_str(), &got[0].data),
            ("chat:two", &json!({"n": 4})),
            "{label}"
        );
        no_publications(&mut conn, Duration::from_millis(300)).await;
    }

    // A session that exists nowhere: 204 whichever node is asked, as Centrifugo answers
    // for a live node without that session; a node that does not exist: 404 everywhere.
    assert!(!a_uid.is_empty(), "A's uid from its connect reply");
    for to in [&a, &b, &c] {
        for protobuf in [false, true] {
            assert_eq!(
                post_emulation(to, &a_uid, "no-such-session", protobuf).await,
                StatusCode::NO_CONTENT,
                "unknown session on A, posted to {}",
                to.base_url()
            );
            assert_eq!(
                post_emulation(to, "no-such-node", "no-such-session", protobuf).await,
                StatusCode::NOT_FOUND,
                "unknown node, posted to {}",
                to.base_url()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ended_answers_204_through_every_node() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    see_each_other(&[&a, &b, &c]).await;
    let conn = streams::http_stream(&Http::h1(a.addr()), false, &token(&a, "emu", &[])).await;
    let (session, a_uid) = (conn.connect.session.clone(), conn.connect.node.clone());
    for to in [&b, &c, &a] {
        assert_eq!(
            post_emulation(to, &a_uid, &session, false).await,
            StatusCode::OK,
            "live session, posted to {}",
            to.base_url()
        );
    }
    drop(conn);
    let deadline = tokio::time::Instant::now() + WAIT;
    while post_emulation(&a, &a_uid, &session, false).await != StatusCode::NO_CONTENT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never ended on A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for to in [&b, &c] {
        assert_eq!(
            post_emulation(to, &a_uid, &session, false).await,
            StatusCode::NO_CONTENT,
            "ended session, posted to {}",
            to.base_url()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_to_another_node_recovers_exactly_what_it_missed() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    let channel = "chat:hops";
    let publish = |h: &Herald, n: i64| {
        let api = api(h);
        async move { api.publish(channel, json!({"n": n})).await }
    };

    // On A: subscribed from the start of the stream, gets 1..=3 (published through B).
    let mut alice = connected(&a, "alice").await;
    let sub = alice.subscribe_cmd(cmd::recover(channel, 0, "")).await;
    let epoch = sub.epoch.clone();
    for n in 1..=3 {
        publish(&b, n).await;
    }
    for n in 1..=3 {
        let p = alice.expect_pub(channel).await;
        assert_eq!(
            (p.offset, payload_json(&p.data)["n"].clone()),
            (n, json!(n))
        );
    }
    drop(alice);

    // Away: 4..=6 through C and A. Back on B: exactly 4..=6, then live 7 through C.
    for (h, n) in [(&c, 4), (&a, 5), (&c, 6)] {
        publish(h, n).await;
    }
    let mut alice = connected(&b, "alice").await;
    let sub = alice.subscribe_cmd(cmd::recover(channel, 3, &epoch)).await;
    assert!(sub.recovered, "recovered on B: {sub:?}");
    let got: Vec<(u64, Value)> = sub
        .publications
        .iter()
        .map(|p| (p.offset, payload_json(&p.data)["n"].clone()))
        .collect();
    assert_eq!(got, [(4, json!(4)), (5, json!(5)), (6, json!(6))]);
    publish(&c, 7).await;
    let p = alice.expect_pub(channel).await;
    assert_eq!(p.offset, 7);
    drop(alice);

    // Away again: 8 and 9 through B. Back on C over uni_http_stream (no SDK, the position
    // in the connect request): exactly 8 and 9, then live 10 through A.
    publish(&b, 8).await;
    publish(&b, 9).await;
    let position = Position {
        offset: 7,
        epoch: epoch.clone(),
    };
    let uni = UniConnect::new(&token(&c, "alice", &[channel])).sub(channel, Some(&position));
    let mut conn = streams::uni_http_stream(&Http::h1(c.addr()), &uni).await;
    let sub = conn.sub(channel).clone();
    assert!(sub.recovered, "recovered on C: {sub:?}");
    let got: Vec<(u64, Value)> = sub
        .publications
        .iter()
        .map(|p| (p.offset, p.data["n"].clone()))
        .collect();
    assert_eq!(got, [(8, json!(8)), (9, json!(9))]);
    publish(&a, 10).await;
    let live = conn.events.pubs(channel, 1, WAIT).await;
    assert_eq!((live[0].offset, &live[0].data), (10, &json!({"n": 10})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_the_clients_of_all_three_nodes() {
    let redis = RedisServer::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    let channel = "chat:presence";
    let mut alice = connected(&a, "alice").await;
    alice.subscribe(channel).await;
    let mut bob = connected(&b, "bob").await;
    bob.subscribe(channel).await;
    // Carol on C over SSE emulation, subscribing through A.
    let mut carol = streams::sse(&Http::h1(c.addr()), &token(&c, "carol", &[])).await;
    carol.emulate_via(Http::h1(a.addr()));
    carol.subscribe(channel, None).await;

    // Alice, on A, sees carol join on C.
    alice
        .push_where("carol's join", |p| {
            p.channel == channel
                && p.join
                    .as_ref()
                    .is_some_and(|j| j.info.as_ref().is_some_and(|i| i.user == "carol"))
        })
        .await;
    for h in [&a, &b, &c] {
        let r = api(h).ok("presence", json!({"channel": channel})).await;
        let mut users: Vec<&str> = r["presence"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c["user"].as_str().unwrap())
            .collect();
        users.sort_unstable();
        assert_eq!(
            users,
            ["alice", "bob", "carol"],
            "presence through {}",
            h.base_url()
        );
        let stats = api(h)
            .ok("presence_stats", json!({"channel": channel}))
            .await;
        assert_eq!(stats, json!({"num_clients": 3, "num_users": 3}));
    }
    // A client's own presence call, from B, lists all three too.
    let reply = bob.call_ok(cmd::presence(channel)).await;
    let mut users: Vec<String> = reply
        .presence
        .expect("presence result")
        .presence
        .values()
        .map(|i| i.user.clone())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob", "carol"]);
}
