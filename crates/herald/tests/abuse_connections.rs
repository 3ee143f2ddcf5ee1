//! Connections cannot be held by saying nothing (issue 9, items 2, 3 and 6): a connection
//! that sends nothing, one byte, or part of the HTTP/2 preface is closed at
//! `http_server.handshake_timeout` from accept, on the plain port and after a TLS
//! handshake; well-behaved HTTP/1.1 keep-alive and HTTP/2 clients outlive that deadline; a
//! full descriptor table frees itself and the "accept failed" warning is rate-limited; the
//! listen backlog is the system maximum unless `http_server.listen_backlog` says otherwise,
//! on every listener; after ALPN only the selected protocol is spoken.

mod common;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use support::raw::{self, Ending};
use support::streams::{Http, HttpVersion, TlsFiles};
use support::{TestServer, WAIT};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// `http_server.handshake_timeout` of the test servers.
const HANDSHAKE: Duration = Duration::from_secs(1);
/// How late after the deadline a close may come.
const SLACK: Duration = Duration::from_secs(2);
/// The HTTP/2 client connection preface (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// 23 of its 24 bytes.
const PREFACE_23: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r";
/// What a connection sends first, and a name for it.
type Opening = (&'static str, &'static [u8]);
/// The first bytes of connections that never show their protocol in full.
const NOTHING: Opening = ("nothing", b"");
const P: Opening = ("\"P\"", b"P");
const G: Opening = ("\"G\"", b"G");
const MOST_OF_THE_PREFACE: Opening = ("23 bytes of the HTTP/2 preface", PREFACE_23);
const PREFACE_ALONE: Opening = ("the HTTP/2 preface and no frame", PREFACE);
const HALF_A_HEAD: Opening = (
    "half an HTTP/1.1 request head",
    b"GET /health HTTP/1.1\r\nHost: x\r\n",
);
/// A TLS record header announcing a 512-byte handshake message, and 4 bytes of it.
const HALF_A_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];

fn config() -> Value {
    json!({"http_server": {"handshake_timeout": format!("{}ms", HANDSHAKE.as_millis())}})
}

async fn tls_server() -> (TestServer, TlsFiles) {
    let files = TlsFiles::generate();
    let mut cfg = config();
    support::merge(&mut cfg, files.server_config());
    (TestServer::start(cfg).await, files)
}

async fn tcp(addr: SocketAddr) -> TcpStream {
    let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let _ = s.set_nodelay(true);
    s
}

/// A TLS connection trusting `files`, offering `alpn` (none when empty); asserts the
/// server selected the offered protocol.
async fn tls(
    addr: SocketAddr,
    files: &TlsFiles,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let offered: &[&[u8]] = if alpn.is_empty() { &[] } else { &[alpn] };
    let connector = tokio_rustls::TlsConnector::from(files.client_config(offered));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let s = tokio::time::timeout(WAIT, connector.connect(name, tcp(addr).await))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let chosen = s.get_ref().1.alpn_protocol().unwrap_or_default();
    assert_eq!(chosen, alpn, "the server selects the offered ALPN protocol");
    s
}

