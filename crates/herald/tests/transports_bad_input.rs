//! Bad input on the HTTP-based transports: malformed connect requests, oversized bodies,
//! bad tokens, bad `/emulation` calls and disabled transports. Each is refused the way the
//! protocol says, and after each the server is healthy and a WebSocket witness keeps
//! receiving.
//!
//! Malformed first commands: the unidirectional transports parse their ConnectRequest up
//! front and answer 400 with a message; the emulation transports (sse, http_stream), like
//! Centrifugo's, start the stream and end it with a `bad request` (3501) disconnect.

mod support;

use std::time::Duration;

use herald::protocol::proto;
use prost::Message as _;
use serde_json::{Value, json};
use support::streams::{self, Event, Http, UniConnect, url_encode};
use support::{TestServer, WAIT, Witness};
use tokio_websockets::Message;

const LIMIT: usize = 1024;

fn config() -> Value {
    json!({
        "channel": {"namespaces": [{
            "name": "bad", "history_size": 10, "history_ttl": "60s",
            "allow_subscribe_for_client": true
        }]},
        "sse": {"max_request_body_size": LIMIT},
        "http_stream": {"max_request_body_size": LIMIT},
        "uni_sse": {"max_request_body_size": LIMIT},
        "uni_http_stream": {"max_request_body_size": LIMIT},
        "emulation": {"max_request_body_size": LIMIT},
    })
}

/// The server answers `/health` and still delivers to the witness.
async fn healthy(server: &TestServer, witness: &mut Witness, after: &str) {
    let (status, body) = Http::h1(server.addr).get("/health").await;
    assert_eq!(status, 200, "GET /health after {after}: {body}");
    witness.check(server).await;
}

