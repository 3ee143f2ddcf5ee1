//! Shared harness for the WebSocket end-to-end tests: an in-process Herald on 127.0.0.1
//! (port 0) driven through a real WebSocket client, in JSON or Protobuf.
//!
//! - [`TestServer::start`] builds a node from a Centrifugo-v6-shaped JSON config merged onto
//!   a few defaults (HMAC secret, API key, loopback address), serves it on the test's tokio
//!   runtime and stops it when dropped.
//! - [`Api`] calls the HTTP server API; [`TestServer::token`] mints HS256 connection tokens.
//! - [`Client`] speaks the client protocol over tokio-websockets: it assigns command ids,
//!   buffers pushes while waiting for a reply and answers server pings with pongs.
//!
//! Every wait is bounded ([`WAIT`] unless the caller says otherwise) and fails the test with
//! a message saying what was awaited. Use with `#[macro_use] mod support;`.
#![allow(dead_code, unused_macros)]

pub mod engines;
pub mod raw;
pub mod streams;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use herald::config::Config;
use herald::node::Node;
use herald::protocol::Encoding;
use herald::protocol::proto::{self, Command, Push, Reply};
use herald::server::Server;
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

/// HMAC secret used when the test config sets none.
pub const SECRET: &str = "herald-ws-test-secret-0123456789abcdef0123456789";
/// Server API key used when the test config sets none.
pub const API_KEY: &str = "herald-ws-test-api-key";
/// Default bound on every wait.
pub const WAIT: Duration = Duration::from_secs(3);

