//! Pings on every transport but gRPC, with a short `client.ping_interval`: unidirectional
//! clients get pings and owe nothing back; emulation clients (http_stream JSON and
//! Protobuf, sse) that answer through `POST /emulation` stay connected, and those that do
//! not are disconnected with `no pong` (3012); the WebSocket client answers in band.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::streams::{self, Conn, Event, Http, Next, UniConnect};
use support::{API_KEY, TestServer, WAIT};

const PING_MS: u64 = 1000;
const PONG_MS: u64 = 500;

fn config() -> Value {
    json!({
        "client": {"ping_interval": format!("{PING_MS}ms"), "pong_timeout": format!("{PONG_MS}ms")},
        "channel": {"namespaces": [{"name": "p", "allow_subscribe_for_client": true}]}
    })
}

/// Reads for `dur`, answering pings when `answer`; returns the number of pings seen.
/// Anything but pings and publications fails the test.
async fn live_for(c: &mut Conn, dur: Duration, answer: bool) -> usize {
    let deadline = tokio::time::Instant::now() + dur;
    let mut pings = 0;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return pings;
        }
        match c.events.next(left).await {
            Next::Event(Event::Ping) => {
                pings += 1;
                if answer {
                    c.pong().await;
                }
            }
            Next::Event(e) => panic!("[{}] unexpected {e:?}", c.label()),
            Next::Timeout => return pings,
            Next::Ended(why) => panic!("[{}] ended ({why}) after {pings} pings", c.label()),
        }
    }
}

async fn clients(server: &TestServer, channel: &str) -> Vec<Conn> {
    let http = Http::h1(server.addr);
    let h2c = Http::h2c(server.addr);
    let token = server.token("pinged");
    let uni = UniConnect::new(&server.token_with(json!({"sub": "u", "channels": [channel]})));
    let mut out = vec![
        streams::uni_sse(&http, &uni).await,
        streams::uni_http_stream(&http, &uni).await,
        streams::uni_http_stream(&h2c, &uni).await,
        streams::uni_websocket(&http, &uni).await,
    ];
    for mut c in [
        streams::websocket(&http, false, &token).await,
        streams::websocket(&http, true, &token).await,
        streams::http_stream(&http, false, &token).await,
        streams::http_stream(&http, true, &token).await,
        streams::http_stream(&h2c, false, &token).await,
        streams::sse(&http, &token).await,
    ] {
        c.subscribe(channel, None).await;
        out.push(c);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_answer_pings_stay_connected() {
    let server = TestServer::start(config()).await;
    let channel = "p:alive";
    let mut conns = clients(&server, channel).await;
    let span = Duration::from_millis(PING_MS * 3 + PONG_MS);
    // Read all of them at once: pings on each must be answered in time.
    let counts = futures_util::future::join_all(
        conns
            .iter_mut()
            .map(|c| async move { live_for(c, span, true).await }),
    )
    .await;
    for (c, n) in conns.iter().zip(&counts) {
        // The WebSocket task answers pings before handing them on, so all see them.
        assert!(*n >= 2, "[{}] {n} pings in {span:?}", c.label());
    }
    let pos = Http::h1(server.addr)
        .publish(API_KEY, channel, json!({"still": "here"}))
        .await;
    for c in &mut conns {
        let p = c.events.pubs(channel, 1, WAIT).await;
        assert_eq!(p[0].offset, pos.offset, "[{}]", c.label());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulation_clients_that_never_answer_are_disconnected_with_no_pong() {
    let server = TestServer::start(config()).await;
    let http = Http::h1(server.addr);
    let token = server.token("silent");
    for mut c in [
        streams::http_stream(&http, false, &token).await,
        streams::http_stream(&http, true, &token).await,
        streams::sse(&http, &token).await,
    ] {
        let limit = Duration::from_millis(PING_MS + PONG_MS) + WAIT;
        let (code, reason) = c.events.expect_disconnect(limit).await;
        assert_eq!(code, 3012, "[{}] {reason}", c.label());
        c.events.expect_end(WAIT).await;
    }
}
