//! The TLS listener and HTTP/2: ALPN picks h2 or HTTP/1.1 and both serve health, the API
//! and streams; WebSockets work over TLS; HTTP/2 multiplexes streams and API calls on one
//! connection (TLS and h2c); garbage, plain-text and stalled handshakes are dropped without
//! disturbing anyone else; a long-lived HTTP/1.1 stream outlives the handshake timeout.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::streams::{self, Http, HttpVersion, TlsFiles, UniConnect, Wire};
use support::{API_KEY, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short enough that the stalled-handshake case ends quickly.
const HANDSHAKE_TIMEOUT_MS: u64 = 1000;

fn config() -> Value {
    json!({
        "http_server": {"handshake_timeout": format!("{HANDSHAKE_TIMEOUT_MS}ms")},
        "channel": {"namespaces": [{
            "name": "tls", "history_size": 50, "history_ttl": "300s",
            "force_recovery": true, "allow_subscribe_for_client": true
        }]}
    })
}

async fn tls_server() -> (TestServer, TlsFiles) {
    let files = TlsFiles::generate();
    let mut cfg = config();
    support::merge(&mut cfg, files.server_config());
    (TestServer::start(cfg).await, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http1_over_tls_serve_health_api_and_streams() {
    let (server, files) = tls_server().await;
    let channel = "tls:alpn";
    let token = server.token_with(json!({"sub": "u", "channels": [channel]}));
    for version in [HttpVersion::H2, HttpVersion::H1] {
        // `Http::tls` offers one ALPN protocol and asserts the server picked it; `send`
        // asserts the response's HTTP version.
        let http = Http::tls(server.addr, version, &files);
        let (status, body) = http.get("/health").await;
        assert_eq!(status, 200, "{version:?} health: {body}");

        let mut s = streams::uni_sse(&http, &UniConnect::new(&token)).await;
        let data = json!({"over": http.describe()});
        let pos = http.publish(API_KEY, channel, data.clone()).await;
        assert!(!pos.epoch.is_empty(), "the API answered with a position");
        let p = s.events.pubs(channel, 1, WAIT).await;
        assert_eq!(
            (p[0].offset, &p[0].data),
            (pos.offset, &data),
            "{version:?}"
        );
    }
}

/// A raw TLS client offering `alpn`; returns the protocol the server chose.
async fn negotiated(server: &TestServer, files: &TlsFiles, alpn: &[&[u8]]) -> Option<Vec<u8>> {
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(files.client_config(alpn));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_prefers_h2_and_no_alpn_means_http1() {
    let (server, files) = tls_server().await;
    assert_eq!(
        negotiated(&server, &files, &[b"http/1.1", b"h2"])
            .await
            .as_deref(),
        Some(&b"h2"[..]),
        "the server prefers h2 when both are offered"
    );
    assert_eq!(negotiated(&server, &files, &[]).await, None);

    // No ALPN at all: a plain HTTP/1.1 request over TLS works.
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(files.client_config(&[]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_tls() {
    let (server, files) = tls_server().await;
    let http = Http::tls(server.addr, HttpVersion::H1, &files);
    let channel = "tls:ws";
    let mut bidi = streams::websocket(&http, false, &server.token("u")).await;
    bidi.subscribe(channel, None).await;
    let mut bidi_pb = streams::websocket(&http, true, &server.token("u")).await;
    bidi_pb.subscribe(channel, None).await;
    let token = server.token_with(json!({"sub": "u", "channels": [channel]}));
    let mut uni = streams::uni_websocket(&http, &UniConnect::new(&token)).await;

    let pos = http.publish(API_KEY, channel, json!({"tls": true})).await;
    for c in [&mut bidi, &mut bidi_pb, &mut uni] {
        let p = c.events.pubs(channel, 1, WAIT).await;
        assert_eq!(
            (p[0].offset, &p[0].data),
            (pos.offset, &json!({"tls": true})),
            "[{}]",
            c.label()
        );
    }
}

/// Several streams and API calls share one HTTP/2 connection.
async fn multiplexed(http: Http, server: &TestServer) {
    let channel = format!("tls:mux-{}", http.describe());
    let token = server.token_with(json!({"sub": "u", "channels": [channel]}));
    let session = http.h2_session().await;
    let uni = UniConnect::new(&token);
    let mut streams_on_one_conn = Vec::new();
    for i in 0..5 {
        let req = if i % 2 == 0 {
            http.request(
                http::Method::GET,
                &uni.sse_path(),
                &[("accept", "text/event-stream")],
                "",
            )
        } else {
            http.request(
                http::Method::POST,
                "/connection/uni_http_stream",
                &[("content-type", "application/json")],
                uni.body(),
            )
        };
        let wire = if i % 2 == 0 {
            Wire::UniSse
        } else {
            Wire::UniLines
        };
        let mut s = session
            .open_stream(format!("mux {i}"), req, wire)
            .await
            .unwrap_or_else(|(st, t)| panic!("stream {i}: {st} {t}"));
        s.expect_connect().await;
        streams_on_one_conn.push(s);
    }
    let mut sent = Vec::new();
    for n in 0..20 {
        sent.push(
            session
                .publish(API_KEY, &channel, json!({"n": n}))
                .await
                .offset,
        );
    }
    for s in &mut streams_on_one_conn {
        let got = s.pubs(&channel, 20, WAIT).await;
        assert_eq!(
            got.iter().map(|p| p.offset).collect::<Vec<_>>(),
            sent,
            "[{}]",
            s.label
        );
    }
    // Ending one stream leaves the others and the connection working.
    streams_on_one_conn.remove(0);
    let pos = session
        .publish(API_KEY, &channel, json!({"n": "after"}))
        .await;
    for s in &mut streams_on_one_conn {
        assert_eq!(
            s.pubs(&channel, 1, WAIT).await[0].offset,
            pos.offset,
            "[{}]",
            s.label
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_multiplexes_streams_and_api_calls_on_one_connection() {
    let (server, files) = tls_server().await;
    multiplexed(Http::tls(server.addr, HttpVersion::H2, &files), &server).await;
    let plain = TestServer::start(config()).await;
    multiplexed(Http::h2c(plain.addr), &plain).await;
}

/// Whether the server closes `conn` within `within` (EOF or reset on read).
async fn closed_by_server(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a TLS alert, then the close
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_do_not_disturb_others() {
    let (server, files) = tls_server().await;
    let channel = "tls:calm";
    let token = server.token_with(json!({"sub": "u", "channels": [channel]}));
    let h2 = Http::tls(server.addr, HttpVersion::H2, &files);
    let h1 = Http::tls(server.addr, HttpVersion::H1, &files);
    let mut sse = streams::uni_sse(&h2, &UniConnect::new(&token)).await;
    let mut ws = streams::uni_websocket(&h1, &UniConnect::new(&token)).await;
    let mut n = 0;
    let mut check_others = async |what: &str| {
        n += 1;
        let pos = h2.publish(API_KEY, channel, json!({"n": n})).await;
        for s in [&mut sse.events, &mut ws.events] {
            let p = s.pubs(channel, 1, WAIT).await;
            assert_eq!(p[0].offset, pos.offset, "[{}] after {what}", s.label);
        }
        assert_eq!(h1.get("/health").await.0, 200, "health after {what}");
    };

    // Connections that never finish a handshake, held open meanwhile.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let mut half_hello = TcpStream::connect(server.addr).await.expect("connect");
    // A TLS record header announcing a 512-byte handshake message, and only 4 bytes of it.
    half_hello
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        .await
        .unwrap();
    check_others("20 stalled connections and half a ClientHello").await;

    let mut garbage = TcpStream::connect(server.addr).await.expect("connect");
    garbage.write_all(&[0xde; 300]).await.unwrap();
    assert!(
        closed_by_server(&mut garbage, WAIT).await,
        "garbage instead of a ClientHello is closed"
    );
    check_others("garbage bytes").await;

    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut plain, WAIT).await,
        "plain HTTP on the TLS port is closed"
    );
    check_others("plain HTTP on the TLS port").await;

    // A client that does not trust the certificate gives up mid-handshake.
    let untrusting = {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = tokio::time::timeout(WAIT, untrusting.connect(name, tcp))
        .await
        .expect("handshake ends in time");
    assert!(
        refused.is_err(),
        "an untrusted certificate is refused by the client"
    );
    check_others("an aborted handshake").await;

    // The stalled ones are dropped after the handshake timeout.
    let limit = Duration::from_millis(HANDSHAKE_TIMEOUT_MS) + WAIT;
    assert!(
        closed_by_server(&mut half_hello, limit).await,
        "half a ClientHello is dropped after the handshake timeout"
    );
    for (i, s) in stalled.iter_mut().enumerate() {
        assert!(
            closed_by_server(s, limit).await,
            "stalled connection {i} is dropped after the handshake timeout"
        );
    }
    check_others("the stalled connections were dropped").await;
}

/// A stream over HTTP/1.1 keeps flowing past `http_server.handshake_timeout` (the header
/// read timeout must not cut a response that is still streaming).
async fn outlives_handshake_timeout(http: Http, server: &TestServer) {
    let channel = format!("tls:long-{}", http.describe());
    let token = server.token_with(json!({"sub": "u", "channels": [channel]}));
    let mut uni = streams::uni_http_stream(&http, &UniConnect::new(&token)).await;
    let mut sse = streams::uni_sse(&http, &UniConnect::new(&token)).await;
    let mut hs = streams::http_stream(&http, false, &server.token("u")).await;
    hs.subscribe(&channel, None).await;
    tokio::time::sleep(Duration::from_millis(HANDSHAKE_TIMEOUT_MS * 5 / 2)).await;
    let pos = http.publish(API_KEY, &channel, json!({"late": true})).await;
    for s in [&mut uni.events, &mut sse.events, &mut hs.events] {
        let p = s.pubs(&channel, 1, WAIT).await;
        assert_eq!(p[0].offset, pos.offset, "[{}]", s.label);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_streams_outlive_the_handshake_timeout() {
    let plain = TestServer::start(config()).await;
    outlives_handshake_timeout(Http::h1(plain.addr), &plain).await;
    let (server, files) = tls_server().await;
    outlives_handshake_timeout(Http::tls(server.addr, HttpVersion::H1, &files), &server).await;
}
