//! Herald behind real load balancers (issue 11): nginx, HAProxy and Caddy, each run from its recipe in
//! examples/proxies/, terminating TLS in front of three nodes on one redis-server, round robin, no sticky
//! sessions. Real clients on every transport go through the proxy only: the centrifuge JS SDK over websocket,
//! http_stream and sse (tests/js/behind_proxy.cjs), curl on uni_sse and uni_http_stream, tonic on the
//! bidirectional and the unidirectional gRPC streams (HTTP/2 over TLS), and gRPC-Web (curl, HTTP/1.1 and
//! HTTP/2). Every client must receive every publication the API acknowledged, exactly once, in order, whichever
//! node it landed on. Then: idle connections outlive the proxy's default timeout because Herald's pings cross
//! it, a rolling restart of the three nodes behind the proxy loses nothing, and headless Chromium (its own
//! EventSource resuming with Last-Event-ID, the centrifuge SDK over WebSocket and SSE) passes through it.
//!
//! Needs nginx, haproxy, caddy, redis-server, curl and chromium (.ci/run installs them), Node 20+ and
//! `npm ci --prefix tests/js`.

mod common;
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Herald;
use common::proxy::{Proxy, ProxyKind};
use common::redis_server::RedisServer;
use herald::protocol::proto::{self, Command, Push, Reply};
use herald::transport::grpc::client::stream::herald_stream_client::HeraldStreamClient;
use herald::transport::grpc::client::unistream::centrifugo_uni_stream_client::CentrifugoUniStreamClient;
use prost::Message;
use serde_json::{Value, json};
use support::streams::TlsFiles;
use support::{cmd, payload_json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Three nodes on `redis`, with the tests' default config (every transport on).
fn three_nodes(redis: &RedisServer, extra: Value) -> Vec<Herald> {
    (0..3)
        .map(|_| {
            let mut config = common::default_config();
            support::merge(
                &mut config,
                json!({"engine": {"type": "redis", "redis": {"address": redis.url()}}}),
            );
            support::merge(&mut config, extra.clone());
            Herald::start(config)
        })
        .collect()
}

/// What one client received: publication numbers (`data.n`) in arrival order, and whether it has subscribed.
#[derive(Default)]
struct Feed {
    name: String,
    ready: AtomicBool,
    got: Mutex<Vec<i64>>,
}

impl Feed {
    fn new(name: &str) -> Arc<Feed> {
        Arc::new(Feed {
            name: name.to_string(),
            ..Default::default()
        })
    }

    fn take(&self, publication: &proto::Publication) {
        if let Some(n) = payload_json(&publication.data)["n"].as_i64() {
            self.got.lock().unwrap().push(n);
        }
    }

    fn take_push(&self, push: &Push, channel: &str) {
        if let Some(connect) = &push.connect
            && connect.subs.contains_key(channel)
        {
            self.ready.store(true, Ordering::SeqCst);
        }
        if push.channel == channel
            && let Some(p) = &push.r#pub
        {
            self.take(p);
        }
    }
}

/// A gRPC channel to the proxy over TLS (HTTP/2 by ALPN), trusting the test certificate.
async fn tls_channel(proxy: &Proxy) -> Channel {
    let ca = std::fs::read_to_string(&proxy.ca_file).expect("read the test certificate");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    tokio::time::timeout(
        Duration::from_secs(10),
        Channel::from_shared(proxy.base_url())
            .expect("uri")
            .tls_config(tls)
            .expect("tls config")
            .connect(),
    )
    .await
    .expect("gRPC connect through the proxy timed out")
    .expect("gRPC connect through the proxy")
}

/// Herald's bidirectional gRPC stream through the proxy: connect, subscribe, then publications into `feed`.
async fn grpc_bidi(proxy: &Proxy, token: String, channel: String, feed: Arc<Feed>) {
    let mut client = HeraldStreamClient::new(tls_channel(proxy).await);
    let (tx, commands) = tokio::sync::mpsc::channel::<Command>(16);
    let outbound = futures_util::stream::unfold(commands, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    });
    let mut connect = cmd::connect(&token);
    connect.id = 1;
    let mut subscribe = cmd::subscribe(&channel);
    subscribe.id = 2;
    tx.send(connect).await.unwrap();
    tx.send(subscribe).await.unwrap();
    let mut replies = client
        .connect(outbound)
        .await
        .expect("gRPC Connect through the proxy")
        .into_inner();
    while let Ok(Some(reply)) = replies.message().await {
        let reply: Reply = reply;
        if reply == Reply::default() {
            let _ = tx.send(Command::default()).await; // pong
            continue;
        }
        assert!(reply.error.is_none(), "gRPC stream error reply: {reply:?}");
        if reply.id == 2 {
            feed.ready.store(true, Ordering::SeqCst);
        }
        if let Some(push) = &reply.push {
            feed.take_push(push, &channel);
        }
    }
}

