//! The proxy hooks after connect (refresh, subscribe, publish, sub_refresh, rpc) against a
//! real HTTP backend on loopback, in Centrifugo v6's wire shapes: each hook allows,
//! refuses with the backend's code, or disconnects; the publish hook replaces the data
//! subscribers receive; RPC returns the backend's result; a backend that is down or slow
//! gives the documented temporary error (100) within the timeout. Over WebSocket, the
//! SSE emulation transport and uni_sse; forwarded headers included. Named proxies are
//! selected per namespace.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use herald::protocol::Encoding;
use herald::protocol::proto::{self, Command};
use serde_json::{Value, json};
use support::streams::{self, Event, Http, UniConnect};
use support::{Client, TestServer, cmd, now_secs};

/// A backend whose answer, delay and status are set per hook; it records what it saw.
#[derive(Default)]
struct Backend {
    answers: Mutex<HashMap<String, Value>>,
    delays: Mutex<HashMap<String, Duration>>,
    seen: Mutex<Vec<(String, HeaderMap, Value)>>,
}

impl Backend {
    fn answer(&self, hook: &str, v: Value) {
        self.answers.lock().unwrap().insert(hook.into(), v);
    }

    fn delay(&self, hook: &str, d: Duration) {
        self.delays.lock().unwrap().insert(hook.into(), d);
    }

    /// What the backend saw for `hook`, in order.
    fn seen(&self, hook: &str) -> Vec<(HeaderMap, Value)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(h, _, _)| h == hook)
            .map(|(_, h, b)| (h.clone(), b.clone()))
            .collect()
    }
}