async fn setup() -> (TestServer, Witness, Http) {
    let server = TestServer::start(config()).await;
    let witness = Witness::new(&server, "bad:witness").await;
    let http = Http::h1(server.addr);
    (server, witness, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_uni_connect_requests_are_400_with_a_message() {
    let (server, mut w, http) = setup().await;
    let cases: Vec<(&str, http::Method, String, &str)> = vec![
        (
            "uni_sse cf_connect not JSON",
            http::Method::GET,
            format!("/connection/uni_sse?cf_connect={}", url_encode("not json{")),
            "",
        ),
        (
            "uni_sse cf_connect a JSON array",
            http::Method::GET,
            format!("/connection/uni_sse?cf_connect={}", url_encode("[1,2]")),
            "",
        ),
        (
            "uni_sse POST body not JSON",
            http::Method::POST,
            "/connection/uni_sse".into(),
            "not json{",
        ),
        (
            "uni_http_stream body not JSON",
            http::Method::POST,
            "/connection/uni_http_stream".into(),
            "not json{",
        ),
        (
            "uni_http_stream token not a string",
            http::Method::POST,
            "/connection/uni_http_stream".into(),
            r#"{"token": 42}"#,
        ),
    ];
    for (what, method, path, body) in cases {
        let req = http.request(
            method,
            &path,
            &[("content-type", "application/json")],
            body.to_string(),
        );
        let (status, _, text) = http.fetch(req).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(!text.trim().is_empty(), "{what}: 400 without a message");
        healthy(&server, &mut w, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_first_commands_end_emulation_streams_with_bad_request() {
    let (server, mut w, http) = setup().await;

    // sse without cf_connect at all: nothing to start a session with.
    let (status, text) = http.get("/connection/sse").await;
    assert_eq!(status, 400, "sse without cf_connect: {text}");
    assert!(!text.trim().is_empty(), "400 without a message");
    healthy(&server, &mut w, "sse without cf_connect").await;

    let mut sse = streams::sse_raw(&http, "not json{")
        .await
        .unwrap_or_else(|(s, t)| panic!("sse with a malformed cf_connect: {s} {t}"));
    assert_eq!(sse.expect_disconnect(WAIT).await.0, 3501, "sse");
    sse.expect_end(WAIT).await;
    healthy(&server, &mut w, "sse cf_connect not JSON").await;

    let mut hs = streams::http_stream_raw(&http, false, "not json{")
        .await
        .unwrap_or_else(|(s, t)| panic!("http_stream with a malformed body: {s} {t}"));
    assert_eq!(hs.expect_disconnect(WAIT).await.0, 3501, "http_stream JSON");
    hs.expect_end(WAIT).await;
    healthy(&server, &mut w, "http_stream body not JSON").await;

    // A length prefix that runs past the end of the body.
    let mut hp = streams::http_stream_raw(&http, true, vec![0x7f, 0x0a, 0x01])
        .await
        .unwrap_or_else(|(s, t)| panic!("http_stream Protobuf with garbage: {s} {t}"));
    assert_eq!(
        hp.expect_disconnect(WAIT).await.0,
        3501,
        "http_stream Protobuf"
    );
    hp.expect_end(WAIT).await;
    healthy(&server, &mut w, "http_stream Protobuf garbage").await;

    let mut uw = streams::uni_websocket_raw(&http, Message::text("not json{")).await;
    assert_eq!(uw.expect_disconnect(WAIT).await.0, 3501, "uni_websocket");
    healthy(&server, &mut w, "uni_websocket first message not JSON").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_the_limit_are_413() {
    let (server, mut w, http) = setup().await;
    let big = json!({"token": "x".repeat(2 * LIMIT)}).to_string();
    let emulation = json!({"session": "s", "node": "n", "data": "x".repeat(2 * LIMIT)}).to_string();
    let cases = [
        ("/connection/uni_http_stream", "application/json", &big),
        ("/connection/uni_sse", "application/json", &big),
        ("/connection/http_stream", "application/json", &big),
        ("/connection/http_stream", "application/octet-stream", &big),
        ("/connection/sse", "application/json", &big),
        ("/emulation", "application/json", &emulation),
    ];
    for (path, ct, body) in cases {
        let (status, text) = http.post(path, ct, body.clone()).await;
        assert_eq!(
            status,
            413,
            "POST {path} ({ct}) with {} bytes: {text}",
            body.len()
        );
        healthy(&server, &mut w, path).await;
    }

    // Just under the limit is read (and refused for its token, on the stream).
    let under = json!({"token": "x".repeat(LIMIT - 100)}).to_string();
    assert!(under.len() < LIMIT);
    let mut s = streams::uni_http_stream_raw(&http, under)
        .await
        .unwrap_or_else(|(s, t)| panic!("a body under the limit is refused: {s} {t}"));
    assert_eq!(s.expect_disconnect(WAIT).await.0, 3500);
    healthy(&server, &mut w, "a body under the limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_end_every_stream_with_invalid_token() {
    let (server, mut w, http) = setup().await;
    let h2c = Http::h2c(server.addr);
    let bad = "not.a.jwt";
    let forged = support::sign(
        "another-secret-entirely-0123456789abcdef",
        &json!({"sub": "u"}),
    );
    for token in [bad, forged.as_str()] {
        let uni = UniConnect::new(token);
        let mut streams_to_check = vec![
            streams::uni_sse_raw(&http, &uni)
                .await
                .expect("uni_sse stream"),
            streams::uni_http_stream_raw(&http, uni.body())
                .await
                .expect("uni_http_stream stream"),
            streams::uni_http_stream_raw(&h2c, uni.body())
                .await
                .expect("uni_http_stream h2c stream"),
            streams::http_stream_raw(&http, false, streams::connect_command(token).to_string())
                .await
                .expect("http_stream stream"),
            streams::http_stream_raw(
                &http,
                true,
                streams::command_to_protobuf(&streams::connect_command(token)),
            )
            .await
            .expect("http_stream Protobuf stream"),
            streams::sse_raw(&http, &streams::connect_command(token).to_string())
                .await
                .expect("sse stream"),
        ];
        for s in &mut streams_to_check {
            let (code, reason) = s.expect_disconnect(WAIT).await;
            assert_eq!(code, 3500, "[{}] {reason}", s.label);
            s.expect_end(WAIT).await;
            healthy(&server, &mut w, &s.label).await;
        }
        // uni_websocket says it with the close frame.
        let mut uw = streams::uni_websocket_raw(&http, Message::text(uni.body())).await;
        assert_eq!(uw.expect_disconnect(WAIT).await.0, 3500, "uni_websocket");
        healthy(&server, &mut w, "uni_websocket bad token").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulation_requests_for_unknown_nodes_sessions_or_malformed_are_refused() {
    let (server, mut w, http) = setup().await;
    let token = server.token("emu");
    let mut conn = streams::http_stream(&http, false, &token).await;
    let (session, node) = (conn.connect.session.clone(), conn.connect.node.clone());
    assert!(
        !session.is_empty() && !node.is_empty(),
        "{:?}",
        conn.connect
    );
    let ping = [json!({"id": 99, "ping": {}})];

    let body = streams::emulation_body(&session, "no-such-node", &ping, false);
    let (status, text) = http.post("/emulation", "application/json", body).await;
    assert_eq!(status, 404, "unknown node: {text}");
    healthy(&server, &mut w, "unknown node").await;

    let body = streams::emulation_body("no-such-session", &node, &ping, false);
    let (status, text) = http.post("/emulation", "application/json", body).await;
    assert_eq!(status, 204, "unknown session: {text}");
    healthy(&server, &mut w, "unknown session").await;

    let body = streams::emulation_body("no-such-session", &node, &ping, true);
    let (status, text) = http
        .post("/emulation", "application/octet-stream", body)
        .await;
    assert_eq!(status, 204, "unknown session, Protobuf: {text}");

    for (ct, body) in [
        ("application/json", b"not json{".to_vec()),
        (
            "application/json",
            br#"{"session": "s", "node": "n"}"#.to_vec(),
        ),
        ("application/octet-stream", vec![0x0a, 0x7f, 0x01]),
    ] {
        let (status, text) = http.post("/emulation", ct, body.clone()).await;
        assert_eq!(
            status,
            400,
            "malformed ({ct}) {:?}: {text}",
            String::from_utf8_lossy(&body)
        );
        assert!(!text.trim().is_empty(), "400 without a message");
        healthy(&server, &mut w, "malformed emulation request").await;
    }

    // The session those requests named is unharmed: its commands still work, and the
    // ping sent to the wrong node never reached it.
    let sub = conn.subscribe("bad:emu", None).await;
    assert!(!sub.recovered);
    Http::h1(server.addr)
        .publish(support::API_KEY, "bad:emu", json!({"ok": 1}))
        .await;
    let p = conn.events.pubs("bad:emu", 1, WAIT).await;
    assert_eq!(p[0].data, json!({"ok": 1}));
    let unexpected = conn.events.next_non_ping(Duration::from_millis(200)).await;
    assert!(
        !matches!(
            unexpected,
            streams::Next::Event(Event::Reply { id: 99, .. })
        ),
        "a command sent to the wrong node reached the session"
    );

    // A Protobuf emulation request reaches a Protobuf session.
    let mut pconn = streams::http_stream(&http, true, &token).await;
    let sub = pconn.subscribe("bad:emu-pb", None).await;
    assert!(!sub.recoverable);
    let body = proto::EmulationRequest {
        node: pconn.connect.node.clone(),
        session: pconn.connect.session.clone(),
        data: Vec::new().into(),
    }
    .encode_to_vec();
    let (status, _) = http
        .post("/emulation", "application/octet-stream", body)
        .await;
    assert_eq!(status, 200, "an empty batch for a live session");
    healthy(&server, &mut w, "emulation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_transports_are_not_routed() {
    let mut cfg = config();
    support::merge(
        &mut cfg,
        json!({
            "sse": {"enabled": false},
            "http_stream": {"enabled": false},
            "uni_sse": {"enabled": false},
            "uni_http_stream": {"enabled": false},
            "uni_websocket": {"enabled": false},
        }),
    );
    let server = TestServer::start(cfg).await;
    let mut w = Witness::new(&server, "bad:witness").await;
    let http = Http::h1(server.addr);
    let uni = UniConnect::new(&server.token("u"));
    let connect = streams::connect_command(&server.token("u")).to_string();
    let cases: Vec<(http::Method, String, String)> = vec![
        (http::Method::GET, uni.sse_path(), String::new()),
        (http::Method::POST, "/connection/uni_sse".into(), uni.body()),
        (
            http::Method::POST,
            "/connection/uni_http_stream".into(),
            uni.body(),
        ),
        (
            http::Method::GET,
            "/connection/uni_websocket".into(),
            String::new(),
        ),
        (
            http::Method::GET,
            format!("/connection/sse?cf_connect={}", url_encode(&connect)),
            String::new(),
        ),
        (
            http::Method::POST,
            "/connection/http_stream".into(),
            connect.clone(),
        ),
        (
            http::Method::POST,
            "/emulation".into(),
            json!({"session": "s", "node": "n", "data": "{}"}).to_string(),
        ),
    ];
    for (method, path, body) in cases {
        let req = http.request(
            method.clone(),
            &path,
            &[("content-type", "application/json")],
            body,
        );
        let (status, _, text) = http.fetch(req).await;
        assert!(
            status == 404 || status == 405,
            "{method} {path} on a disabled transport: {status} {text}"
        );
        healthy(&server, &mut w, &path).await;
    }
    // The uni_websocket upgrade is refused too.
    let req = http.request(
        http::Method::GET,
        "/connection/uni_websocket",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        "",
    );
    let (status, _, _) = http.fetch(req).await;
    assert!(
        status == 404 || status == 405,
        "uni_websocket upgrade: {status}"
    );
    // The bidirectional WebSocket is always on.
    let mut c = streams::websocket(&http, false, &server.token("u")).await;
    c.subscribe("bad:still", None).await;
    healthy(&server, &mut w, "disabled transports").await;
}

/// With `client.allowed_origins` set, only its origins may connect: a page whose origin
/// equals the `Host` it sent (the shape of a DNS-rebinding attack) is refused on every
/// browser transport; a listed origin still connects, and without a list the same-origin
/// exception still admits a page served by Herald itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_origin_host_is_no_exception_under_an_origin_list() {
    let mut cfg = config();
    support::merge(
        &mut cfg,
        json!({"client": {"allowed_origins": ["https://app.example.com"]}}),
    );
    let listed = TestServer::start(cfg).await;
    let unlisted = TestServer::start(config()).await;
    let http_listed = Http::h1(listed.addr);
    let http_unlisted = Http::h1(unlisted.addr);
    let connect = url_encode("{}");
    let paths = [
        "/connection/websocket".to_string(),
        "/connection/uni_websocket".to_string(),
        format!("/connection/uni_sse?cf_connect={connect}"),
        format!("/connection/sse?cf_connect={connect}"),
    ];
    let status = |http: &Http, path: &str, host: &str, origin: &str| {
        let req = http::Request::builder()
            .method(http::Method::GET)
            .uri(path)
            .header(http::header::HOST, host)
            .header(http::header::ORIGIN, origin)
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let http = http.clone();
        async move {
            let (resp, conn) = http.send(req).await;
            conn.abort();
            resp.status().as_u16()
        }
    };
    for path in &paths {
        let rebinding = status(&http_listed, path, "evil.example", "http://evil.example").await;
        assert_eq!(rebinding, 403, "{path}: rebinding shape under a list");
        let good = status(
            &http_listed,
            path,
            "evil.example",
            "https://app.example.com",
        )
        .await;
        assert_ne!(good, 403, "{path}: a listed origin");
        let own = format!("http://{}", unlisted.addr);
        let same = status(&http_unlisted, path, &unlisted.addr.to_string(), &own).await;
        assert_ne!(same, 403, "{path}: same origin without a list");
    }
    // POST /emulation: a foreign page may not drive a session either.
    let emulate = |origin: &'static str| {
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri("/emulation")
            .header(http::header::ORIGIN, origin)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"session":"s","node":"","data":"{}"}"#,
            )))
            .expect("request");
        let http = http_listed.clone();
        async move {
            let (resp, conn) = http.send(req).await;
            conn.abort();
            resp.status().as_u16()
        }
    };
    assert_eq!(emulate("http://evil.example").await, 403, "/emulation");
    assert_ne!(
        emulate("https://app.example.com").await,
        403,
        "/emulation, listed"
    );
}