/// The unidirectional gRPC stream (`CentrifugoUniStream/Consume`) through the proxy.
async fn grpc_uni(proxy: &Proxy, token: String, channel: String, feed: Arc<Feed>) {
    let mut client = CentrifugoUniStreamClient::new(tls_channel(proxy).await);
    let req = connect_request(&token, &channel);
    let mut pushes = client
        .consume(req)
        .await
        .expect("Consume through the proxy")
        .into_inner();
    while let Ok(Some(push)) = pushes.message().await {
        feed.take_push(&push, &channel);
    }
}

fn connect_request(token: &str, channel: &str) -> proto::ConnectRequest {
    proto::ConnectRequest {
        token: token.to_string(),
        name: "behind-proxy".into(),
        subs: [(channel.to_string(), proto::SubscribeRequest::default())].into(),
        ..Default::default()
    }
}

/// gRPC-Web Consume through the proxy with curl (as a browser sends it: one framed request, a framed stream
/// back), over HTTP/1.1 or HTTP/2. Runs until the returned child is killed.
fn grpc_web(
    proxy: &Proxy,
    dir: &Path,
    http: &str,
    token: &str,
    channel: &str,
    feed: Arc<Feed>,
) -> std::process::Child {
    let body = connect_request(token, channel).encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let frame_path = dir.join(format!("grpc-web-{http}.bin"));
    std::fs::write(&frame_path, frame).expect("write the gRPC-Web frame");
    let mut child = proxy
        .curl()
        .args(["-N", http, "--max-time", "300", "-X", "POST"])
        .args([
            "-H",
            "content-type: application/grpc-web+proto",
            "-H",
            "x-grpc-web: 1",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", frame_path.display()))
        .arg(format!(
            "{}/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume",
            proxy.base_url()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn curl");
    let mut out = child.stdout.take().unwrap();
    let channel = channel.to_string();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        while let Ok(n) = out.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 5 + len {
                    break;
                }
                let trailer = buf[0] & 0x80 != 0;
                let payload: Vec<u8> = buf.drain(..5 + len).skip(5).collect();
                if !trailer && let Ok(push) = Push::decode(&payload[..]) {
                    feed.take_push(&push, &channel);
                }
            }
        }
    });
    child
}

/// Runs tests/js/behind_proxy.cjs against the proxy; returns the numbers the API acknowledged after asserting
/// the script's own checks.
fn run_js(
    proxy: &Proxy,
    api_key: &str,
    token: &str,
    channel: &str,
    extra: &[&str],
    limit: Duration,
) -> Vec<i64> {
    let script = common::repo_root().join("tests/js/behind_proxy.cjs");
    assert!(
        common::repo_root()
            .join("tests/js/node_modules/centrifuge")
            .is_dir(),
        "run `npm ci --prefix tests/js` first"
    );
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(common::repo_root())
        .env("NODE_EXTRA_CA_CERTS", &proxy.ca_file)
        .arg(&script)
        .args([
            "--base",
            &proxy.base_url(),
            "--api-key",
            api_key,
            "--token",
            token,
        ])
        .args(["--channel", channel])
        .arg("--ca")
        .arg(&proxy.ca_file)
        .args(extra);
    let out = common::run_with_timeout(cmd, limit);
    out.assert_all_checks_passed(&format!(
        "node tests/js/behind_proxy.cjs through {}",
        proxy.kind.name()
    ));
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("ACKED "))
        .expect("the script prints ACKED");
    serde_json::from_str(line).expect("ACKED is a JSON list")
}

fn assert_exactly(feed: &Feed, acked: &[i64]) {
    let got = feed.got.lock().unwrap().clone();
    let extra: Vec<i64> = got.iter().copied().filter(|n| !acked.contains(n)).collect();
    assert!(
        extra.is_empty() || got.windows(2).all(|w| w[0] < w[1]),
        "{}: out of order: {got:?}",
        feed.name
    );
    let got_acked: Vec<i64> = got.into_iter().filter(|n| acked.contains(n)).collect();
    assert_eq!(
        got_acked, acked,
        "{}: every acknowledged publication once, in order",
        feed.name
    );
}

