//! One channel, a client on every transport: 100 publications through the HTTP API reach
//! every client, all of them, in order, with the same offsets and data as the API reported.
//!
//! Two runs, since one listener is either plain or TLS:
//! - plain: WebSocket JSON and Protobuf, http_stream JSON and Protobuf, sse emulation,
//!   uni_websocket, uni_sse, uni_http_stream over HTTP/1.1 and over h2c, and curl (`-N` over
//!   HTTP/1.1 on uni_http_stream, `--http2-prior-knowledge` on uni_sse);
//! - TLS: the same transports over TLS, streaming ones over HTTP/2 (ALPN h2), uni_sse over
//!   both HTTP/2 and HTTP/1.1, and curl `--http2` on uni_sse.
//!
//! On both runs, gRPC too: `CentrifugoUniStream/Consume` and `HeraldStream/Connect` with
//! tonic clients (h2c, or ALPN h2 over TLS), and gRPC-Web `Consume` over HTTP/1.1 with
//! hand-made `application/grpc-web+proto` frames.
//!
//! Adding a client is one function `fn(Ctx) -> BoxFut<Conn>` in one of the lists below: it
//! connects and ends up subscribed to `ctx.channel` (bidirectional transports subscribe;
//! unidirectional ones name the channel in the token's `channels` claim).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::streams::{self, BoxFut, Conn, Http, HttpVersion, Position, TlsFiles, UniConnect};
use support::{API_KEY, TestServer};

const N: usize = 100;
const CHANNEL: &str = "cross:room";

fn config() -> Value {
    json!({
        "uni_grpc": {"enabled": true},
        "channel": {"namespaces": [{
            "name": "cross", "history_size": 200, "history_ttl": "300s",
            "force_recovery": true, "allow_subscribe_for_client": true
        }]}
    })
}

/// What a client constructor gets.
#[derive(Clone)]
pub struct Ctx {
    pub addr: SocketAddr,
    pub channel: String,
    /// A token for a bidirectional client.
    pub token: String,
    /// A token whose `channels` claim holds the channel (unidirectional clients).
    pub uni_token: String,
    /// The test certificate, on the TLS run.
    pub tls: Option<Arc<TlsFiles>>,
}

impl Ctx {
    /// HTTP/1.1, plain or TLS as the run is.
    fn h1(&self) -> Http {
        match &self.tls {
            None => Http::h1(self.addr),
            Some(t) => Http::tls(self.addr, HttpVersion::H1, t),
        }
    }

    /// HTTP/2: h2c on the plain run, ALPN h2 on the TLS run.
    fn h2(&self) -> Http {
        match &self.tls {
            None => Http::h2c(self.addr),
            Some(t) => Http::tls(self.addr, HttpVersion::H2, t),
        }
    }

    fn uni(&self) -> UniConnect {
        UniConnect::new(&self.uni_token)
    }
}

type Open = fn(Ctx) -> BoxFut<'static, Conn>;

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

fn ws_json(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move {
        let c = streams::websocket(&ctx.h1(), false, &ctx.token).await;
        subscribed(c, &ctx.channel).await
    })
}

fn ws_protobuf(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move {
        let c = streams::websocket(&ctx.h1(), true, &ctx.token).await;
        subscribed(c, &ctx.channel).await
    })
}

fn http_stream_json(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move {
        let http = if ctx.tls.is_some() {
            ctx.h2()
        } else {
            ctx.h1()
        };
        let c = streams::http_stream(&http, false, &ctx.token).await;
        subscribed(c, &ctx.channel).await
    })
}

fn http_stream_protobuf(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move {
        let http = if ctx.tls.is_some() {
            ctx.h2()
        } else {
            ctx.h1()
        };
        let c = streams::http_stream(&http, true, &ctx.token).await;
        subscribed(c, &ctx.channel).await
    })
}

fn sse_emulation(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move {
        let http = if ctx.tls.is_some() {
            ctx.h2()
        } else {
            ctx.h1()
        };
        let c = streams::sse(&http, &ctx.token).await;
        subscribed(c, &ctx.channel).await
    })
}

fn sse_emulation_post(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move {
        let c = streams::sse_post(&ctx.h1(), &ctx.token).await;
        subscribed(c, &ctx.channel).await
    })
}

fn uni_websocket(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move { streams::uni_websocket(&ctx.h1(), &ctx.uni()).await })
}

fn uni_sse_h1(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move { streams::uni_sse(&ctx.h1(), &ctx.uni()).await })
}

fn uni_sse_h2(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move { streams::uni_sse(&ctx.h2(), &ctx.uni()).await })
}

fn uni_http_stream_h1(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move { streams::uni_http_stream(&ctx.h1(), &ctx.uni()).await })
}

