//! A client of a streaming HTTP transport that stops reading: it is disconnected as slow
//! once its queue passes `client.max_queue_size`, the others on the channel get every
//! publication in order, and (like the WebSocket writer with `websocket.write_timeout`) the
//! server lets go of its connection instead of keeping a blocked write forever.
//!
//! The slow clients speak raw HTTP/1.1 over a socket with a tiny receive buffer and never
//! read. Whether the server still holds its end is read from `/proc/net/tcp` (Linux; the
//! server runs in this process, so its sockets are visible there).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::streams::{self, Http, UniConnect, url_encode};
use support::{API_KEY, TestServer, WAIT};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

const CHANNEL: &str = "slow:feed";
const PUBLICATIONS: usize = 3000;
const PAD: usize = 4096;

fn config() -> Value {
    json!({
        "client": {"max_queue_size": 65536},
        // Streams blocked on a client that stopped reading are released after this.
        "http_server": {"write_timeout": "1s"},
        "channel": {"namespaces": [{"name": "slow", "allow_subscribe_for_client": true}]}
    })
}

/// A raw HTTP/1.1 request on a socket with a 4 KiB receive buffer, never read.
async fn stalled(server: &TestServer, request: String) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut s = tokio::time::timeout(WAIT, socket.connect(server.addr))
        .await
        .expect("connect in time")
        .expect("connect");
    s.write_all(request.as_bytes())
        .await
        .expect("write request");
    s
}

fn uni_http_stream_request(body: &str) -> String {
    format!(
        "POST /connection/uni_http_stream HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn uni_sse_request(body: &str) -> String {
    format!(
        "GET /connection/uni_sse?cf_connect={} HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n",
        url_encode(body)
    )
}

/// The states (hex, as in /proc/net/tcp: 01 ESTABLISHED) of the server's sockets whose
/// peer is `peer_port`; `None` without /proc/net/tcp.
fn server_socket_states(server_port: u16, peer_port: u16) -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    Some(
        text.lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let (local, remote, state) = (cols.get(1)?, cols.get(2)?, cols.get(3)?);
                (port(local) == Some(server_port) && port(remote) == Some(peer_port))
                    .then(|| state.to_string())
            })
            .collect(),
    )
}

async fn num_clients(api: &Http) -> u64 {
    api.api(API_KEY, "info", json!({})).await["nodes"][0]["num_clients"]
        .as_u64()
        .unwrap_or(0)
}

/// Two stalled clients (uni_http_stream, uni_sse) and a normal one; publishes with the
/// normal one never more than one publication behind. Returns the server and the stalled
/// sockets, after both were dropped from the hub.
async fn slow_clients_are_dropped() -> (TestServer, Vec<TcpStream>) {
    let server = TestServer::start(config()).await;
    let api = Http::h1(server.addr);
    let token = server.token_with(json!({"sub": "u", "channels": [CHANNEL]}));
    let body = UniConnect::new(&token).body();
    let slow = vec![
        stalled(&server, uni_http_stream_request(&body)).await,
        stalled(&server, uni_sse_request(&body)).await,
    ];
    let mut normal = streams::uni_http_stream(&api, &UniConnect::new(&token)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while num_clients(&api).await != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "three clients connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pad = "p".repeat(PAD);
    for i in 0..PUBLICATIONS {
        let pos = api
            .publish(API_KEY, CHANNEL, json!({"i": i, "pad": pad}))
            .await;
        let p = normal.events.pubs(CHANNEL, 1, WAIT).await;
        assert_eq!(p[0].offset, pos.offset, "the normal client is not held up");
    }
    assert_eq!(
        num_clients(&api).await,
        1,
        "both stalled clients were dropped as slow after {PUBLICATIONS} x {PAD} bytes"
    );
    (server, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http_stream_readers_are_dropped_and_others_get_everything() {
    let (server, _slow) = slow_clients_are_dropped().await;
    let (status, _) = Http::h1(server.addr).get("/health").await;
    assert_eq!(status, 200);
}

/// After the slow disconnect the response body still has a write blocked on the full
/// socket; `http_server.write_timeout` bounds it, so the server lets go of the connection
/// and its buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_http_stream_connections_are_released() {
    let (server, slow) = slow_clients_are_dropped().await;
    if server_socket_states(server.addr.port(), 1).is_none() {
        eprintln!("no /proc/net/tcp: cannot see the server's sockets, skipping");
        return;
    }
    // Far more than the WebSocket writer's 1 s write timeout (twice over).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for s in &slow {
        let peer = s.local_addr().expect("local addr").port();
        loop {
            let states = server_socket_states(server.addr.port(), peer).unwrap_or_default();
            if !states.iter().any(|st| st == "01") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server still holds the stalled connection from port {peer} (states {states:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
