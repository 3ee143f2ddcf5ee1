//! Request bodies cannot be used to hold the server (issue 9, items 1 and 7): the server
//! API answers a request without the right key from its headers (401) and never buffers
//! its body; a `Content-Length` above a route's limit is answered 413 at once, in the
//! API's JSON error envelope naming the config key of the limit; a body that trickles in
//! is answered 408 at `http_server.request_body_timeout` and its connection closed, on
//! every route that takes a body. The clients write HTTP/1.1 by hand to control every byte.

mod common;
mod support;

use std::time::Duration;

use serde_json::json;
use support::raw::{self, RawResponse};
use support::{API_KEY, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// `http_server.request_body_timeout` of the in-process servers.
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// "At once": the bound on an answer that needs only the request head.
const AT_ONCE: Duration = Duration::from_secs(1);
/// The default `http_api.max_request_body_size` (2 MiB).
const API_LIMIT: u64 = 2 * 1024 * 1024;
/// The default body limit of the client transports' routes.
const TRANSPORT_LIMIT: u64 = 65536;

/// Every client transport route that takes a body, with the config key of its limit.
const TRANSPORT_ROUTES: &[(&str, &str)] = &[
    (
        "/connection/http_stream",
        "http_stream.max_request_body_size",
    ),
    ("/emulation", "emulation.max_request_body_size"),
    (
        "/connection/uni_http_stream",
        "uni_http_stream.max_request_body_size",
    ),
    ("/connection/sse", "sse.max_request_body_size"),
    ("/connection/uni_sse", "uni_sse.max_request_body_size"),
];

/// Console and demo routes that take a body before any session (limited as the API).
const WEB_ROUTES: &[&str] = &["/console/api/login", "/demo/token"];

fn server_config() -> serde_json::Value {
    json!({
        "http_server": {"request_body_timeout": format!("{}s", BODY_TIMEOUT.as_secs())},
        "admin": {"enabled": true, "password": "console-password"},
        "demo": {"enabled": true},
    })
}

/// A `POST path` head declaring `content_length`, with `X-API-Key: key` when given.
fn post_head(path: &str, key: Option<&str>, content_length: u64) -> String {
    let key = key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         {key}Content-Length: {content_length}\r\n\r\n"
    )
}