/// Every transport through `kind`, TLS terminated by the proxy, three nodes behind it.
async fn every_transport_through(kind: ProxyKind) {
    let redis = RedisServer::start();
    let nodes = three_nodes(&redis, json!({}));
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let tls = TlsFiles::generate();
    let proxy = Arc::new(Proxy::start(kind, &ports, &tls.cert_file, &tls.key_file));
    let channel = format!("chat:{}-{}", kind.name(), std::process::id());
    let token = support::sign(&nodes[0].secret, &json!({"sub": "alice"}));

    let feeds: Vec<Arc<Feed>> = ["grpc bidi", "grpc uni", "grpc-web http/1.1", "grpc-web h2"]
        .iter()
        .map(|n| Feed::new(n))
        .collect();
    let mut tasks = Vec::new();
    {
        let (p, t, c, f) = (
            proxy.clone(),
            token.clone(),
            channel.clone(),
            feeds[0].clone(),
        );
        tasks.push(tokio::spawn(async move { grpc_bidi(&p, t, c, f).await }));
        let (p, t, c, f) = (
            proxy.clone(),
            token.clone(),
            channel.clone(),
            feeds[1].clone(),
        );
        tasks.push(tokio::spawn(async move { grpc_uni(&p, t, c, f).await }));
    }
    let dir = common::make_temp_dir();
    let mut curls = vec![
        grpc_web(
            &proxy,
            &dir,
            "--http1.1",
            &token,
            &channel,
            feeds[2].clone(),
        ),
        grpc_web(&proxy, &dir, "--http2", &token, &channel, feeds[3].clone()),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !feeds.iter().all(|f| f.ready.load(Ordering::SeqCst)) {
        assert!(
            Instant::now() < deadline,
            "gRPC clients not subscribed through {}: {:?}",
            kind.name(),
            feeds
                .iter()
                .filter(|f| !f.ready.load(Ordering::SeqCst))
                .map(|f| &f.name)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (p, key, t, c) = (
        proxy.clone(),
        nodes[0].api_key.clone(),
        token.clone(),
        channel.clone(),
    );
    let acked = tokio::task::spawn_blocking(move || {
        run_js(
            &p,
            &key,
            &t,
            &c,
            &["--seconds", "3", "--rate", "20"],
            Duration::from_secs(120),
        )
    })
    .await
    .expect("the JS run");
    assert!(!acked.is_empty());
    let last = *acked.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !feeds.iter().all(|f| f.got.lock().unwrap().contains(&last)) && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for feed in &feeds {
        assert_exactly(feed, &acked);
    }
    for c in &mut curls {
        let _ = c.kill();
        let _ = c.wait();
    }
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_through_nginx() {
    every_transport_through(ProxyKind::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_through_haproxy() {
    every_transport_through(ProxyKind::Haproxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_through_caddy() {
    every_transport_through(ProxyKind::Caddy).await;
}

/// Clients stay idle longer than the proxy's default timeout (nginx's proxy_read_timeout is 60 s, Debian's
/// HAProxy config has 50 s) and are not disconnected: Herald's pings (client.ping_interval, 25 s) cross the
/// proxy, and the recipe's timeouts sit above ping interval + pong timeout. Then a publication reaches all.
fn idle_through(kind: ProxyKind) {
    let redis = RedisServer::start();
    let nodes = three_nodes(&redis, json!({}));
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let tls = TlsFiles::generate();
    let proxy = Proxy::start(kind, &ports, &tls.cert_file, &tls.key_file);
    let channel = format!("chat:idle-{}-{}", kind.name(), std::process::id());
    let token = support::sign(&nodes[0].secret, &json!({"sub": "idler"}));
    let acked = run_js(
        &proxy,
        &nodes[0].api_key,
        &token,
        &channel,
        &["--idle", "65", "--seconds", "1", "--rate", "5"],
        Duration::from_secs(180),
    );
    assert!(!acked.is_empty());
}

/// The three proxies side by side, so that the suite waits out the idle minute once.
#[test]
fn idle_clients_outlive_each_proxy_default_timeout() {
    std::thread::scope(|s| {
        let runs: Vec<_> = [ProxyKind::Nginx, ProxyKind::Haproxy, ProxyKind::Caddy]
            .into_iter()
            .map(|kind| (kind, s.spawn(move || idle_through(kind))))
            .collect();
        for (kind, run) in runs {
            if let Err(e) = run.join() {
                eprintln!("idle clients through {} failed", kind.name());
                std::panic::resume_unwind(e);
            }
        }
    });
}

/// Clients of the rolling-restart test: per SDK transport (websocket, http_stream, sse) and per curl transport
/// (uni_sse, uni_http_stream): 3 × 300 + 2 × 50 = 1,000.
const ROLLING_SDK_CLIENTS: &str = "300";
const ROLLING_UNI_CLIENTS: &str = "50";

/// A rolling restart behind `kind`: 1,000 clients over mixed transports, publications flowing through the proxy
/// at 10/s; each of the three nodes in turn gets SIGTERM (it closes its listener, tells its clients to reconnect
/// spread over `shutdown.reconnect_spread`, drains and exits) and is started again. Every client must end with
/// every acknowledged publication exactly once, in order, none told it could not recover. Prints how long each
/// node took to drain and to come back.
fn rolling_restart_through(kind: ProxyKind) {
    let redis = RedisServer::start();
    let mut nodes = three_nodes(
        &redis,
        json!({
            "shutdown": {"reconnect_spread": "3s", "timeout": "15s"},
            "channel": {"namespaces": [{
                "name": "chat", "history_size": 2000, "history_ttl": "300s", "force_recovery": true,
                "allow_subscribe_for_client": true
            }]}
        }),
    );
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let tls = TlsFiles::generate();
    let proxy = Proxy::start(kind, &ports, &tls.cert_file, &tls.key_file);
    let channel = format!("chat:rolling-{}-{}", kind.name(), std::process::id());
    let token = support::sign(&nodes[0].secret, &json!({"sub": "roller"}));
    let api_key = nodes[0].api_key.clone();
    let dir = common::make_temp_dir();
    let started_file = dir.join("publishing");

    let acked = std::thread::scope(|s| {
        let js = s.spawn(|| {
            run_js(
                &proxy,
                &api_key,
                &token,
                &channel,
                &[
                    "--clients",
                    ROLLING_SDK_CLIENTS,
                    "--uni",
                    ROLLING_UNI_CLIENTS,
                    "--seconds",
                    "45",
                    "--rate",
                    "10",
                    "--settle",
                    "20000",
                    "--ready-timeout",
                    "120000",
                    "--started-file",
                    &started_file.display().to_string(),
                ],
                Duration::from_secs(420),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(180);
        while !started_file.exists() {
            assert!(
                Instant::now() < deadline && !js.is_finished(),
                "the clients never started publishing"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let rolling = Instant::now();
        for (i, node) in nodes.iter_mut().enumerate() {
            std::thread::sleep(Duration::from_secs(3));
            let (status, drained) = node.terminate(Duration::from_secs(20));
            assert!(
                status.is_some_and(|s| s.success()),
                "node {i} did not exit cleanly on SIGTERM ({status:?}); log:\n{}",
                node.log_tail(20)
            );
            let started = Instant::now();
            node.restart();
            println!(
                "rolling restart through {}: node {} drained in {:.1} s, back in {:.1} s",
                kind.name(),
                i + 1,
                drained.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
        }
        println!(
            "rolling restart through {}: three nodes restarted in {:.1} s",
            kind.name(),
            rolling.elapsed().as_secs_f64()
        );
        js.join().expect("the JS run")
    });
    assert!(!acked.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rolling_restart_behind_nginx_loses_nothing() {
    rolling_restart_through(ProxyKind::Nginx);
}

#[test]
fn rolling_restart_behind_haproxy_loses_nothing() {
    rolling_restart_through(ProxyKind::Haproxy);
}

#[test]
fn rolling_restart_behind_caddy_loses_nothing() {
    rolling_restart_through(ProxyKind::Caddy);
}

/// WebSocket over HTTP/2 (RFC 8441) end to end through HAProxy: the client opens one TLS connection with ALPN
/// h2, sends an extended CONNECT (`:protocol websocket`) for /connection/websocket, and speaks the client
/// protocol on that stream; HAProxy carries it to a node as an extended CONNECT over h2c (the recipe's
/// `proto h2`). A publication made through another node arrives on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_through_haproxy() {
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_websockets::Message as WsMessage;

    let redis = RedisServer::start();
    let nodes = three_nodes(&redis, json!({}));
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let tls = TlsFiles::generate();
    let proxy = Proxy::start(ProxyKind::Haproxy, &ports, &tls.cert_file, &tls.key_file);

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .expect("connect");
    let connector = tokio_rustls::TlsConnector::from(tls.client_config(&[b"h2"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.expect("TLS to HAProxy");
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "HAProxy negotiates h2"
    );
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .expect("h2 handshake with HAProxy");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!(
            "https://localhost:{}/connection/websocket",
            proxy.port
        ))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("an answer in time")
        .expect("HAProxy accepts extended CONNECT from the client");
    assert_eq!(
        resp.status(),
        200,
        "RFC 8441 through HAProxy: 200 opens the WebSocket"
    );
    let upgraded = hyper::upgrade::on(resp).await.expect("the stream is ours");
    let mut ws = tokio_websockets::ClientBuilder::new().take_over(TokioIo::new(upgraded));

    let channel = "chat:h2-websocket";
    let token = support::sign(&nodes[0].secret, &json!({"sub": "h2"}));
    ws.send(WsMessage::text(
        json!({"id": 1, "connect": {"token": token}}).to_string()
            + "\n"
            + &json!({"id": 2, "subscribe": {"channel": channel}}).to_string(),
    ))
    .await
    .expect("send connect + subscribe");
    let mut subscribed = false;
    let mut published = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the publication in time")
            .expect("stream open")
            .expect("a message");
        let text = msg.as_text().expect("a text frame").to_owned();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).expect("JSON");
            assert!(v.get("error").is_none(), "{v}");
            if v["id"] == 2 {
                subscribed = true;
            }
            if v["push"]["pub"]["data"]["via"] == "node 3" {
                return;
            }
        }
        if subscribed && !published {
            published = true;
            let api = support::Api::new(nodes[2].base_url(), nodes[2].api_key.clone());
            api.publish(channel, json!({"via": "node 3"})).await;
        }
    }
}

/// A real browser through the proxy: headless Chromium runs tests/browser/browser_e2e.cjs against the proxy's
/// HTTPS address (three nodes behind it). Its own `EventSource` on uni_sse gets the API's publications, and
/// after a server-forced disconnect it reconnects through the proxy, to whichever node the proxy picks, with
/// `Last-Event-ID` and gets exactly what it missed; the centrifuge SDK in the page does the same over
/// WebSocket and over SSE emulation (whose `/emulation` POSTs land on other nodes than the stream).
fn chromium_through(kind: ProxyKind) {
    let root = common::repo_root();
    for package in ["centrifuge", "playwright-core"] {
        assert!(
            root.join("tests/js/node_modules").join(package).is_dir(),
            "run `npm ci --prefix tests/js` first ({package} is missing)"
        );
    }
    let chromium = std::env::var_os("HERALD_TEST_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        chromium.is_file(),
        "needs Chromium at {} (`apt-get install -y chromium`, .ci/run does; or HERALD_TEST_CHROMIUM)",
        chromium.display()
    );
    let redis = RedisServer::start();
    let nodes = three_nodes(&redis, json!({}));
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let tls = TlsFiles::generate();
    let proxy = Proxy::start(kind, &ports, &tls.cert_file, &tls.key_file);
    let secret = &nodes[0].secret;
    let uni_channel = "chat:room";
    let token = |user: &str, claims: Value| {
        let mut c = json!({"sub": user});
        support::merge(&mut c, claims);
        support::sign(secret, &c)
    };
    let out_dir = root
        .join("target/test-output/browser-behind")
        .join(kind.name());
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(&root)
        .env("NODE_EXTRA_CA_CERTS", &proxy.ca_file)
        .arg(root.join("tests/browser/browser_e2e.cjs"))
        .args(["--base", &proxy.base_url(), "--api-key", &nodes[0].api_key])
        .args([
            "--uni-token",
            &token("browser-uni", json!({"channels": [uni_channel]})),
        ])
        .args(["--uni-user", "browser-uni", "--uni-channel", uni_channel])
        .args(["--ws-token", &token("browser-ws", json!({}))])
        .args(["--ws-user", "browser-ws"])
        .args(["--sse-token", &token("browser-sse", json!({}))])
        .args(["--sse-user", "browser-sse"])
        .arg("--out-dir")
        .arg(&out_dir)
        .arg("--chromium")
        .arg(&chromium);
    let out = common::run_with_timeout(cmd, Duration::from_secs(150));
    out.assert_all_checks_passed(&format!(
        "node tests/browser/browser_e2e.cjs through {}",
        kind.name()
    ));
}

#[test]
fn chromium_through_nginx() {
    chromium_through(ProxyKind::Nginx);
}

#[test]
fn chromium_through_haproxy() {
    chromium_through(ProxyKind::Haproxy);
}

#[test]
fn chromium_through_caddy() {
    chromium_through(ProxyKind::Caddy);
}
