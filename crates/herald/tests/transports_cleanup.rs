//! A client that goes away is forgotten promptly on every transport but gRPC: once its
//! connection closes (no ping in between: the ping interval is the default 25 s), it leaves
//! presence, the node's client count, and (emulation) the session registry, so that
//! `/emulation` for it answers 204.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::streams::{self, Conn, Http, UniConnect};
use support::{API_KEY, TestServer, WAIT};

const CHANNEL: &str = "gone:room";

fn config() -> Value {
    json!({
        "channel": {"namespaces": [{
            "name": "gone", "presence": true, "allow_subscribe_for_client": true
        }]}
    })
}

async fn counts(api: &Http) -> (u64, u64) {
    let stats = api
        .api(API_KEY, "presence_stats", json!({"channel": CHANNEL}))
        .await;
    let info = api.api(API_KEY, "info", json!({})).await;
    (
        stats["num_clients"].as_u64().unwrap_or(0),
        info["nodes"][0]["num_clients"].as_u64().unwrap_or(0),
    )
}

/// Polls until presence and the node's count are back to `want`, or fails after `within`.
async fn settles(api: &Http, want: (u64, u64), within: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let now = counts(api).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: (presence, clients) still {now:?} after {within:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    WsJson,
    WsProtobuf,
    HttpStream(bool),
    HttpStreamH2,
    Sse,
    UniWebsocket,
    UniSse,
    UniSseH2,
    UniHttpStream,
    UniHttpStreamH2,
    CurlUniSse,
}

async fn open(kind: Kind, server: &TestServer) -> Conn {
    let h1 = Http::h1(server.addr);
    let h2 = Http::h2c(server.addr);
    let token = server.token("gone-user");
    let uni =
        UniConnect::new(&server.token_with(json!({"sub": "gone-uni", "channels": [CHANNEL]})));
    let bidi = async |mut c: Conn| {
        c.subscribe(CHANNEL, None).await;
        c
    };
    match kind {
        Kind::WsJson => bidi(streams::websocket(&h1, false, &token).await).await,
        Kind::WsProtobuf => bidi(streams::websocket(&h1, true, &token).await).await,
        Kind::HttpStream(pb) => bidi(streams::http_stream(&h1, pb, &token).await).await,
        Kind::HttpStreamH2 => bidi(streams::http_stream(&h2, false, &token).await).await,
        Kind::Sse => bidi(streams::sse(&h1, &token).await).await,
        Kind::UniWebsocket => streams::uni_websocket(&h1, &uni).await,
        Kind::UniSse => streams::uni_sse(&h1, &uni).await,
        Kind::UniSseH2 => streams::uni_sse(&h2, &uni).await,
        Kind::UniHttpStream => streams::uni_http_stream(&h1, &uni).await,
        Kind::UniHttpStreamH2 => streams::uni_http_stream(&h2, &uni).await,
        Kind::CurlUniSse => streams::curl_uni_sse(&h1, &uni, None).await,
    }
}

async fn forgotten_after_close(kind: Kind) {
    let server = TestServer::start(config()).await;
    let api = Http::h1(server.addr);
    settles(&api, (0, 0), WAIT, "at start").await;
    let c = open(kind, &server).await;
    settles(&api, (1, 1), WAIT, &format!("{kind:?} connected")).await;
    let (session, node) = (c.connect.session.clone(), c.connect.node.clone());
    drop(c);
    settles(&api, (0, 0), WAIT, &format!("{kind:?} closed")).await;
    if !session.is_empty() {
        let body = streams::emulation_body(&session, &node, &[json!({})], false);
        let (status, text) = api.post("/emulation", "application/json", body).await;
        assert_eq!(
            status, 204,
            "{kind:?}: /emulation for a closed session: {text}"
        );
    }
}

macro_rules! cleanup_tests {
    ($($name:ident => $kind:expr),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            forgotten_after_close($kind).await
        }
    )+};
}

cleanup_tests!(
    websocket_json => Kind::WsJson,
    websocket_protobuf => Kind::WsProtobuf,
    http_stream_json => Kind::HttpStream(false),
    http_stream_protobuf => Kind::HttpStream(true),
    http_stream_h2c => Kind::HttpStreamH2,
    sse_emulation => Kind::Sse,
    uni_websocket => Kind::UniWebsocket,
    uni_sse => Kind::UniSse,
    uni_sse_h2c => Kind::UniSseH2,
    uni_http_stream => Kind::UniHttpStream,
    uni_http_stream_h2c => Kind::UniHttpStreamH2,
    curl_uni_sse => Kind::CurlUniSse,
);