fn uni_http_stream_h2(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move { streams::uni_http_stream(&ctx.h2(), &ctx.uni()).await })
}

fn curl_uni_http_stream_h1(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move {
        streams::curl_uni_http_stream(&ctx.h1(), &ctx.uni(), ctx.tls.as_deref()).await
    })
}

fn curl_uni_http_stream_h2(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move {
        streams::curl_uni_http_stream(&ctx.h2(), &ctx.uni(), ctx.tls.as_deref()).await
    })
}

fn curl_uni_sse_h1(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move { streams::curl_uni_sse(&ctx.h1(), &ctx.uni(), ctx.tls.as_deref()).await })
}

fn curl_uni_sse_h2(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move { streams::curl_uni_sse(&ctx.h2(), &ctx.uni(), ctx.tls.as_deref()).await })
}

fn grpc_consume(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move { streams::grpc_consume(&ctx.h2(), &ctx.uni()).await })
}

fn grpc_stream(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move {
        let c = streams::grpc_stream(&ctx.h2(), &ctx.token).await;
        subscribed(c, &ctx.channel).await
    })
}

fn grpc_web_consume_h1(ctx: Ctx) -> BoxFut<'static, Conn> {
    Box::pin(async move { streams::grpc_web_consume(&ctx.h1(), &ctx.uni()).await })
}

/// Clients of the plain run.
fn plain_clients() -> Vec<Open> {
    vec![
        ws_json,
        ws_protobuf,
        http_stream_json,
        http_stream_protobuf,
        sse_emulation,
        sse_emulation_post,
        uni_websocket,
        uni_sse_h1,
        uni_http_stream_h1,
        uni_http_stream_h2,
        curl_uni_http_stream_h1,
        curl_uni_http_stream_h2,
        curl_uni_sse_h1,
        curl_uni_sse_h2,
        grpc_consume,
        grpc_stream,
        grpc_web_consume_h1,
    ]
}

/// Clients of the TLS run.
fn tls_clients() -> Vec<Open> {
    vec![
        ws_json,
        ws_protobuf,
        http_stream_json,
        http_stream_protobuf,
        sse_emulation,
        uni_websocket,
        uni_sse_h2,
        uni_sse_h1,
        uni_http_stream_h2,
        curl_uni_sse_h2,
        grpc_consume,
        grpc_stream,
        grpc_web_consume_h1,
    ]
}