/// Sends `bytes`, then reads until the server closes; asserts the close came at the
/// handshake deadline counted from `opened`: not before half of it, and by it + [`SLACK`].
async fn assert_closed_at_the_deadline<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
    opened: Instant,
    what: &str,
) {
    io.write_all(bytes).await.expect("send");
    io.flush().await.expect("flush");
    let Ending { closed_at, bytes } = raw::read_to_close(io, opened + HANDSHAKE + SLACK).await;
    let after = closed_at.map(|t| t - opened);
    println!(
        "{what}: closed after {after:?}, server sent {} bytes",
        bytes.len()
    );
    let after = after.unwrap_or_else(|| {
        panic!(
            "{what}: still open {:?} after connecting (handshake_timeout {HANDSHAKE:?})",
            HANDSHAKE + SLACK
        )
    });
    assert!(
        after >= HANDSHAKE / 2,
        "{what}: closed after {after:?}, long before the handshake deadline {HANDSHAKE:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_partial_openings_are_closed_at_the_handshake_deadline() {
    let server = TestServer::start(config()).await;
    let openings = [
        NOTHING,
        P,
        G,
        MOST_OF_THE_PREFACE,
        PREFACE_ALONE,
        HALF_A_HEAD,
    ];
    let runs = openings.into_iter().map(|(what, bytes)| async move {
        let opened = Instant::now();
        let mut conn = tcp(server.addr).await;
        assert_closed_at_the_deadline(&mut conn, bytes, opened, &format!("plain: {what}")).await;
    });
    futures_util::future::join_all(runs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_connections_are_closed_at_the_handshake_deadline() {
    let (server, files) = tls_server().await;
    let (addr, files) = (server.addr, &files);
    // After a completed handshake, per ALPN protocol: what may still be undecided there.
    let mut cases: Vec<(&[u8], Opening)> = Vec::new();
    for opening in [
        NOTHING,
        P,
        G,
        MOST_OF_THE_PREFACE,
        PREFACE_ALONE,
        HALF_A_HEAD,
    ] {
        cases.push((b"", opening));
    }
    for opening in [NOTHING, P, MOST_OF_THE_PREFACE, PREFACE_ALONE] {
        cases.push((b"h2", opening));
    }
    for opening in [NOTHING, G, HALF_A_HEAD] {
        cases.push((b"http/1.1", opening));
    }
    let after_handshake = cases.into_iter().map(|(alpn, (what, bytes))| async move {
        let what = format!("TLS (ALPN {:?}): {what}", String::from_utf8_lossy(alpn));
        let opened = Instant::now();
        let mut conn = tls(addr, files, alpn).await;
        assert_closed_at_the_deadline(&mut conn, bytes, opened, &what).await;
    });
    let before_handshake = [
        ("TLS port: no handshake at all", &[][..]),
        ("TLS port: half a ClientHello", HALF_A_CLIENT_HELLO),
    ]
    .into_iter()
    .map(|(what, bytes)| async move {
        let opened = Instant::now();
        let mut conn = tcp(addr).await;
        assert_closed_at_the_deadline(&mut conn, bytes, opened, what).await;
    });
    tokio::join!(
        futures_util::future::join_all(after_handshake),
        futures_util::future::join_all(before_handshake)
    );
}

/// Three `GET /health` on one HTTP/1.1 connection: a first one within the handshake
/// deadline, the others after it, each within the idle time hyper allows between requests.
async fn keep_alive<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, what: &str) {
    for (i, pause) in [HANDSHAKE / 2, HANDSHAKE * 4 / 5, HANDSHAKE * 4 / 5]
        .into_iter()
        .enumerate()
    {
        tokio::time::sleep(pause).await;
        io.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("send");
        io.flush().await.expect("flush");
        let r = raw::read_response(&mut io, Instant::now() + WAIT)
            .await
            .unwrap_or_else(|e| panic!("{what}: request {i}: {e}"));
        assert_eq!(r.status, 200, "{what}: request {i}: {r:?}");
    }
}

/// `GET /health` on one HTTP/2 connection, again after 1.5 handshake deadlines.
async fn h2_twice(http: Http) {
    let h2 = http.h2_session().await;
    for i in 0..2 {
        if i > 0 {
            tokio::time::sleep(HANDSHAKE * 3 / 2).await;
        }
        let req = http.request(http::Method::GET, "/health", &[], "");
        let (status, body) = h2.fetch(req).await;
        assert_eq!(status, 200, "{}: request {i}: {body}", http.describe());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_behaved_clients_outlive_the_handshake_deadline() {
    let plain = TestServer::start(config()).await;
    let (secure, files) = tls_server().await;
    let tls_h1 = Http::tls(secure.addr, HttpVersion::H1, &files).io().await;
    tokio::join!(
        keep_alive(tcp(plain.addr).await, "HTTP/1.1 keep-alive"),
        keep_alive(tls_h1, "HTTP/1.1 keep-alive over TLS"),
        h2_twice(Http::h2c(plain.addr)),
        h2_twice(Http::tls(secure.addr, HttpVersion::H2, &files)),
    );
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
}

/// Descriptors the server may open beyond those it holds once started.
const ROOM: u64 = 40;
/// Silent connections beyond that room, left waiting in the listen backlog.
const QUEUED: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_descriptor_table_frees_itself_at_the_handshake_deadline() {
    let mut cfg = common::default_config();
    support::merge(&mut cfg, config());
    let herald = tokio::task::spawn_blocking(move || common::Herald::start(cfg))
        .await
        .expect("start");
    let pid = herald.pid();
    // The server raises its soft limit to the hard one at start; lower both under it.
    let limit = open_fds(pid) as u64 + ROOM;
    rlimit::prlimit(
        pid as i32,
        rlimit::Resource::NOFILE,
        Some((limit, limit)),
        None,
    )
    .unwrap_or_else(|e| panic!("prlimit --nofile={limit}:{limit} on the server: {e}"));

    // Silent connections until the table is full and more wait in the backlog.
    let filled_at = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..ROOM as usize + QUEUED {
        silent.push(tcp(herald.addr()).await);
    }
    // Full: accept fails (the server says so in its log).
    let accept_failed = || {
        std::fs::read_to_string(&herald.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("accept failed"))
            .count()
    };
    let full_by = Instant::now() + Duration::from_secs(1);
    while accept_failed() == 0 && Instant::now() < full_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        accept_failed() > 0,
        "the silent connections fill the server's descriptor table (limit {limit}, {} open) \
         and accept fails",
        open_fds(pid)
    );
    // Let accept fail for a while (the old code logged every 50 ms).
    tokio::time::sleep(HANDSHAKE / 2).await;

    // A normal request meanwhile waits in the backlog, and is served once the silent
    // connections are closed at their deadline.
    let mut health = tcp(herald.addr()).await;
    health
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let r = raw::read_response(&mut health, filled_at + HANDSHAKE + SLACK)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "GET /health with a full descriptor table: no answer within {:?} of filling it: {e}",
                HANDSHAKE + SLACK
            )
        });
    assert_eq!(r.status, 200, "{r:?}");
    println!(
        "GET /health answered {:?} after the table was filled",
        filled_at.elapsed()
    );
    for (i, s) in silent.iter_mut().take(ROOM as usize / 2).enumerate() {
        let end = raw::read_to_close(s, Instant::now() + SLACK).await;
        assert!(
            end.closed_at.is_some(),
            "silent connection {i} is closed by its deadline"
        );
    }
    assert_eq!(
        common::http_get_status(herald.port, "/health").expect("GET /health"),
        200
    );

    let warnings = accept_failed();
    assert!(
        warnings <= 3,
        "\"accept failed\" must be rate-limited (at most once per 5 s); {warnings} lines:\n{}",
        herald.log_tail(20)
    );
    drop(silent);
}

