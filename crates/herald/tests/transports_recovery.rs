//! Recovery on every transport: a client drops its connection, publications are made while
//! it is away, and it comes back with its last position and gets exactly the missed ones,
//! in order, none twice, then live ones again.
//!
//! How each comes back with its position:
//! - bidirectional (WebSocket JSON/Protobuf, http_stream JSON/Protobuf, sse emulation,
//!   gRPC `HeraldStream/Connect` over h2c): subscribe with `recover`, `offset`, `epoch`;
//! - uni_websocket, uni_http_stream, uni_sse, gRPC `CentrifugoUniStream/Consume` (tonic,
//!   h2c): the ConnectRequest's
//!   `subs: {channel: {recover, offset, epoch}}`, the channel being in the token's
//!   `channels` claim;
//! - uni_sse, as a browser's EventSource does: `Last-Event-ID` with the id of the last event
//!   seen, or the `last_event_id` query parameter.
//!
//! Also: a uni_sse resume beyond the history says `recovered: false`, and the id of a
//! uni_sse connection with two channels resumes both.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::streams::{self, Conn, Http, Position, Pub, UniConnect};
use support::{API_KEY, TestServer};

const MISSED: u64 = 5;

fn config() -> Value {
    json!({
        "uni_grpc": {"enabled": true},
        "channel": {"namespaces": [
            {"name": "rec", "history_size": 200, "history_ttl": "300s",
             "force_recovery": true, "allow_subscribe_for_client": true},
            {"name": "race", "history_size": 2000, "history_ttl": "300s",
             "force_recovery": true, "allow_subscribe_for_client": true},
            {"name": "tiny", "history_size": 3, "history_ttl": "300s",
             "force_recovery": true, "allow_subscribe_for_client": true}
        ]}
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    WsJson,
    WsProtobuf,
    HttpStreamJson,
    HttpStreamProtobuf,
    Sse,
    UniWebsocket,
    UniHttpStream,
    /// uni_sse coming back with `subs` in the connect request.
    UniSseSubs,
    /// uni_sse coming back with the `Last-Event-ID` header.
    UniSseHeader,
    /// uni_sse coming back with the `last_event_id` query parameter.
    UniSseQuery,
    /// gRPC `CentrifugoUniStream/Consume`, coming back with `subs` in the ConnectRequest.
    GrpcConsume,
    /// gRPC `HeraldStream/Connect`, coming back with a recovering subscribe.
    GrpcStream,
}

/// How a client comes back.
enum Back<'a> {
    Fresh,
    From(&'a Position),
    LastEventId(&'a str),
}

struct Client {
    conn: Conn,
    /// The subscription state the connect or subscribe reply gave.
    sub: streams::SubInfo,
}

async fn open(kind: Kind, server: &TestServer, channel: &str, back: Back<'_>) -> Client {
    let http = Http::h1(server.addr);
    let token = server.token("rec-user");
    let uni_token = server.token_with(json!({"sub": "rec-uni", "channels": [channel]}));
    let since = match back {
        Back::From(p) => Some(p),
        _ => None,
    };
    let bidi = |conn: Conn| async move {
        let mut conn = conn;
        let sub = conn.subscribe(channel, since).await;
        Client { conn, sub }
    };
    let uni = |conn: Conn| {
        let sub = conn.sub(channel).clone();
        Client { conn, sub }
    };
    let mut req = UniConnect::new(&uni_token);
    match back {
        Back::From(p) => req = req.sub(channel, Some(p)),
        Back::LastEventId(id) => {
            req = req.last_event_id(id, kind == Kind::UniSseQuery);
        }
        Back::Fresh => {}
    }
    match kind {
        Kind::WsJson => bidi(streams::websocket(&http, false, &token).await).await,
        Kind::WsProtobuf => bidi(streams::websocket(&http, true, &token).await).await,
        Kind::HttpStreamJson => bidi(streams::http_stream(&http, false, &token).await).await,
        Kind::HttpStreamProtobuf => bidi(streams::http_stream(&http, true, &token).await).await,
        Kind::Sse => bidi(streams::sse(&http, &token).await).await,
        Kind::UniWebsocket => uni(streams::uni_websocket(&http, &req).await),
        Kind::UniHttpStream => uni(streams::uni_http_stream(&http, &req).await),
        Kind::UniSseSubs | Kind::UniSseHeader | Kind::UniSseQuery => {
            uni(streams::uni_sse(&http, &req).await)
        }
        Kind::GrpcConsume => uni(streams::grpc_consume(&Http::h2c(server.addr), &req).await),
        Kind::GrpcStream => bidi(streams::grpc_stream(&Http::h2c(server.addr), &token).await).await,
    }
}

fn data(n: u64) -> Value {
    json!({"n": n})
}

fn ns(pubs: &[Pub]) -> Vec<u64> {
    pubs.iter()
        .map(|p| p.data["n"].as_u64().unwrap_or(u64::MAX))
        .collect()
}

async fn recovers_exactly_the_missed(kind: Kind) {
    let server = TestServer::start(config()).await;
    let api = Http::h1(server.addr);
    let channel = format!("rec:{kind:?}");

    // Before: subscribed, three live publications.
    let mut c = open(kind, &server, &channel, Back::Fresh).await;
    assert!(
        c.sub.recoverable && c.sub.positioned,
        "{kind:?}: {:?}",
        c.sub
    );
    let epoch = c.sub.epoch.clone();
    assert!(!epoch.is_empty(), "{kind:?}: no epoch");
    for n in 1..=3 {
        api.publish(API_KEY, &channel, data(n)).await;
    }
    let live = c.conn.events.pubs(&channel, 3, support::WAIT).await;
    assert_eq!(ns(&live), vec![1, 2, 3], "{kind:?}");
    let offsets: Vec<u64> = live.iter().map(|p| p.offset).collect();
    assert_eq!(
        offsets,
        vec![c.sub.offset + 1, c.sub.offset + 2, c.sub.offset + 3],
        "{kind:?}: offsets continue the subscription's position"
    );
    let last = Position {
        offset: live[2].offset,
        epoch: epoch.clone(),
    };
    let last_id = c.conn.events.last_event_id.clone();
    drop(c);

    // Away: five publications.
    let mut missed = Vec::new();
    for n in 4..4 + MISSED {
        missed.push(api.publish(API_KEY, &channel, data(n)).await);
    }

    // Back with the last position.
    let back = match kind {
        Kind::UniSseHeader | Kind::UniSseQuery => {
            let id = last_id.expect("uni_sse events carry ids");
            assert!(
                id.contains(&channel),
                "{kind:?}: the id names the channel: {id:?}"
            );
            open(kind, &server, &channel, Back::LastEventId(&id)).await
        }
        _ => open(kind, &server, &channel, Back::From(&last)).await,
    };
    let mut c = back;
    assert!(c.sub.recovered, "{kind:?}: recovered: {:?}", c.sub);
    assert_eq!(c.sub.epoch, epoch, "{kind:?}: same epoch");
    let mut got = c.sub.publications.clone();
    let rest = MISSED as usize - got.len().min(MISSED as usize);
    got.extend(c.conn.events.pubs(&channel, rest, support::WAIT).await);
    assert_eq!(
        ns(&got),
        (4..4 + MISSED).collect::<Vec<_>>(),
        "{kind:?}: missed, in order"
    );
    let offsets: Vec<u64> = got.iter().map(|p| p.offset).collect();
    let expected: Vec<u64> = missed.iter().map(|p| p.offset).collect();
    assert_eq!(
        offsets, expected,
        "{kind:?}: offsets of the missed publications"
    );

    // Then live again, with nothing repeated in between.
    let next = api.publish(API_KEY, &channel, data(100)).await;
    let p = c.conn.events.pubs(&channel, 1, support::WAIT).await;
    assert_eq!(
        ns(&p),
        vec![100],
        "{kind:?}: the next publication is the live one"
    );
    assert_eq!(p[0].offset, next.offset, "{kind:?}");
    c.conn.events.expect_quiet(Duration::from_millis(200)).await;

    // And once more from there: the position after a recovery is as good as any.
    let last = Position {
        offset: p[0].offset,
        epoch: epoch.clone(),
    };
    let last_id = c.conn.events.last_event_id.clone();
    drop(c);
    let mut missed = Vec::new();
    for n in 101..=102 {
        missed.push(api.publish(API_KEY, &channel, data(n)).await.offset);
    }
    let mut c = match (kind, &last_id) {
        (Kind::UniSseHeader | Kind::UniSseQuery, Some(id)) => {
            open(kind, &server, &channel, Back::LastEventId(id)).await
        }
        _ => open(kind, &server, &channel, Back::From(&last)).await,
    };
    assert!(c.sub.recovered, "{kind:?}, second time: {:?}", c.sub);
    let mut got = c.sub.publications.clone();
    let rest = 2 - got.len().min(2);
    got.extend(c.conn.events.pubs(&channel, rest, support::WAIT).await);
    assert_eq!(ns(&got), vec![101, 102], "{kind:?}, second time");
    assert_eq!(got.iter().map(|p| p.offset).collect::<Vec<_>>(), missed);
    c.conn.events.expect_quiet(Duration::from_millis(200)).await;
}

macro_rules! recovery_tests {
    ($($name:ident => $kind:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            recovers_exactly_the_missed(Kind::$kind).await
        }
    )+};
}

recovery_tests!(
    websocket_json_recovers => WsJson,
    websocket_protobuf_recovers => WsProtobuf,
    http_stream_json_recovers => HttpStreamJson,
    http_stream_protobuf_recovers => HttpStreamProtobuf,
    sse_emulation_recovers => Sse,
    uni_websocket_recovers_from_connect_subs => UniWebsocket,
    uni_http_stream_recovers_from_connect_subs => UniHttpStream,
    uni_sse_recovers_from_connect_subs => UniSseSubs,
    uni_sse_resumes_from_last_event_id_header => UniSseHeader,
    uni_sse_resumes_from_last_event_id_query_param => UniSseQuery,
    grpc_consume_recovers_from_connect_subs => GrpcConsume,
    grpc_stream_recovers => GrpcStream,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uni_sse_resume_beyond_history_says_not_recovered() {
    let server = TestServer::start(config()).await;
    let http = Http::h1(server.addr);
    let channel = "tiny:gap";
    let token = server.token_with(json!({"sub": "u", "channels": [channel]}));

    let mut c = streams::uni_sse(&http, &UniConnect::new(&token)).await;
    http.publish(API_KEY, channel, data(1)).await;
    c.events.pubs(channel, 1, support::WAIT).await;
    let id = c.events.last_event_id.clone().expect("an event id");
    drop(c);
    for n in 2..=11 {
        http.publish(API_KEY, channel, data(n)).await;
    }

    let mut c = streams::uni_sse(&http, &UniConnect::new(&token).last_event_id(&id, false)).await;
    let sub = c.sub(channel).clone();
    assert!(!sub.recovered, "history holds 3 of the 10 missed: {sub:?}");
    assert!(sub.was_recovering || sub.positioned, "{sub:?}");
    // What history still holds may come (as Centrifugo sends it with `recovered: false`),
    // in order and once, then the stream goes on live.
    let top = http.publish(API_KEY, channel, data(12)).await;
    let mut got = sub.publications.clone();
    while got.last().is_none_or(|p| p.data != data(12)) {
        got.extend(c.events.pubs(channel, 1, support::WAIT).await);
    }
    let expected: Vec<u64> = (13 - got.len() as u64..=12).collect();
    assert_eq!(
        ns(&got),
        expected,
        "a tail of the history, then the live one"
    );
    assert!(got.len() <= 4, "history holds 3: {:?}", ns(&got));
    assert_eq!(got.last().map(|p| p.offset), Some(top.offset));
    c.events.expect_quiet(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uni_sse_id_of_two_channels_resumes_both() {
    let server = TestServer::start(config()).await;
    let http = Http::h1(server.addr);
    let (a, b) = ("rec:two-a", "rec:two-b");
    let token = server.token_with(json!({"sub": "u", "channels": [a, b]}));

    let mut c = streams::uni_sse(&http, &UniConnect::new(&token)).await;
    assert!(c.sub(a).positioned && c.sub(b).positioned);
    http.publish(API_KEY, a, data(1)).await;
    http.publish(API_KEY, b, data(1)).await;
    http.publish(API_KEY, a, data(2)).await;
    let seen = c.events.pubs_any(3, support::WAIT).await;
    assert_eq!(seen.len(), 3);
    let id = c.events.last_event_id.clone().expect("an event id");
    assert!(
        id.contains(a) && id.contains(b),
        "the id holds both positions: {id:?}"
    );
    drop(c);

    let mut missed_a = Vec::new();
    let mut missed_b = Vec::new();
    for n in 3..=5 {
        missed_a.push(http.publish(API_KEY, a, data(n)).await.offset);
    }
    for n in 2..=3 {
        missed_b.push(http.publish(API_KEY, b, data(n)).await.offset);
    }

    let mut c = streams::uni_sse(&http, &UniConnect::new(&token).last_event_id(&id, false)).await;
    assert!(
        c.sub(a).recovered && c.sub(b).recovered,
        "{:?}",
        c.connect.subs
    );
    let mut got = c.sub(a).publications.clone();
    got.extend(c.sub(b).publications.clone());
    let rest = 5 - got.len().min(5);
    got.extend(c.events.pubs_any(rest, support::WAIT).await);
    let on = |ch: &str| -> Vec<Pub> { got.iter().filter(|p| p.channel == ch).cloned().collect() };
    assert_eq!(ns(&on(a)), vec![3, 4, 5], "channel a, in order");
    assert_eq!(ns(&on(b)), vec![2, 3], "channel b, in order");
    assert_eq!(on(a).iter().map(|p| p.offset).collect::<Vec<_>>(), missed_a);
    assert_eq!(on(b).iter().map(|p| p.offset).collect::<Vec<_>>(), missed_b);
    c.events.expect_quiet(Duration::from_millis(200)).await;

    // Its new id resumes both again.
    let id2 = c.events.last_event_id.clone().expect("an event id");
    assert!(id2.contains(a) && id2.contains(b), "{id2:?}");
}

/// Comes back while publications stream in: the recovered ones and the live ones join
/// with no gap and no duplicate.
async fn resume_while_publishing(kind: Kind) {
    const TOTAL: u64 = 300;
    let server = TestServer::start(config()).await;
    let api = Http::h1(server.addr);
    let channel = format!("race:{kind:?}");

    let mut c = open(kind, &server, &channel, Back::Fresh).await;
    let epoch = c.sub.epoch.clone();
    api.publish(API_KEY, &channel, data(0)).await;
    let first = c.conn.events.pubs(&channel, 1, support::WAIT).await;
    let last = Position {
        offset: first[0].offset,
        epoch,
    };
    let last_id = c.conn.events.last_event_id.clone();
    drop(c);

    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publisher = {
        let (api, channel, published) = (api.clone(), channel.clone(), published.clone());
        tokio::spawn(async move {
            for n in 1..=TOTAL {
                api.publish(API_KEY, &channel, data(n)).await;
                published.store(n, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while published.load(std::sync::atomic::Ordering::SeqCst) < 30 {
        assert!(tokio::time::Instant::now() < deadline, "publisher too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut c = match (kind, &last_id) {
        (Kind::UniSseHeader | Kind::UniSseQuery, Some(id)) => {
            open(kind, &server, &channel, Back::LastEventId(id)).await
        }
        _ => open(kind, &server, &channel, Back::From(&last)).await,
    };
    assert!(c.sub.recovered, "{kind:?}: {:?}", c.sub);
    let mut got = c.sub.publications.clone();
    while got.last().is_none_or(|p| p.data != data(TOTAL)) {
        got.extend(
            c.conn
                .events
                .pubs(&channel, 1, Duration::from_secs(15))
                .await,
        );
    }
    tokio::time::timeout(Duration::from_secs(15), publisher)
        .await
        .expect("publisher finishes")
        .expect("publisher");
    let n: Vec<u64> = ns(&got);
    let expected: Vec<u64> = (1..=TOTAL).collect();
    if n != expected {
        let dups: Vec<u64> = n
            .windows(2)
            .filter(|w| w[1] <= w[0])
            .map(|w| w[1])
            .collect();
        let gaps: Vec<u64> = n
            .windows(2)
            .filter(|w| w[1] > w[0] + 1)
            .map(|w| w[0] + 1)
            .collect();
        panic!(
            "{kind:?}: {} publications, first {:?}, out-of-order/duplicates at {dups:?}, gaps after {gaps:?}",
            n.len(),
            n.first()
        );
    }
    let offsets: Vec<u64> = got.iter().map(|p| p.offset).collect();
    let expected: Vec<u64> = (last.offset + 1..=last.offset + TOTAL).collect();
    assert_eq!(offsets, expected, "{kind:?}: offsets");
    c.conn.events.expect_quiet(Duration::from_millis(200)).await;
}

macro_rules! race_tests {
    ($($name:ident => $kind:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            resume_while_publishing(Kind::$kind).await
        }
    )+};
}

race_tests!(
    websocket_protobuf_resumes_while_publishing => WsProtobuf,
    http_stream_resumes_while_publishing => HttpStreamJson,
    sse_emulation_resumes_while_publishing => Sse,
    uni_websocket_resumes_while_publishing => UniWebsocket,
    uni_http_stream_resumes_while_publishing => UniHttpStream,
    uni_sse_subs_resumes_while_publishing => UniSseSubs,
    uni_sse_last_event_id_resumes_while_publishing => UniSseHeader,
);

/// Resumes a uni_sse connection on channels `a` and `b` with the id of its last event,
/// sent as the header or as the query parameter.
async fn resumes_two_channels(a: &str, b: &str, in_query: bool) {
    let server = TestServer::start(config()).await;
    let http = Http::h1(server.addr);
    let token = server.token_with(json!({"sub": "u", "channels": [a, b]}));
    let mut c = streams::uni_sse(&http, &UniConnect::new(&token)).await;
    http.publish(API_KEY, a, data(1)).await;
    http.publish(API_KEY, b, data(1)).await;
    c.events.pubs_any(2, support::WAIT).await;
    let id = c.events.last_event_id.clone().expect("an event id");
    drop(c);
    let missed_a = http.publish(API_KEY, a, data(2)).await;
    let missed_b = http.publish(API_KEY, b, data(2)).await;
    let req = UniConnect::new(&token).last_event_id(&id, in_query);
    let mut c = streams::uni_sse(&http, &req).await;
    assert!(
        c.sub(a).recovered && c.sub(b).recovered,
        "id {id:?} (in query: {in_query}): {:?}",
        c.connect.subs
    );
    let got = c.events.pubs_any(2, support::WAIT).await;
    let mut pairs: Vec<(String, u64)> = got.iter().map(|p| (p.channel.clone(), p.offset)).collect();
    pairs.sort();
    let mut want = vec![
        (a.to_string(), missed_a.offset),
        (b.to_string(), missed_b.offset),
    ];
    want.sort();
    assert_eq!(pairs, want);
    c.events.expect_quiet(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uni_sse_ids_survive_commas_percents_and_colons_in_channel_names() {
    resumes_two_channels("rec:a,b%2C:c", "rec:%%,:,", false).await;
    resumes_two_channels("rec:a,b%2C:c", "rec:%%,:,", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uni_sse_ids_of_non_ascii_channels_resume_from_the_query_param() {
    resumes_two_channels("rec:é", "rec:😀,x", true).await;
}

/// The server writes the id as UTF-8 (the channel name is not escaped), and a browser's
/// EventSource sends it back in `Last-Event-ID` as UTF-8 bytes; the handler reads the
/// header with `HeaderValue::to_str`, which refuses any byte outside visible ASCII, so
/// the whole header is ignored and no channel of the connection is recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uni_sse_ids_of_non_ascii_channels_resume_from_the_header() {
    resumes_two_channels("rec:é", "rec:😀,x", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uni_sse_foreign_or_garbage_last_event_id_starts_fresh() {
    let server = TestServer::start(config()).await;
    let http = Http::h1(server.addr);
    let channel = "rec:foreign";
    let token = server.token_with(json!({"sub": "u", "channels": [channel]}));
    let top = http.publish(API_KEY, channel, data(1)).await;

    // Another epoch: recovery is attempted and fails; the stream goes on from the top.
    let foreign = streams_id(3, "not-this-epoch", channel);
    let mut c = streams::uni_sse(
        &http,
        &UniConnect::new(&token).last_event_id(&foreign, false),
    )
    .await;
    let sub = c.sub(channel).clone();
    assert!(!sub.recovered && sub.was_recovering, "{sub:?}");
    assert_eq!(
        (sub.offset, sub.epoch.as_str()),
        (top.offset, top.epoch.as_str())
    );
    let next = http.publish(API_KEY, channel, data(2)).await;
    assert_eq!(
        c.events.pubs(channel, 1, support::WAIT).await[0].offset,
        next.offset
    );
    drop(c);

    // Not an id at all: a plain connect.
    for garbage in ["garbage", ",,,", "x:y", "1:e"] {
        let mut c = streams::uni_sse(
            &http,
            &UniConnect::new(&token).last_event_id(garbage, false),
        )
        .await;
        let sub = c.sub(channel).clone();
        assert!(
            !sub.was_recovering && sub.positioned,
            "{garbage:?}: {sub:?}"
        );
        let next = http.publish(API_KEY, channel, data(3)).await;
        assert_eq!(
            c.events.pubs(channel, 1, support::WAIT).await[0].offset,
            next.offset,
            "{garbage:?}"
        );
    }
}

/// An SSE id for one position, in Herald's format (`offset:epoch:channel`).
fn streams_id(offset: u64, epoch: &str, channel: &str) -> String {
    format!("{offset}:{epoch}:{channel}")
}