/// Connects to `addr` and sends `head`; the halves of the connection and when the head
/// was sent.
async fn send_head(
    addr: std::net::SocketAddr,
    head: &str,
) -> (OwnedReadHalf, OwnedWriteHalf, Instant) {
    let mut conn = tokio::time::timeout(AT_ONCE, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    conn.write_all(head.as_bytes()).await.expect("send head");
    let sent = Instant::now();
    let (rd, wr) = conn.into_split();
    (rd, wr, sent)
}

/// `VmRSS`, `VmHWM`... of process `pid`, KiB.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

/// Clients open [`CONNECTIONS`] requests to the server API without the key, each
/// declaring a body just under the default limit and sending all of it but the last few
/// KB (what a client that wants the server to hold buffers would do).
const CONNECTIONS: usize = 100;
const DECLARED: usize = 2_000_000;
const SENT: usize = DECLARED - 4096;
/// The most the server process may grow while those requests come in.
const RSS_GROWTH_LIMIT_KIB: u64 = 20 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_api_bodies_are_refused_from_the_headers_and_never_buffered() {
    let herald = tokio::task::spawn_blocking(|| common::Herald::start(common::default_config()))
        .await
        .expect("start");
    let (pid, addr) = (herald.pid(), herald.addr());
    let (rss_before, hwm_before) = (proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM"));

    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        // Every tenth client presents a wrong key; the others none.
        let key = (i % 10 == 9).then_some("not-the-key");
        clients.push(tokio::spawn(async move {
            let (mut rd, mut wr, sent) =
                send_head(addr, &post_head("/api/publish", key, DECLARED as u64)).await;
            let writer = tokio::spawn(async move {
                let chunk = vec![b' '; 64 * 1024];
                let mut written = 0;
                while written < SENT {
                    let n = (SENT - written).min(chunk.len());
                    if wr.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    written += n;
                }
                // The write half is kept (not shut down) until the test ends.
                (written, wr)
            });
            let answer = raw::read_response(&mut rd, sent + AT_ONCE).await;
            (answer, sent.elapsed(), writer, rd)
        }));
    }
    let mut answers = Vec::new();
    let mut writers = Vec::new();
    let mut keep = Vec::new();
    for c in clients {
        let (answer, elapsed, writer, rd) = c.await.expect("client task");
        answers.push((answer, elapsed));
        writers.push(writer);
        keep.push(rd);
    }
    // Let the writers push what the server takes (bounded), then weigh the server while
    // every connection is still open on this side.
    let mut written = 0;
    let mut write_halves = Vec::new();
    let writers_deadline = Instant::now() + Duration::from_secs(10);
    for w in writers {
        let abort = w.abort_handle();
        match tokio::time::timeout_at(writers_deadline, w).await {
            Ok(Ok((n, wr))) => {
                written += n;
                write_halves.push(wr);
            }
            _ => abort.abort(),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_after, hwm_after) = (proc_status_kib(pid, "VmRSS"), proc_status_kib(pid, "VmHWM"));
    println!(
        "RSS {rss_before} -> {rss_after} KiB, peak {hwm_before} -> {hwm_after} KiB; \
         {written} body bytes written by {CONNECTIONS} clients"
    );

    let mut failures = Vec::new();
    for (i, (answer, elapsed)) in answers.iter().enumerate() {
        match answer {
            Ok(r) if r.status == 401 && *elapsed <= AT_ONCE => {
                assert_eq!(r.error_envelope().0, 401, "client {i}: {r:?}");
            }
            Ok(r) => failures.push(format!("client {i}: HTTP {} after {elapsed:?}", r.status)),
            Err(e) => failures.push(format!("client {i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "every keyless request must be answered 401 within {AT_ONCE:?} of its head; {} were not:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_LIMIT_KIB,
        "the server's RSS grew from {rss_before} to {rss_after} KiB: unauthenticated bodies were buffered"
    );
    assert!(
        hwm_after.saturating_sub(hwm_before) < RSS_GROWTH_LIMIT_KIB,
        "the server's peak RSS grew from {hwm_before} to {hwm_after} KiB: unauthenticated bodies were buffered"
    );
    drop((keep, write_halves, herald));
}

/// Asserts `r` is `status` with the JSON error envelope whose message contains every
/// one of `words`.
fn assert_error(r: &RawResponse, status: u16, words: &[&str], what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    let (code, message) = r.error_envelope();
    assert_eq!(code, u64::from(status), "{what}: error.code");
    for w in words {
        assert!(
            message.contains(w),
            "{what}: the message {message:?} must name {w:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_lengths_over_a_limit_are_answered_413_json_at_once() {
    let server = TestServer::start(server_config()).await;
    let api_limit = API_LIMIT.to_string();
    let transport_limit = TRANSPORT_LIMIT.to_string();
    // (path, key, declared length, expected status, words of the message)
    let mut cases = vec![(
        "/api/publish",
        Some(API_KEY),
        API_LIMIT + 1,
        413,
        vec!["http_api.max_request_body_size", api_limit.as_str()],
    )];
    for (path, key) in TRANSPORT_ROUTES {
        cases.push((
            path,
            None,
            TRANSPORT_LIMIT + 1,
            413,
            vec![key, transport_limit.as_str()],
        ));
    }
    for path in WEB_ROUTES {
        cases.push((
            path,
            None,
            API_LIMIT + 1,
            413,
            vec!["http_api.max_request_body_size", api_limit.as_str()],
        ));
    }
    // Without the key, the key is what is wrong, whatever the body.
    cases.push(("/api/publish", None, API_LIMIT + 1, 401, vec!["API key"]));

    let addr = server.addr;
    let runs = cases
        .into_iter()
        .map(|(path, key, len, status, words)| async move {
            // No byte of the body is sent: the answer must come from the head alone.
            let (mut rd, _wr, sent) = send_head(addr, &post_head(path, key, len)).await;
            let what = format!("POST {path} (key {key:?}) declaring {len} bytes");
            let r = raw::read_response(&mut rd, sent + AT_ONCE)
                .await
                .unwrap_or_else(|e| panic!("{what}: no answer within {AT_ONCE:?}: {e}"));
            assert_error(&r, status, &words, &what);
        });
    futures_util::future::join_all(runs).await;

    // The console's data routes check the session from the headers first, as the API
    // checks its key.
    for path in ["/console/api/publish", "/console/api/disconnect"] {
        let (mut rd, _wr, sent) = send_head(addr, &post_head(path, None, API_LIMIT)).await;
        let r = raw::read_response(&mut rd, sent + AT_ONCE)
            .await
            .unwrap_or_else(|e| panic!("POST {path} without a session: no answer at once: {e}"));
        assert_eq!(r.status, 401, "POST {path} without a session: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_body_limit_is_configurable_and_also_cuts_bodies_without_a_length() {
    const LIMIT: usize = 1000;
    let mut cfg = server_config();
    support::merge(
        &mut cfg,
        json!({"http_api": {"max_request_body_size": LIMIT}}),
    );
    let server = TestServer::start(cfg).await;
    let deadline = || Instant::now() + AT_ONCE;

    // A publication of exactly the limit is taken.
    let short = json!({"channel": "limits", "data": {"pad": ""}}).to_string();
    let body =
        json!({"channel": "limits", "data": {"pad": "x".repeat(LIMIT - short.len())}}).to_string();
    assert_eq!(body.len(), LIMIT);
    let head = post_head("/api/publish", Some(API_KEY), LIMIT as u64);
    let (mut rd, mut wr, _) = send_head(server.addr, &head).await;
    wr.write_all(body.as_bytes()).await.unwrap();
    let r = raw::read_response(&mut rd, deadline()).await.unwrap();
    assert_eq!(r.status, 200, "a body of exactly the limit: {r:?}");

    // One byte more, declared: 413 before the body.
    let head = post_head("/api/publish", Some(API_KEY), LIMIT as u64 + 1);
    let (mut rd, _wr, _) = send_head(server.addr, &head).await;
    let r = raw::read_response(&mut rd, deadline()).await.unwrap();
    let limit = LIMIT.to_string();
    let words = ["http_api.max_request_body_size", limit.as_str()];
    assert_error(&r, 413, &words, "declared limit + 1");

    // A chunked body (no Content-Length) that grows past the limit: 413 as well.
    let head =
        "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                X-API-Key: KEY\r\nTransfer-Encoding: chunked\r\n\r\n"
            .replace("KEY", API_KEY);
    let (mut rd, mut wr, _) = send_head(server.addr, &head).await;
    let chunk = vec![b' '; LIMIT + 500];
    let mut body = format!("{:x}\r\n", chunk.len()).into_bytes();
    body.extend_from_slice(&chunk);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let _ = wr.write_all(&body).await;
    let r = raw::read_response(&mut rd, deadline()).await.unwrap();
    assert_error(&r, 413, &words, "a chunked body over the limit");
}

/// Sends a body one byte per 500 ms until `stop` fires; returns the write half unclosed.
fn trickle(
    mut wr: OwnedWriteHalf,
    stop: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<OwnedWriteHalf> {
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if wr.write_all(b" ").await.is_err() {
                        break;
                    }
                }
            }
        }
        wr
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_answered_408_and_their_connections_closed() {
    let server = TestServer::start(server_config()).await;
    let mut routes = vec![("/api/publish", Some(API_KEY))];
    routes.extend(TRANSPORT_ROUTES.iter().map(|(path, _)| (*path, None)));
    routes.extend(WEB_ROUTES.iter().map(|path| (*path, None)));
    let addr = server.addr;
    let runs = routes.into_iter().map(|(path, key)| async move {
        let what = format!("POST {path} with a body of one byte per 500 ms");
        let (mut rd, wr, sent) = send_head(addr, &post_head(path, key, 100)).await;
        let (stop, stopped) = oneshot::channel();
        let writer = trickle(wr, stopped);
        let r = raw::read_response(&mut rd, sent + BODY_TIMEOUT + Duration::from_millis(1500))
            .await
            .unwrap_or_else(|e| panic!("{what}: no answer by the body timeout: {e}"));
        let elapsed = sent.elapsed();
        let _ = stop.send(());
        let _wr = writer.await.expect("writer");
        assert_error(&r, 408, &["http_server.request_body_timeout"], &what);
        assert!(
            elapsed >= BODY_TIMEOUT - Duration::from_millis(200),
            "{what}: answered after {elapsed:?}, before the body timeout {BODY_TIMEOUT:?}"
        );
        // The server closes the connection; this side keeps its write half open.
        let end = raw::read_to_close(&mut rd, Instant::now() + AT_ONCE).await;
        assert!(
            end.closed_at.is_some(),
            "{what}: the connection must be closed after the 408; got {:?}",
            String::from_utf8_lossy(&end.bytes)
        );
    });
    futures_util::future::join_all(runs).await;
}