async fn every_client_gets_every_publication(tls: Option<TlsFiles>, clients: Vec<Open>) {
    let mut cfg = config();
    if let Some(t) = &tls {
        support::merge(&mut cfg, t.server_config());
    }
    let server = TestServer::start(cfg).await;
    let tls = tls.map(Arc::new);
    let ctx = Ctx {
        addr: server.addr,
        channel: CHANNEL.to_string(),
        token: server.token("cross-user"),
        uni_token: server.token_with(json!({"sub": "cross-uni", "channels": [CHANNEL]})),
        tls: tls.clone(),
    };
    let api = ctx.h1();

    let mut conns = Vec::new();
    for open in clients {
        conns.push(open(ctx.clone()).await);
    }
    for c in &conns {
        if c.connect.subs.is_empty() {
            continue; // bidirectional: checked by `subscribed`
        }
        let sub = c.sub(CHANNEL);
        assert!(
            sub.recoverable && sub.positioned,
            "[{}] server-side subscription: {sub:?}",
            c.label()
        );
    }

    let mut sent: Vec<(Position, Value)> = Vec::with_capacity(N);
    for i in 0..N {
        let data = json!({"i": i, "text": format!("message {i}"), "nested": {"ok": true}});
        let pos = api.publish(API_KEY, CHANNEL, data.clone()).await;
        if let Some((prev, _)) = sent.last() {
            assert_eq!(pos.offset, prev.offset + 1, "API offsets are consecutive");
            assert_eq!(pos.epoch, prev.epoch, "one epoch");
        }
        sent.push((pos, data));
    }

    // Payloads that stress the framings: line breaks inside the raw JSON the API got (an
    // SSE or NDJSON line must not break), SSE-looking text and unusual characters inside
    // strings, and one large enough to span many chunks, HTTP/2 flow-control windows and
    // multi-byte length prefixes.
    let awkward_raw = [
        "{\n  \"lines\": [1,\r\n 2],\r  \"end\": true\n}".to_string(),
        r#"{"text": "data: not an event\n\nid: 7\r\n: comment", "u": "\u2028\u2029 é 🚀 \u0000"}"#
            .to_string(),
        json!({"big": "x".repeat(300_000), "tail": "end"}).to_string(),
    ];
    for raw in &awkward_raw {
        let body = format!(r#"{{"channel": "{CHANNEL}", "data": {raw}}}"#);
        let req = api.request(
            http::Method::POST,
            "/api/publish",
            &[("content-type", "application/json"), ("x-api-key", API_KEY)],
            body,
        );
        let (status, _, text) = api.fetch(req).await;
        assert_eq!(status, 200, "publish {raw:.80}: {text}");
        let result: Value = serde_json::from_str(&text).expect("API JSON");
        let pos = Position {
            offset: result["result"]["offset"].as_u64().expect("offset"),
            epoch: result["result"]["epoch"].as_str().unwrap_or("").to_string(),
        };
        let data: Value = serde_json::from_str(raw).expect("test payloads are JSON");
        sent.push((pos, data));
    }

    for c in &mut conns {
        let got = c
            .events
            .pubs(CHANNEL, sent.len(), Duration::from_secs(15))
            .await;
        let label = c.label().to_string();
        for (i, (p, (pos, data))) in got.iter().zip(&sent).enumerate() {
            assert_eq!(p.offset, pos.offset, "[{label}] offset of publication {i}");
            assert!(
                &p.data == data,
                "[{label}] data of publication {i}: got {:.200}, sent {:.200}",
                p.data.to_string(),
                data.to_string()
            );
        }
        c.events.expect_quiet(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plain_transport_gets_every_publication_in_order() {
    assert!(
        streams::curl_has_http2(),
        "curl with HTTP2 support is needed (`curl --version` lists no HTTP2)"
    );
    every_client_gets_every_publication(None, plain_clients()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_over_tls_gets_every_publication_in_order() {
    every_client_gets_every_publication(Some(TlsFiles::generate()), tls_clients()).await;
}

/// The emulation transports take several commands at once: in the request that opens the
/// stream (JSON lines, length-prefixed Protobuf, SSE `cf_connect` lines) and in one
/// `POST /emulation`; every command gets its reply, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulation_transports_take_batched_commands() {
    let server = TestServer::start(config()).await;
    let http = Http::h1(server.addr);
    let token = server.token("batch");
    for (n, transport) in ["http_stream JSON", "http_stream Protobuf", "sse"]
        .into_iter()
        .enumerate()
    {
        let ch = |i: usize| format!("cross:batch-{n}-{i}");
        let first = [
            streams::connect_command(&token),
            json!({"id": 10, "subscribe": {"channel": ch(0)}}),
        ];
        let protobuf = transport.ends_with("Protobuf");
        let stream = if transport == "sse" {
            let lines: Vec<String> = first.iter().map(Value::to_string).collect();
            streams::sse_raw(&http, &lines.join("\n")).await
        } else if protobuf {
            let body: Vec<u8> = first
                .iter()
                .flat_map(streams::command_to_protobuf)
                .collect();
            streams::http_stream_raw(&http, true, body).await
        } else {
            let lines: Vec<String> = first.iter().map(Value::to_string).collect();
            streams::http_stream_raw(&http, false, lines.join("\n")).await
        };
        let stream = stream.unwrap_or_else(|(s, t)| panic!("{transport}: {s} {t}"));
        let commander = streams::Commander::Emulation {
            http: http.clone(),
            session: String::new(),
            node: String::new(),
            protobuf,
        };
        let mut c = Conn::after_connect(stream, commander).await;
        match c.events.expect("subscribe reply", support::WAIT).await {
            streams::Event::Subscribed(10, _) => {}
            other => panic!("{transport}: expected the reply to 10, got {other:?}"),
        }

        let later = [
            json!({"id": 11, "subscribe": {"channel": ch(1)}}),
            json!({"id": 12, "subscribe": {"channel": ch(2)}}),
            json!({"id": 13, "presence_stats": {"channel": ch(1)}}),
        ];
        let ct = if protobuf {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let body = streams::emulation_body(&c.connect.session, &c.connect.node, &later, protobuf);
        let (status, text) = http.post("/emulation", ct, body).await;
        assert_eq!(status, 200, "{transport}: {text}");
        let ids: Vec<u32> = [
            c.events.expect("reply", support::WAIT).await,
            c.events.expect("reply", support::WAIT).await,
            c.events.expect("reply", support::WAIT).await,
        ]
        .iter()
        .map(streams::Event::reply_id)
        .collect();
        assert_eq!(
            ids,
            vec![11, 12, 13],
            "{transport}: one reply each, in order"
        );

        for i in 0..3 {
            let pos = http.publish(API_KEY, &ch(i), json!({"i": i})).await;
            let p = c.events.pubs(&ch(i), 1, support::WAIT).await;
            assert_eq!(p[0].offset, pos.offset, "{transport}");
        }
    }
}