/// The backlog of the socket listening on `port` of 127.0.0.1: the Send-Q column of
/// `ss -ltn` (iproute2) for a listening socket.
fn listen_backlog(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH"])
        .output()
        .unwrap_or_else(|e| panic!("run `ss -ltnH` (install iproute2): {e}"));
    assert!(out.status.success(), "ss -ltnH: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let local = format!("127.0.0.1:{port}");
    text.lines()
        .find_map(|line| {
            // State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.get(3) == Some(&local.as_str())).then(|| cols[2].parse().ok())?
        })
        .unwrap_or_else(|| panic!("no listening socket on {local} in `ss -ltnH`:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_backlog_is_the_system_maximum_unless_configured() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read /proc/sys/net/core/somaxconn")
        .trim()
        .parse()
        .expect("somaxconn is a number");
    for (backlog, expected) in [(None, somaxconn), (Some(77), 77)] {
        let (api_port, uni_port) = (common::free_port(), common::free_port());
        let mut cfg = json!({
            "grpc_api": {"enabled": true, "port": api_port, "key": "grpc-key"},
            "uni_grpc": {"enabled": true, "port": uni_port},
        });
        if let Some(b) = backlog {
            support::merge(&mut cfg, json!({"http_server": {"listen_backlog": b}}));
        }
        let server = TestServer::start(cfg).await;
        assert_eq!(
            server.grpc_addrs.len(),
            2,
            "two gRPC listeners of their own"
        );
        for (what, port) in [
            ("the main port", server.addr.port()),
            ("grpc_api.port", api_port),
            ("uni_grpc.port", uni_port),
        ] {
            assert_eq!(
                listen_backlog(port),
                expected,
                "backlog of {what} with http_server.listen_backlog {backlog:?} \
                 (somaxconn {somaxconn})"
            );
        }
    }
}

/// The types of the HTTP/2 frames in `bytes` (as far as they are complete).
fn h2_frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

// hyper-util 0.1.21's `auto::Builder::serve_connection_with_upgrades` ignores
// `http2_only` / `http1_only` and sniffs the first bytes (only `serve_connection` honours
// them). This test found it: ALPN `h2` connections are now served with `serve_connection`,
// and after ALPN `http/1.1` the first-bytes reader refuses the HTTP/2 preface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_alpn_h2_only_http2_is_spoken() {
    let (server, files) = tls_server().await;
    for (what, bytes) in [
        (
            "an HTTP/1.1 request",
            &b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        ),
        (
            "an invalid preface",
            &b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n\0\0\0\x04\0\0\0\0\0"[..],
        ),
    ] {
        let mut conn = tls(server.addr, &files, b"h2").await;
        conn.write_all(bytes).await.expect("send");
        conn.flush().await.expect("flush");
        let end = raw::read_to_close(&mut conn, Instant::now() + WAIT).await;
        let text = String::from_utf8_lossy(&end.bytes);
        let frames = h2_frame_types(&end.bytes);
        println!(
            "ALPN h2, {what}: frame types {frames:?}, closed {}",
            end.closed_at.is_some()
        );
        assert!(
            !text.contains("HTTP/1."),
            "ALPN h2, {what}: answered with HTTP/1.1: {text:?}"
        );
        assert!(
            end.closed_at.is_some(),
            "ALPN h2, {what}: the connection must be closed"
        );
        // HTTP/2 only: the server's SETTINGS (and GOAWAY when h2 sends one), then the close;
        // never an HTTP/1.1 answer.
        assert!(
            !frames.is_empty() || end.bytes.is_empty(),
            "ALPN h2, {what}: not HTTP/2 frames: {text:?}"
        );
    }
    // HTTP/2 itself still works there.
    let (status, body) = Http::tls(server.addr, HttpVersion::H2, &files)
        .get("/health")
        .await;
    assert_eq!(status, 200, "h2 over TLS: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_alpn_http1_only_http1_is_spoken() {
    let (server, files) = tls_server().await;
    // HTTP/1.1 works.
    let mut conn = tls(server.addr, &files, b"http/1.1").await;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send");
    conn.flush().await.expect("flush");
    let r = raw::read_response(&mut conn, Instant::now() + WAIT)
        .await
        .expect("an HTTP/1.1 answer");
    assert_eq!(r.status, 200, "{r:?}");

    // The HTTP/2 preface and a SETTINGS frame are not taken as HTTP/2.
    let mut conn = tls(server.addr, &files, b"http/1.1").await;
    let mut opening = PREFACE.to_vec();
    opening.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    conn.write_all(&opening).await.expect("send");
    conn.flush().await.expect("flush");
    let end = raw::read_to_close(&mut conn, Instant::now() + WAIT).await;
    let text = String::from_utf8_lossy(&end.bytes);
    println!("ALPN http/1.1, the HTTP/2 preface: {text:?}");
    assert!(
        end.bytes.is_empty() || text.starts_with("HTTP/1.1 "),
        "ALPN http/1.1: the HTTP/2 preface must not be answered with HTTP/2 (frame types {:?}): {text:?}",
        h2_frame_types(&end.bytes)
    );
    assert!(
        end.closed_at.is_some(),
        "ALPN http/1.1, the HTTP/2 preface: closed"
    );
}