/// Generates `mod $name { json, protobuf }` tests that call `async fn $name(Encoding)`.
/// Attributes before a name (`#[ignore = "why"]`) apply to both of its tests.
macro_rules! both_encodings {
    ($($(#[$meta:meta])* $name:ident),+ $(,)?) => {$(
        mod $name {
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn json() {
                super::$name(herald::protocol::Encoding::Json).await
            }
            $(#[$meta])*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn protobuf() {
                super::$name(herald::protocol::Encoding::Protobuf).await
            }
        }
    )+};
}

/// Deep-merges `over` into `base` (objects merge key by key; anything else replaces).
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

fn init_tracing() {
    // The tests' reqwest clients need a process-wide rustls provider (Herald's own bring
    // theirs).
    herald::http_client::install_crypto_provider();
    // Off unless RUST_LOG is set; output goes through the test harness's capture.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The HTTP server API of a test server. Cheap to clone into publisher tasks.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    /// The server API at `base` (`http://127.0.0.1:PORT`) with `key`.
    pub fn new(base: impl Into<String>, key: impl Into<String>) -> Api {
        herald::http_client::install_crypto_provider();
        Api {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("reqwest client"),
            base: base.into(),
            key: key.into(),
        }
    }

    /// `POST /api/<method>` with the right key; asserts HTTP 200 and returns the body.
    pub async fn call(&self, method: &str, body: Value) -> Value {
        let (status, text) = self
            .raw(method, body.to_string().into_bytes(), Some(&self.key))
            .await;
        assert_eq!(status, 200, "API {method} {body}: HTTP {status}: {text}");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("API {method}: response is not JSON ({e}): {text}"))
    }

    /// Like [`Api::call`] and also asserts there is no `error`; returns `result`.
    pub async fn ok(&self, method: &str, body: Value) -> Value {
        let resp = self.call(method, body.clone()).await;
        assert!(
            resp.get("error").is_none(),
            "API {method} {body} failed: {resp}"
        );
        resp.get("result").cloned().unwrap_or(Value::Null)
    }

    /// Publishes `data` to `channel`; returns the result (`offset`, `epoch` with history).
    pub async fn publish(&self, channel: &str, data: Value) -> Value {
        self.ok("publish", json!({"channel": channel, "data": data}))
            .await
    }

    /// Any body, any key (`None`: no key header): HTTP status and body text.
    pub async fn raw(&self, method: &str, body: Vec<u8>, key: Option<&str>) -> (u16, String) {
        let mut req = self
            .http
            .post(format!("{}/api/{method}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            req = req.header("X-API-Key", key);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .unwrap_or_else(|_| panic!("API {method}: no response within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("API {method}: request failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, text)
    }

    /// `GET <path>`: HTTP status and body text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = tokio::time::timeout(WAIT, self.http.get(format!("{}{path}", self.base)).send())
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no response within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("GET {path}: request failed: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// The value of one sample of `GET /metrics` (`series` as written there, labels
    /// included); 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get_text("/metrics").await;
        assert_eq!(status, 200, "GET /metrics");
        text.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(s, _)| *s == series)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// `GET <path>`: HTTP status.
    pub async fn get_status(&self, path: &str) -> u16 {
        let resp = tokio::time::timeout(WAIT, self.http.get(format!("{}{path}", self.base)).send())
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no response within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("GET {path}: request failed: {e}"));
        resp.status().as_u16()
    }
}

/// An in-process Herald serving on 127.0.0.1 with a free port; stopped when dropped.
pub struct TestServer {
    /// Address the server listens on.
    pub addr: SocketAddr,
    /// Addresses of the gRPC listeners of their own (`grpc_api.port`, `uni_grpc.port`).
    pub grpc_addrs: Vec<SocketAddr>,
    /// HMAC secret of connection tokens.
    pub secret: String,
    /// The server API.
    pub api: Api,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestServer {
    /// Starts a server with `config` (Centrifugo v6 key shapes) merged onto the defaults.
    pub async fn start(config: Value) -> TestServer {
        Self::start_with(config, Node::new).await
    }

    /// As [`TestServer::start`], on `engine` (tests wrap the memory engine to slow down or
    /// lose what a remote broker could).
    pub async fn start_with_engine(config: Value, engine: herald::engine::Engine) -> TestServer {
        Self::start_with(config, move |c| Node::with_engine(c, engine)).await
    }

    async fn start_with(
        config: Value,
        build: impl FnOnce(Config) -> Result<std::sync::Arc<Node>, herald::node::StartError>,
    ) -> TestServer {
        init_tracing();
        let mut full = json!({
            "client": {"token": {"hmac_secret_key": SECRET}},
            "http_api": {"key": API_KEY},
        });
        merge(&mut full, config);
        merge(
            &mut full,
            json!({"http_server": {"address": "127.0.0.1", "port": 0}}),
        );
        let secret = full["client"]["token"]["hmac_secret_key"]
            .as_str()
            .unwrap_or(SECRET)
            .to_string();
        let key = full["http_api"]["key"]
            .as_str()
            .unwrap_or(API_KEY)
            .to_string();
        let config: Config = serde_json::from_value(full.clone())
            .unwrap_or_else(|e| panic!("test config does not parse: {e}\n{full:#}"));
        let node = build(config).unwrap_or_else(|e| panic!("node does not start: {e}"));
        let server = Server::bind(node)
            .await
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        let addr = server.local_addr().expect("local_addr");
        let grpc_addrs = server.grpc_addrs();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client");
        TestServer {
            addr,
            grpc_addrs,
            secret,
            api: Api {
                http,
                base: format!("http://{addr}"),
                key,
            },
            shutdown: Some(tx),
        }
    }

    /// Begins graceful shutdown (as dropping the server does) without waiting for it.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// `ws://127.0.0.1:PORT/connection/websocket`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    /// Shorthand for `self.api.call`.
    pub async fn api(&self, method: &str, body: Value) -> Value {
        self.api.call(method, body).await
    }

    /// A connection token for `user` without expiry.
    pub fn token(&self, user: &str) -> String {
        self.token_with(json!({"sub": user}))
    }

    /// A connection token with arbitrary claims (`exp`, `channels`, `info`, ...).
    pub fn token_with(&self, claims: Value) -> String {
        sign(&self.secret, &claims)
    }

    /// Opens a WebSocket (no protocol connect yet).
    pub async fn open(&self, enc: Encoding) -> Client {
        Client::open(self, enc, None).await
    }

    /// Opens a WebSocket and connects as `user` with a valid token.
    pub async fn connected(&self, enc: Encoding, user: &str) -> (Client, proto::ConnectResult) {
        let mut c = self.open(enc).await;
        let res = c.connect(&self.token(user)).await;
        (c, res)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Signs HS256 claims with `secret`.
pub fn sign(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

/// Unix time in seconds.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Command builders.
pub mod cmd {
    use super::*;

    pub fn connect(token: &str) -> Command {
        Command {
            connect: Some(proto::ConnectRequest {
                token: token.to_string(),
                name: "herald-tests".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn subscribe(channel: &str) -> Command {
        subscribe_with(proto::SubscribeRequest {
            channel: channel.to_string(),
            ..Default::default()
        })
    }

    pub fn subscribe_with(req: proto::SubscribeRequest) -> Command {
        Command {
            subscribe: Some(req),
            ..Default::default()
        }
    }

    /// Subscribe asking to recover from `offset` in `epoch`.
    pub fn recover(channel: &str, offset: u64, epoch: &str) -> Command {
        subscribe_with(proto::SubscribeRequest {
            channel: channel.to_string(),
            recover: true,
            recoverable: true,
            offset,
            epoch: epoch.to_string(),
            ..Default::default()
        })
    }

    pub fn unsubscribe(channel: &str) -> Command {
        Command {
            unsubscribe: Some(proto::UnsubscribeRequest {
                channel: channel.to_string(),
            }),
            ..Default::default()
        }
    }

    pub fn publish(channel: &str, data: &Value) -> Command {
        Command {
            publish: Some(proto::PublishRequest {
                channel: channel.to_string(),
                data: json_bytes(data),
            }),
            ..Default::default()
        }
    }

    pub fn history(
        channel: &str,
        limit: i32,
        since: Option<(u64, &str)>,
        reverse: bool,
    ) -> Command {
        Command {
            history: Some(proto::HistoryRequest {
                channel: channel.to_string(),
                limit,
                since: since.map(|(offset, epoch)| proto::StreamPosition {
                    offset,
                    epoch: epoch.to_string(),
                }),
                reverse,
            }),
            ..Default::default()
        }
    }

    pub fn presence(channel: &str) -> Command {
        Command {
            presence: Some(proto::PresenceRequest {
                channel: channel.to_string(),
            }),
            ..Default::default()
        }
    }

    pub fn presence_stats(channel: &str) -> Command {
        Command {
            presence_stats: Some(proto::PresenceStatsRequest {
                channel: channel.to_string(),
            }),
            ..Default::default()
        }
    }

    pub fn ping() -> Command {
        Command {
            ping: Some(proto::PingRequest {}),
            ..Default::default()
        }
    }
}

/// JSON value to payload bytes.
pub fn json_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("json"))
}

/// Payload bytes to a JSON value (what a publication's `data` carries in these tests).
pub fn payload_json(data: &[u8]) -> Value {
    serde_json::from_slice(data).unwrap_or_else(|e| {
        panic!(
            "payload is not JSON ({e}): {:?}",
            String::from_utf8_lossy(data)
        )
    })
}

/// Offsets of a list of publications.
pub fn offsets(pubs: &[proto::Publication]) -> Vec<u64> {
    pubs.iter().map(|p| p.offset).collect()
}

enum Read {
    Frame,
    Timeout,
    Closed,
}

/// A protocol client over a real WebSocket.
pub struct Client {
    ws: WebSocketStream<TcpStream>,
    /// Encoding of this connection.
    pub enc: Encoding,
    next_id: u32,
    inbox: VecDeque<Reply>,
    /// Answer server pings (empty replies) with pongs (empty commands). On by default.
    pub auto_pong: bool,
    /// Server pings seen so far.
    pub pings: usize,
    /// Set once the connection ended: the close frame's code and reason, if any.
    closed: Option<Option<(u16, String)>>,
}

impl Client {
    /// Opens a WebSocket to `server`; `recv_buffer` shrinks the socket's receive buffer
    /// (a client that stops reading then backs up quickly).
    pub async fn open(server: &TestServer, enc: Encoding, recv_buffer: Option<u32>) -> Client {
        Self::open_at(server.addr, enc, recv_buffer).await
    }

    /// Like [`Client::open`], to any server on `addr` (a Herald process, for example).
    pub async fn open_at(addr: SocketAddr, enc: Encoding, recv_buffer: Option<u32>) -> Client {
        Self::open_at_with_headers(addr, enc, recv_buffer, &[]).await
    }

    /// Like [`Client::open_at`], with extra headers on the upgrade request (a cookie, say).
    pub async fn open_at_with_headers(
        addr: SocketAddr,
        enc: Encoding,
        recv_buffer: Option<u32>,
        headers: &[(&'static str, &str)],
    ) -> Client {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("TCP connect timed out")
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        let uri: http::Uri = format!("ws://{addr}/connection/websocket")
            .parse()
            .expect("ws url");
        let mut builder = ClientBuilder::from_uri(uri);
        for (name, value) in headers {
            builder = builder
                .add_header(
                    http::HeaderName::from_static(name),
                    http::HeaderValue::from_str(value).expect("header value"),
                )
                .expect("extra header");
        }
        if enc == Encoding::Protobuf {
            builder = builder
                .add_header(
                    http::header::SEC_WEBSOCKET_PROTOCOL,
                    http::HeaderValue::from_static("centrifuge-protobuf"),
                )
                .expect("subprotocol header");
        }
        let (ws, resp) = tokio::time::timeout(WAIT, builder.connect_on(stream))
            .await
            .expect("WebSocket handshake timed out")
            .unwrap_or_else(|e| panic!("WebSocket handshake failed: {e}"));
        if enc == Encoding::Protobuf {
            let proto = resp
                .headers()
                .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok());
            assert_eq!(
                proto,
                Some("centrifuge-protobuf"),
                "server must select the centrifuge-protobuf subprotocol"
            );
        }
        Client {
            ws,
            enc,
            next_id: 0,
            inbox: VecDeque::new(),
            auto_pong: true,
            pings: 0,
            closed: None,
        }
    }

    /// Sends one command in its own frame.
    pub async fn send(&mut self, cmd: Command) {
        let bytes = self.enc.encode(&cmd);
        self.send_payload(bytes).await;
    }

    /// Sends several commands in one frame (newline-delimited JSON or length-prefixed
    /// Protobuf). Commands without an id get one.
    pub async fn send_batch(&mut self, cmds: Vec<Command>) -> Vec<u32> {
        match self.try_send_batch(cmds).await {
            Ok(ids) => ids,
            Err(e) => panic!("WebSocket send failed: {e}"),
        }
    }

    /// [`Client::send_batch`] that reports a connection the server already closed.
    pub async fn try_send_batch(&mut self, cmds: Vec<Command>) -> Result<Vec<u32>, String> {
        let mut ids = Vec::with_capacity(cmds.len());
        let parts: Vec<Bytes> = cmds
            .into_iter()
            .map(|mut c| {
                if c.id == 0 {
                    c.id = self.new_id();
                }
                ids.push(c.id);
                self.enc.encode(&c)
            })
            .collect();
        let mut frame = BytesMut::new();
        self.enc.join(&parts, &mut frame);
        let msg = match self.enc {
            Encoding::Json => Message::text(frame.freeze()),
            _ => Message::binary(frame.freeze()),
        };
        self.try_send_raw(msg).await?;
        Ok(ids)
    }

    /// Sends encoded bytes as this encoding's frame type (text for JSON, binary for Protobuf).
    pub async fn send_payload(&mut self, bytes: Bytes) {
        let msg = match self.enc {
            Encoding::Json => Message::text(bytes),
            _ => Message::binary(bytes),
        };
        self.send_raw(msg).await;
    }

    /// Sends any WebSocket message.
    pub async fn send_raw(&mut self, msg: Message) {
        if let Err(e) = self.try_send_raw(msg).await {
            panic!("WebSocket send failed: {e}");
        }
    }

    /// Sends any WebSocket message; an error when the connection is gone.
    pub async fn try_send_raw(&mut self, msg: Message) -> Result<(), String> {
        match tokio::time::timeout(WAIT, self.ws.send(msg)).await {
            Err(_) => panic!("WebSocket send timed out after {WAIT:?}"),
            Ok(r) => r.map_err(|e| e.to_string()),
        }
    }

    /// A fresh command id.
    pub fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Reads one frame into the inbox (pings answered here).
    async fn pump(&mut self, deadline: Instant) -> Read {
        if self.closed.is_some() {
            return Read::Closed;
        }
        let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
            Err(_) => return Read::Timeout,
            Ok(None) | Ok(Some(Err(_))) => {
                self.closed = Some(None);
                return Read::Closed;
            }
            Ok(Some(Ok(m))) => m,
        };
        if let Some((code, reason)) = msg.as_close() {
            self.closed = Some(Some((code.into(), reason.to_string())));
            return Read::Closed;
        }
        if !(msg.is_text() || msg.is_binary()) {
            return Read::Frame; // WebSocket-level ping/pong
        }
        if self.enc == Encoding::Json {
            assert!(msg.is_text(), "JSON replies must come in text frames");
        } else {
            assert!(
                msg.is_binary(),
                "Protobuf replies must come in binary frames"
            );
        }
        let replies: Vec<Reply> = self
            .enc
            .decode(msg.as_payload(), usize::MAX)
            .unwrap_or_else(|e| {
                panic!(
                    "server sent an undecodable {:?} frame ({e}): {:?}",
                    self.enc,
                    String::from_utf8_lossy(msg.as_payload())
                )
            });
        for reply in replies {
            if reply == Reply::default() {
                self.pings += 1;
                if self.auto_pong {
                    let pong = self.enc.encode(&Command::default());
                    let msg = match self.enc {
                        Encoding::Json => Message::text(pong),
                        _ => Message::binary(pong),
                    };
                    let _ = self.ws.send(msg).await;
                }
            } else {
                self.inbox.push_back(reply);
            }
        }
        Read::Frame
    }

    fn close_description(&self) -> String {
        match &self.closed {
            Some(Some((code, reason))) => format!("closed with {code} {reason:?}"),
            Some(None) => "ended without a close frame".to_string(),
            None => "open".to_string(),
        }
    }

    /// Sends `cmd` (with a fresh id unless it has one) and waits for its reply.
    pub async fn call(&mut self, mut cmd: Command) -> Reply {
        if cmd.id == 0 {
            cmd.id = self.new_id();
        }
        let id = cmd.id;
        let what = format!("{cmd:?}");
        self.send(cmd).await;
        self.wait_reply(id, &what).await
    }

    /// Waits for the reply with `id`, buffering everything else.
    pub async fn wait_reply(&mut self, id: u32, what: &str) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(pos) = self.inbox.iter().position(|r| r.id == id) {
                return self.inbox.remove(pos).expect("present");
            }
            match self.pump(deadline).await {
                Read::Frame => {}
                Read::Timeout => panic!("no reply to command {id} within {WAIT:?}: {what}"),
                Read::Closed => panic!(
                    "connection {} while waiting for the reply to {what}",
                    self.close_description()
                ),
            }
        }
    }

    /// Calls and asserts the reply is not an error.
    pub async fn call_ok(&mut self, cmd: Command) -> Reply {
        let what = format!("{cmd:?}");
        let reply = self.call(cmd).await;
        assert!(
            reply.error.is_none(),
            "command failed: {:?}\ncommand: {what}",
            reply.error
        );
        reply
    }

    /// Calls and returns the error code (panics on success).
    pub async fn call_err(&mut self, cmd: Command) -> u32 {
        let what = format!("{cmd:?}");
        let reply = self.call(cmd).await;
        match &reply.error {
            Some(e) => e.code,
            None => panic!("expected an error reply, got {reply:?}\ncommand: {what}"),
        }
    }

    /// Connects with `token`; panics unless connected.
    pub async fn connect(&mut self, token: &str) -> proto::ConnectResult {
        let reply = self.call_ok(cmd::connect(token)).await;
        reply
            .connect
            .expect("connect reply without a connect result")
    }

    /// Subscribes; panics unless subscribed.
    pub async fn subscribe(&mut self, channel: &str) -> proto::SubscribeResult {
        self.subscribe_cmd(cmd::subscribe(channel)).await
    }

    /// Sends a subscribe command; panics unless subscribed.
    pub async fn subscribe_cmd(&mut self, cmd: Command) -> proto::SubscribeResult {
        let reply = self.call_ok(cmd).await;
        reply
            .subscribe
            .expect("subscribe reply without a subscribe result")
    }

    /// The next push (buffered or read), `None` after `timeout`. Panics if the connection
    /// ends first.
    pub async fn next_push(&mut self, timeout: Duration) -> Option<Push> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.inbox.iter().position(|r| r.push.is_some()) {
                return self.inbox.remove(pos).and_then(|r| r.push);
            }
            match self.pump(deadline).await {
                Read::Frame => {}
                Read::Timeout => return None,
                Read::Closed => panic!(
                    "connection {} while waiting for a push",
                    self.close_description()
                ),
            }
        }
    }

    /// The next push that satisfies `pred`, skipping others; panics after [`WAIT`].
    pub async fn push_where(&mut self, what: &str, pred: impl Fn(&Push) -> bool) -> Push {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_push(left).await {
                Some(p) if pred(&p) => return p,
                Some(_) => {}
                None => panic!("no push matching {what} within {WAIT:?}"),
            }
        }
    }

    /// The next push other than a join or leave on `channel`, which must be a publication on
    /// `channel`.
    pub async fn expect_pub(&mut self, channel: &str) -> proto::Publication {
        let deadline = Instant::now() + WAIT;
        let push = loop {
            let push = self
                .next_push(deadline.saturating_duration_since(Instant::now()))
                .await
                .unwrap_or_else(|| panic!("no publication on {channel} within {WAIT:?}"));
            // Join and leave pushes on the channel are not publications and may come in any
            // order with them (on the Redis engine, a client's own join arrives through Redis).
            if push.channel == channel && (push.join.is_some() || push.leave.is_some()) {
                continue;
            }
            break push;
        };
        assert_eq!(
            push.channel, channel,
            "publication on the wrong channel: {push:?}"
        );
        match push.r#pub {
            Some(publication) => publication,
            None => panic!("expected a publication push, got {push:?}"),
        }
    }

    /// Asserts that no push arrives within `timeout`.
    pub async fn expect_no_push(&mut self, timeout: Duration) {
        if let Some(p) = self.next_push(timeout).await {
            panic!("unexpected push: {p:?}");
        }
    }

    /// The next non-ping message of any kind (reply or push), `None` when the connection
    /// ended. Panics after `timeout`.
    pub async fn next_reply(&mut self, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.inbox.pop_front() {
                return Some(r);
            }
            match self.pump(deadline).await {
                Read::Frame => {}
                Read::Timeout => panic!("no message within {timeout:?}"),
                Read::Closed => return None,
            }
        }
    }

    /// How the connection ended, once it has: `Some(Some((code, reason)))` after a close
    /// frame, `Some(None)` when it ended without one.
    pub fn close_status(&self) -> Option<Option<(u16, String)>> {
        self.closed.clone()
    }

    /// Reads (and discards) everything until the connection ends; returns the close
    /// frame's code and reason, or `None` when it ended without one. Panics after `timeout`.
    pub async fn expect_close(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.pump(deadline).await {
                Read::Frame => self.inbox.clear(),
                Read::Timeout => panic!(
                    "the server did not close the connection within {timeout:?}; unread: {:?}",
                    self.inbox.iter().take(3).collect::<Vec<_>>()
                ),
                Read::Closed => return self.closed.clone().flatten(),
            }
        }
    }

    /// Expects a close frame with `code`.
    pub async fn expect_close_code(&mut self, code: u16) -> String {
        match self.expect_close(WAIT).await {
            Some((c, reason)) => {
                assert_eq!(c, code, "close code (reason {reason:?})");
                reason
            }
            None => panic!("connection ended without a close frame, expected code {code}"),
        }
    }
}

/// A well-behaved client that proves the server still delivers: it is subscribed to a
/// channel and [`Witness::check`] publishes through the API and waits for the publication.
pub struct Witness {
    client: Client,
    channel: String,
    n: u64,
}

impl Witness {
    /// Connects (JSON) as user "witness" and subscribes to `channel`.
    pub async fn new(server: &TestServer, channel: &str) -> Witness {
        let (mut client, _) = server.connected(Encoding::Json, "witness").await;
        client.subscribe(channel).await;
        Witness {
            client,
            channel: channel.to_string(),
            n: 0,
        }
    }

    /// Publishes a fresh payload and asserts that it arrives.
    pub async fn check(&mut self, server: &TestServer) {
        self.n += 1;
        let data = json!({"witness": self.n});
        server.api.publish(&self.channel, data.clone()).await;
        let publication = self.client.expect_pub(&self.channel).await;
        assert_eq!(
            payload_json(&publication.data),
            data,
            "witness got the wrong publication"
        );
    }
}