async fn hook(
    State(b): State<Arc<Backend>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (axum::http::StatusCode, String) {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    b.seen.lock().unwrap().push((name.clone(), headers, body));
    let delay = b.delays.lock().unwrap().get(&name).copied();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let answer = b.answers.lock().unwrap().get(&name).cloned();
    match answer {
        Some(a) => (axum::http::StatusCode::OK, a.to_string()),
        None => (axum::http::StatusCode::NOT_FOUND, String::new()),
    }
}

async fn backend() -> (Arc<Backend>, SocketAddr) {
    let b = Arc::new(Backend::default());
    let app = axum::Router::new()
        .route("/hooks/{name}", post(hook))
        .with_state(b.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (b, addr)
}

fn endpoint(addr: SocketAddr, hook: &str) -> Value {
    json!({"endpoint": format!("http://{addr}/hooks/{hook}"), "timeout": "400ms",
           "http_headers": ["Cookie"], "emulated_headers": ["Authorization"]})
}

/// Herald with every hook on `addr`: namespace `room` proxies subscribe, publish and
/// sub_refresh; RPC without a namespace goes to `rpc`, namespace `other:` to the named
/// proxy `other-rpc` at `other`.
async fn herald(addr: SocketAddr, other: SocketAddr, extra: Value) -> TestServer {
    let mut config = json!({
        "client": {"proxy": {"refresh": {"enabled": true,
            "endpoint": format!("http://{addr}/hooks/refresh"), "timeout": "400ms"}}},
        "channel": {
            "proxy": {
                "subscribe": endpoint(addr, "subscribe"),
                "publish": endpoint(addr, "publish"),
                "sub_refresh": endpoint(addr, "sub_refresh")
            },
            "namespaces": [{"name": "room", "presence": true, "history_size": 10,
                "history_ttl": "60s", "subscribe_proxy_enabled": true,
                "publish_proxy_enabled": true, "sub_refresh_proxy_enabled": true}]
        },
        "rpc": {
            "proxy": endpoint(addr, "rpc"),
            "without_namespace": {"proxy_enabled": true},
            "namespaces": [{"name": "other", "proxy_enabled": true, "proxy_name": "other-rpc"}]
        },
        "proxies": [{"name": "other-rpc", "endpoint": format!("http://{other}/hooks/rpc"),
            "timeout": "400ms"}]
    });
    support::merge(&mut config, extra);
    TestServer::start(config).await
}

/// A WebSocket client connected as `user` with a cookie on its upgrade request and an
/// emulated Authorization header.
async fn ws_client(server: &TestServer, user: &str) -> Client {
    let mut c =
        Client::open_at_with_headers(server.addr, Encoding::Json, None, &[("cookie", "sid=42")])
            .await;
    let mut connect = cmd::connect(&server.token(user));
    if let Some(req) = connect.connect.as_mut() {
        req.headers = [("Authorization".to_string(), "Bearer t".to_string())].into();
    }
    c.call_ok(connect).await;
    c
}

fn subscribe_with_data(channel: &str, data: &Value) -> Command {
    cmd::subscribe_with(proto::SubscribeRequest {
        channel: channel.into(),
        data: support::json_bytes(data),
        ..Default::default()
    })
}

fn rpc(method: &str, data: &Value) -> Command {
    Command {
        rpc: Some(proto::RpcRequest {
            method: method.into(),
            data: support::json_bytes(data),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn subscribe_hook_allows_with_info_and_data_refuses_and_disconnects() {
    let (b, addr) = backend().await;
    let server = herald(addr, addr, json!({})).await;
    b.answer(
        "subscribe",
        json!({"result": {"info": {"seat": 7}, "data": {"topic": "rust"}}}),
    );
    let mut c = ws_client(&server, "alice").await;
    let reply = c
        .call_ok(subscribe_with_data("room:1", &json!({"want": "in"})))
        .await;
    let result = reply.subscribe.unwrap();
    assert_eq!(
        support::payload_json(&result.data),
        json!({"topic": "rust"})
    );

    // The backend saw Centrifugo's subscribe request and the forwarded headers.
    let (headers, body) = b.seen("subscribe").remove(0);
    assert_eq!(body["channel"], "room:1");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["data"], json!({"want": "in"}));
    assert_eq!(headers["cookie"], "sid=42");
    assert_eq!(headers["authorization"], "Bearer t");

    // The channel info the backend gave is the subscriber's, in presence.
    let presence = server
        .api
        .ok("presence", json!({"channel": "room:1"}))
        .await;
    let infos: Vec<&Value> = presence["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| &i["chan_info"])
        .collect();
    assert_eq!(infos, [&json!({"seat": 7})]);

    // Refused: the backend's code reaches the client, which stays connected.
    b.answer(
        "subscribe",
        json!({"error": {"code": 1403, "message": "not a member"}}),
    );
    let reply = c.call(cmd::subscribe("room:2")).await;
    let e = reply.error.unwrap();
    assert_eq!((e.code, e.message.as_str()), (1403, "not a member"));
    c.call_ok(cmd::ping()).await;

    // A disconnect closes the connection with the backend's code.
    b.answer(
        "subscribe",
        json!({"disconnect": {"code": 4503, "reason": "banned"}}),
    );
    let mut subscribe = cmd::subscribe("room:3");
    subscribe.id = c.new_id();
    c.send(subscribe).await;
    assert_eq!(c.expect_close_code(4503).await, "banned");
}

#[tokio::test]
async fn subscribe_and_rpc_hooks_that_are_down_or_slow_give_error_100_in_time() {
    let (b, addr) = backend().await;
    // Another backend that is not listening: connection refused.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = herald(addr, down, json!({})).await;
    let mut c = ws_client(&server, "alice").await;

    b.answer("subscribe", json!({"result": {}}));
    b.delay("subscribe", Duration::from_secs(3));
    let started = Instant::now();
    let reply = c.call(cmd::subscribe("room:slow")).await;
    let e = reply.error.unwrap();
    assert_eq!((e.code, e.temporary), (100, true), "slow subscribe hook");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within the timeout"
    );

    let started = Instant::now();
    assert_eq!(
        c.call_err(rpc("other:ping", &json!({}))).await,
        100,
        "RPC to a backend that is down"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // No answer configured: HTTP 404 from the backend is a failure too.
    assert_eq!(c.call_err(rpc("ping", &json!({}))).await, 100);
    let failed = server
        .api
        .metric("herald_proxy_calls_total{hook=\"rpc\",result=\"failed\"}")
        .await;
    assert_eq!(failed, 2.0);
    c.call_ok(cmd::ping()).await;
}

#[tokio::test]
async fn publish_hook_replaces_data_or_refuses_over_websocket_and_sse() {
    let (b, addr) = backend().await;
    let server = herald(addr, addr, json!({})).await;
    b.answer("subscribe", json!({"result": {}}));
    let mut reader = ws_client(&server, "bob").await;
    reader.subscribe("room:pub").await;

    // WebSocket publisher: the backend stores the message and replaces the data.
    b.answer(
        "publish",
        json!({"result": {"data": {"id": 1, "text": "hi", "by": "alice"}}}),
    );
    let mut writer = ws_client(&server, "alice").await;
    writer
        .call_ok(cmd::publish("room:pub", &json!({"text": "hi"})))
        .await;
    let p = reader.expect_pub("room:pub").await;
    assert_eq!(
        support::payload_json(&p.data),
        json!({"id": 1, "text": "hi", "by": "alice"})
    );
    let (_, body) = b.seen("publish").remove(0);
    assert_eq!(
        (body["channel"].as_str(), body["user"].as_str()),
        (Some("room:pub"), Some("alice"))
    );
    assert_eq!(body["data"], json!({"text": "hi"}));

    // Refused: nothing is published.
    b.answer(
        "publish",
        json!({"error": {"code": 1400, "message": "too long"}}),
    );
    assert_eq!(
        writer
            .call_err(cmd::publish("room:pub", &json!({"text": "x"})))
            .await,
        1400
    );
    reader.expect_no_push(Duration::from_millis(300)).await;

    // Over the SSE emulation transport (commands through POST /emulation).
    let http = Http::h1(server.addr);
    let mut sse = streams::sse(&http, &server.token("carol")).await;
    match sse
        .call(json!({"publish": {"channel": "room:pub", "data": {"text": "sse"}}}))
        .await
    {
        Event::Reply { error, .. } => assert_eq!(error.map(|e| e.0), Some(1400)),
        other => panic!("a publish reply, got {other:?}"),
    }
    b.answer("publish", json!({"result": {}}));
    match sse
        .call(json!({"publish": {"channel": "room:pub", "data": {"text": "sse"}}}))
        .await
    {
        Event::Reply { error: None, .. } => {}
        other => panic!("a publish reply, got {other:?}"),
    }
    let p = reader.expect_pub("room:pub").await;
    assert_eq!(support::payload_json(&p.data), json!({"text": "sse"}));
    let (_, body) = b.seen("publish").pop().unwrap();
    assert_eq!(body["transport"], "sse");
}

#[tokio::test]
async fn rpc_hook_answers_and_refuses_and_named_proxies_are_selected() {
    let (b, addr) = backend().await;
    let (other, other_addr) = backend().await;
    let server = herald(addr, other_addr, json!({})).await;
    let mut c = ws_client(&server, "alice").await;

    b.answer("rpc", json!({"result": {"data": {"price": 42}}}));
    other.answer("rpc", json!({"result": {"data": {"from": "other"}}}));
    let reply = c.call_ok(rpc("getPrice", &json!({"id": 12}))).await;
    assert_eq!(
        support::payload_json(&reply.rpc.unwrap().data),
        json!({"price": 42})
    );
    let (_, body) = b.seen("rpc").remove(0);
    assert_eq!(body["method"], "getPrice");
    assert_eq!(body["data"], json!({"id": 12}));
    assert_eq!(body["user"], "alice");

    let reply = c.call_ok(rpc("other:hello", &json!({}))).await;
    assert_eq!(
        support::payload_json(&reply.rpc.unwrap().data),
        json!({"from": "other"})
    );
    assert_eq!(other.seen("rpc").len(), 1, "the named proxy got it");
    assert_eq!(b.seen("rpc").len(), 1, "the default did not");

    b.answer(
        "rpc",
        json!({"error": {"code": 1404, "message": "unknown method"}}),
    );
    assert_eq!(c.call_err(rpc("nope", &json!({}))).await, 1404);
    // A namespace that does not exist: not available, as without an RPC proxy.
    assert_eq!(c.call_err(rpc("missing:x", &json!({}))).await, 108);
}

#[tokio::test]
async fn refresh_hook_prolongs_or_expires_the_connection() {
    let (b, addr) = backend().await;
    let server = herald(addr, addr, json!({})).await;
    // Prolonged: the client is not asked to refresh, and stays past its token's expiry.
    b.answer(
        "refresh",
        json!({"result": {"expire_at": now_secs() + 3600, "info": {"v": 2}}}),
    );
    let mut c = server.open(Encoding::Json).await;
    let result = c
        .connect(&server.token_with(json!({"sub": "alice", "exp": now_secs() + 1})))
        .await;
    assert!(!result.expires, "the server refreshes, not the client");
    // uni_sse too: refresh works for unidirectional transports.
    let http = Http::h1(server.addr);
    let token = server.token_with(json!({"sub": "dan", "exp": now_secs() + 1}));
    let _uni = streams::uni_sse(&http, &UniConnect::new(&token)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    c.call_ok(cmd::ping()).await;
    let seen = b.seen("refresh");
    let transports: Vec<&str> = seen
        .iter()
        .map(|(_, body)| body["transport"].as_str().unwrap())
        .collect();
    assert!(
        transports.contains(&"websocket") && transports.contains(&"uni_sse"),
        "{transports:?}"
    );
    assert!(seen.iter().any(|(_, body)| body["user"] == "alice"));

    // Expired: the connection ends with 3005.
    b.answer("refresh", json!({"result": {"expired": true}}));
    let mut c = server.open(Encoding::Json).await;
    c.connect(&server.token_with(json!({"sub": "bob", "exp": now_secs() + 1})))
        .await;
    c.expect_close_code(3005).await;
}

#[tokio::test]
async fn sub_refresh_hook_prolongs_or_ends_an_expiring_subscription() {
    let (b, addr) = backend().await;
    let server = herald(addr, addr, json!({})).await;
    b.answer(
        "subscribe",
        json!({"result": {"expire_at": now_secs() + 1}}),
    );
    b.answer(
        "sub_refresh",
        json!({"result": {"expire_at": now_secs() + 3600}}),
    );
    let mut c = ws_client(&server, "alice").await;
    let result = c.subscribe("room:exp").await;
    assert!(!result.expires, "the server refreshes the subscription");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    server
        .api
        .publish("room:exp", json!({"still": "here"}))
        .await;
    let p = c.expect_pub("room:exp").await;
    assert_eq!(support::payload_json(&p.data), json!({"still": "here"}));
    let (_, body) = b.seen("sub_refresh").remove(0);
    assert_eq!(
        (body["channel"].as_str(), body["user"].as_str()),
        (Some("room:exp"), Some("alice"))
    );

    b.answer("sub_refresh", json!({"result": {"expired": true}}));
    let mut c = ws_client(&server, "bob").await;
    c.subscribe("room:exp2").await;
    c.expect_close_code(3006).await;
}

#[tokio::test]
async fn a_namespace_naming_a_proxy_that_does_not_exist_is_refused() {
    let mut config = herald::config::Config::default();
    config.channel.without_namespace.subscribe_proxy_enabled = true;
    let e = config.validate().expect_err("no endpoint").to_string();
    assert!(
        e.contains("channel.without_namespace.subscribe_proxy_enabled")
            && e.contains("channel.proxy.subscribe.endpoint"),
        "{e}"
    );
    config.channel.without_namespace.subscribe_proxy_name = "nope".into();
    let e = config.validate().expect_err("no such proxy").to_string();
    assert!(e.contains("no proxy named \"nope\""), "{e}");
    config.channel.without_namespace = Default::default();
    config.rpc.without_namespace.proxy_enabled = true;
    let e = config.validate().expect_err("no rpc endpoint").to_string();
    assert!(e.contains("rpc.without_namespace.proxy_enabled"), "{e}");
}

#[tokio::test]
async fn connection_meta_from_the_token_goes_to_proxies_that_include_it() {
    let (b, addr) = backend().await;
    let server = herald(
        addr,
        addr,
        json!({"channel": {"proxy": {"subscribe": {"include_connection_meta": true}}}}),
    )
    .await;
    b.answer("subscribe", json!({"result": {}}));
    b.answer("publish", json!({"result": {}}));
    let mut c = server.open(Encoding::Json).await;
    c.connect(&server.token_with(json!({"sub": "alice", "meta": {"plan": "gold"}})))
        .await;
    c.subscribe("room:meta").await;
    c.call_ok(cmd::publish("room:meta", &json!({"x": 1}))).await;
    assert_eq!(b.seen("subscribe")[0].1["meta"], json!({"plan": "gold"}));
    assert!(
        b.seen("publish")[0].1.get("meta").is_none(),
        "not for a proxy without include_connection_meta"
    );
}
