//! Subscriber clients for every transport. Each client is one task that connects,
//! subscribes to one channel, then reads until the run stops, counting what it receives
//! (see [`crate::payload`] and [`crate::stats`]). With `reconnect`, a client that the server
//! disconnects comes back at once and recovers from its last position (offset + epoch), as
//! the SDKs do.
//!
//! Wire formats (see Herald's docs/transports.md, the same as Centrifugo's):
//! - `websocket`: JSON text frames (lines) or Protobuf binary frames (varint-prefixed,
//!   subprotocol `centrifuge-protobuf`); connect, then subscribe, as commands.
//! - `http_stream` / `sse`: emulation; the connect command in the request (POST body, or
//!   `cf_connect`), replies streamed as lines / length-prefixed / SSE `data:` events; later
//!   commands (subscribe, pongs) through `POST /emulation`.
//! - `uni_*`: one ConnectRequest (JSON) in, bare Push objects out; channels come from the
//!   token's `channels` claim, recovery positions from `subs`.
//! - `uni_grpc`: `CentrifugoUniStream/Consume`; `grpc`: Herald's `HeraldStream/Connect`.
//!
//! Hot path: publications are found by scanning the bytes of each message for the payload
//! stamp; only other messages (replies, pings, disconnects) are decoded, with
//! `herald::protocol`. With position tracking (reconnect runs) every message is decoded.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use herald::protocol::Encoding;
use herald::protocol::proto::{self, Command, Push, Reply};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_websockets::{ClientBuilder, Limits, Message, WebSocketStream};

use crate::net::{AbortOnDrop, Counted, HttpClient, connect_tcp};
use crate::payload;
use crate::stats::{Recorder, Seen, SeqTracker};

/// Every client transport the bench speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Bidirectional WebSocket, JSON.
    #[value(name = "websocket")]
    Websocket,
    /// Bidirectional WebSocket, Protobuf (subprotocol `centrifuge-protobuf`).
    #[value(name = "websocket_protobuf")]
    WebsocketProtobuf,
    /// HTTP-streaming emulation, JSON.
    #[value(name = "http_stream")]
    HttpStream,
    /// HTTP-streaming emulation, Protobuf.
    #[value(name = "http_stream_protobuf")]
    HttpStreamProtobuf,
    /// SSE emulation (JSON).
    #[value(name = "sse")]
    Sse,
    /// Unidirectional WebSocket.
    #[value(name = "uni_websocket")]
    UniWebsocket,
    /// Unidirectional SSE.
    #[value(name = "uni_sse")]
    UniSse,
    /// Unidirectional HTTP streaming over HTTP/1.1.
    #[value(name = "uni_http_stream")]
    UniHttpStream,
    /// Unidirectional HTTP streaming over h2c (HTTP/2 with prior knowledge).
    #[value(name = "uni_http_stream_h2c")]
    UniHttpStreamH2c,
    /// Unidirectional gRPC (`CentrifugoUniStream/Consume`).
    #[value(name = "uni_grpc")]
    UniGrpc,
    /// Herald's bidirectional gRPC (`HeraldStream/Connect`); Centrifugo has none.
    #[value(name = "grpc")]
    Grpc,
}

impl Transport {
    /// Every transport, in report order.
    pub const ALL: [Transport; 11] = [
        Transport::Websocket,
        Transport::WebsocketProtobuf,
        Transport::HttpStream,
        Transport::HttpStreamProtobuf,
        Transport::Sse,
        Transport::UniWebsocket,
        Transport::UniSse,
        Transport::UniHttpStream,
        Transport::UniHttpStreamH2c,
        Transport::UniGrpc,
        Transport::Grpc,
    ];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::WebsocketProtobuf => "websocket_protobuf",
            Transport::HttpStream => "http_stream",
            Transport::HttpStreamProtobuf => "http_stream_protobuf",
            Transport::Sse => "sse",
            Transport::UniWebsocket => "uni_websocket",
            Transport::UniSse => "uni_sse",
            Transport::UniHttpStream => "uni_http_stream",
            Transport::UniHttpStreamH2c => "uni_http_stream_h2c",
            Transport::UniGrpc => "uni_grpc",
            Transport::Grpc => "grpc",
        }
    }

    /// Whether the client sends commands after connecting (subscribe, pongs).
    pub fn bidirectional(self) -> bool {
        matches!(
            self,
            Transport::Websocket
                | Transport::WebsocketProtobuf
                | Transport::HttpStream
                | Transport::HttpStreamProtobuf
                | Transport::Sse
                | Transport::Grpc
        )
    }

    /// The encoding of the messages the server sends.
    fn kind(self) -> Kind {
        match self {
            Transport::Websocket | Transport::HttpStream | Transport::Sse => Kind::JsonReply,
            Transport::WebsocketProtobuf | Transport::HttpStreamProtobuf | Transport::Grpc => {
                Kind::ProtoReply
            }
            Transport::UniWebsocket
            | Transport::UniSse
            | Transport::UniHttpStream
            | Transport::UniHttpStreamH2c => Kind::JsonPush,
            Transport::UniGrpc => Kind::ProtoPush,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the server encodes what it sends on a transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    JsonReply,
    ProtoReply,
    JsonPush,
    ProtoPush,
}

/// Where the server is and how to authenticate.
#[derive(Clone, Debug)]
pub struct Target {
    /// The HTTP listener (every HTTP transport, WebSocket, the HTTP API; Herald's gRPC).
    pub addr: SocketAddr,
    /// Where `CentrifugoUniStream/Consume` is served (Herald: `addr`; Centrifugo: port 11000
    /// by default).
    pub uni_grpc_addr: SocketAddr,
    /// Where the gRPC server API is served (Herald: `addr`; Centrifugo: port 10000).
    pub grpc_api_addr: SocketAddr,
    /// The nodes subscribers connect to, round robin (`addr` first; more when several nodes
    /// share a broker). Publications always go to `addr`'s API.
    pub nodes: Vec<SocketAddr>,
    /// `http_api.key` (and the gRPC API key).
    pub api_key: String,
    /// `client.token.hmac_secret_key`, to sign connection tokens.
    pub secret: String,
}

/// What every client shares.
#[derive(Debug)]
pub struct Shared {
    /// The server.
    pub target: Target,
    /// Counters and histograms.
    pub recorder: Arc<Recorder>,
    /// Stops every client.
    pub cancel: CancellationToken,
    /// For `/emulation` requests.
    pub http: HttpClient,
    /// Publisher tasks (one sequence per publisher per channel).
    pub publishers: u32,
    /// Handshakes allowed at once.
    pub handshakes: Semaphore,
    /// What each client reported when it stopped.
    pub reports: Mutex<Vec<ConnReport>>,
    /// The user every client connects as (one user: one API `disconnect` drops them all).
    pub user: String,
    /// Connection tokens by channel (uni transports need the channel in the token).
    tokens: Mutex<HashMap<String, String>>,
}

impl Shared {
    /// Shared state for clients of `target`.
    pub fn new(
        target: Target,
        recorder: Arc<Recorder>,
        publishers: u32,
        handshakes: usize,
        user: &str,
    ) -> Shared {
        Shared {
            target,
            recorder,
            cancel: CancellationToken::new(),
            http: crate::net::http_client(None, 64),
            publishers,
            handshakes: Semaphore::new(handshakes.max(1)),
            reports: Mutex::new(Vec::new()),
            user: user.to_string(),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A token for this run's user: with `channel` in `channels` for uni transports.
    fn token(&self, channel: Option<&str>) -> String {
        let key = channel.unwrap_or("").to_string();
        if let Some(t) = self.tokens.lock().get(&key) {
            return t.clone();
        }
        let channels: Vec<String> = channel.map(|c| vec![c.to_string()]).unwrap_or_default();
        let t = crate::token::connection_token(&self.target.secret, &self.user, &channels);
        self.tokens.lock().insert(key, t.clone());
        t
    }
}

/// One subscriber.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// Index among all clients (shard choice, jitter).
    pub id: usize,
    /// Transport.
    pub transport: Transport,
    /// Channel name.
    pub channel: String,
    /// Channel index, as in payload stamps.
    pub channel_idx: u32,
    /// Source address to connect from.
    pub source: Option<IpAddr>,
    /// The node to connect to (its HTTP listener; `/emulation` goes there too).
    pub addr: SocketAddr,
    /// Reconnect and recover after a server disconnect.
    pub reconnect: bool,
    /// Decode every message to keep the stream position (needed to recover).
    pub track_positions: bool,
    /// Upper bound of a random-ish delay before reconnecting, milliseconds.
    pub reconnect_jitter_ms: u64,
}

/// What a client reports when the run stops.
#[derive(Clone, Debug, Default)]
pub struct ConnReport {
    /// Channel index.
    pub channel_idx: u32,
    /// Distinct publications per publisher.
    pub unique: Vec<u64>,
    /// Extra copies.
    pub duplicates: u64,
    /// Out-of-order arrivals.
    pub reordered: u64,
    /// Times it connected and subscribed.
    pub sessions: u32,
    /// Whether it was subscribed when stopped.
    pub subscribed: bool,
}

/// One normalised message the client reacts to.
#[derive(Debug)]
enum Event {
    Ping,
    Disconnect(u32, String),
    Connected(Connected),
    Subscribed(proto::SubscribeResult),
    Error(u32, u32, String),
    Other,
}

#[derive(Debug, Default)]
struct Connected {
    session: String,
    node: String,
    subs: HashMap<String, proto::SubscribeResult>,
}

impl From<proto::ConnectResult> for Connected {
    fn from(c: proto::ConnectResult) -> Self {
        Connected {
            session: c.session,
            node: c.node,
            subs: c.subs.into_iter().collect(),
        }
    }
}

impl From<proto::Connect> for Connected {
    fn from(c: proto::Connect) -> Self {
        Connected {
            session: c.session,
            node: c.node,
            subs: c.subs.into_iter().collect(),
        }
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Stopped,
    Disconnected(u32, String),
    Failed(String),
}

/// A subscriber's state across its sessions.
struct Conn {
    spec: ClientSpec,
    shared: Arc<Shared>,
    trackers: Vec<SeqTracker>,
    /// (offset, epoch) of the last publication or subscribe result.
    position: Option<(u64, String)>,
    sessions: u32,
    subscribed: bool,
}

impl Conn {
    /// Handles one protocol message (`decode`: also when it carries publications).
    fn on_unit(&mut self, kind: Kind, unit: &[u8], decode: bool) -> Event {
        let has_pubs = payload::has_marker(unit);
        if has_pubs {
            let now = payload::now_ns();
            let mut shard = self.shared.recorder.shard(self.spec.id).lock();
            let trackers = &mut self.trackers;
            let channel = self.spec.channel_idx;
            payload::scan(unit, |s| {
                if s.channel != channel {
                    return;
                }
                let Some(t) = trackers.get_mut(s.publisher as usize) else {
                    return;
                };
                match t.observe(s.seq) {
                    Seen::New => {
                        shard.unique += 1;
                        shard.latency.record_since(s.t_ns, now);
                    }
                    Seen::Duplicate => shard.duplicates += 1,
                }
            });
            if !decode {
                return Event::Other;
            }
        }
        match kind {
            Kind::JsonReply | Kind::ProtoReply => {
                let reply = if kind == Kind::JsonReply {
                    if unit == b"{}" {
                        return Event::Ping;
                    }
                    Encoding::Json
                        .decode::<Reply>(unit, usize::MAX)
                        .ok()
                        .and_then(|mut v| v.pop())
                } else {
                    Reply::decode(unit).ok()
                };
                let Some(reply) = reply else {
                    return Event::Error(
                        0,
                        0,
                        format!(
                            "undecodable reply: {}",
                            String::from_utf8_lossy(&unit[..unit.len().min(120)])
                        ),
                    );
                };
                if let Some(push) = reply.push {
                    return self.on_push(push);
                }
                if let Some(e) = reply.error {
                    return Event::Error(reply.id, e.code, e.message);
                }
                if let Some(c) = reply.connect {
                    return Event::Connected(c.into());
                }
                if let Some(s) = reply.subscribe {
                    return Event::Subscribed(s);
                }
                if reply.id == 0 {
                    return Event::Ping;
                }
                Event::Other
            }
            Kind::JsonPush | Kind::ProtoPush => {
                let push = if kind == Kind::JsonPush {
                    if unit == b"{}" {
                        return Event::Ping;
                    }
                    Encoding::UniJson
                        .decode::<Push>(unit, usize::MAX)
                        .ok()
                        .and_then(|mut v| v.pop())
                } else {
                    Push::decode(unit).ok()
                };
                match push {
                    Some(p) if p == Push::default() => Event::Ping,
                    Some(p) => self.on_push(p),
                    None => Event::Error(
                        0,
                        0,
                        format!(
                            "undecodable push: {}",
                            String::from_utf8_lossy(&unit[..unit.len().min(120)])
                        ),
                    ),
                }
            }
        }
    }

    fn on_push(&mut self, push: Push) -> Event {
        if let Some(p) = push.r#pub {
            if push.channel.is_empty() || push.channel == self.spec.channel {
                if let Some(pos) = &mut self.position {
                    pos.0 = pos.0.max(p.offset);
                } else {
                    self.position = Some((p.offset, String::new()));
                }
            }
            return Event::Other;
        }
        if let Some(d) = push.disconnect {
            return Event::Disconnect(d.code, d.reason);
        }
        if let Some(c) = push.connect {
            return Event::Connected(c.into());
        }
        Event::Other
    }

    fn report(&self) -> ConnReport {
        ConnReport {
            channel_idx: self.spec.channel_idx,
            unique: self.trackers.iter().map(|t| t.unique).collect(),
            duplicates: self.trackers.iter().map(|t| t.duplicates).sum(),
            reordered: self.trackers.iter().map(|t| t.reordered).sum(),
            sessions: self.sessions,
            subscribed: self.subscribed,
        }
    }

    fn connect_request(&self, uni: bool) -> proto::ConnectRequest {
        let token = self.shared.token(uni.then_some(self.spec.channel.as_str()));
        let mut req = proto::ConnectRequest {
            token,
            name: "herald-bench".into(),
            ..Default::default()
        };
        if uni && let Some((offset, epoch)) = &self.position {
            req.subs.insert(
                self.spec.channel.clone(),
                proto::SubscribeRequest {
                    recover: true,
                    offset: *offset,
                    epoch: epoch.clone(),
                    ..Default::default()
                },
            );
        }
        req
    }

    fn subscribe_command(&self) -> Command {
        let mut req = proto::SubscribeRequest {
            channel: self.spec.channel.clone(),
            ..Default::default()
        };
        if let Some((offset, epoch)) = &self.position {
            req.recover = true;
            req.offset = *offset;
            req.epoch = epoch.clone();
        }
        Command {
            id: 2,
            subscribe: Some(req),
            ..Default::default()
        }
    }

    /// Keeps the position a subscribe result puts the client at.
    fn on_subscribed(&mut self, r: &proto::SubscribeResult) {
        let asked = self.position.is_some();
        if asked && !r.recovered {
            self.shared
                .recorder
                .unrecovered
                .fetch_add(1, Ordering::Relaxed);
        }
        if self.spec.track_positions || self.position.is_none() {
            self.position = Some((r.offset, r.epoch.clone()));
        }
        if !self.spec.track_positions {
            // Without tracking, never ask for recovery from a stale position.
            self.position = None;
        }
    }
}

/// Runs one subscriber until the run stops.
pub async fn run_client(spec: ClientSpec, shared: Arc<Shared>) {
    let mut conn = Conn {
        trackers: vec![SeqTracker::default(); shared.publishers.max(1) as usize],
        spec,
        shared: shared.clone(),
        position: None,
        sessions: 0,
        subscribed: false,
    };
    let rec = shared.recorder.clone();
    loop {
        let end = tokio::select! {
            _ = shared.cancel.cancelled() => End::Stopped,
            end = session(&mut conn) => end,
        };
        let was_subscribed = std::mem::replace(&mut conn.subscribed, false);
        if matches!(end, End::Stopped) {
            conn.subscribed = was_subscribed;
            break;
        }
        // `down` first: a reader that sees the disconnect counted sees the client down.
        if was_subscribed {
            rec.down.fetch_add(1, Ordering::Relaxed);
            rec.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        match end {
            End::Stopped => unreachable!("handled above"),
            // Expected in reconnect runs; an error otherwise.
            End::Disconnected(code, reason) if !conn.spec.reconnect => rec.error(format!(
                "{} client {}: disconnected {code} {reason}",
                conn.spec.transport, conn.spec.id
            )),
            End::Disconnected(..) => {}
            End::Failed(why) => rec.error(format!(
                "{} client {}: {why}",
                conn.spec.transport, conn.spec.id
            )),
        }
        if !conn.spec.reconnect {
            break;
        }
        // Back off a little (and differently per client) before reconnecting.
        let jitter = if conn.spec.reconnect_jitter_ms > 0 {
            (conn.spec.id as u64).wrapping_mul(7919) % conn.spec.reconnect_jitter_ms
        } else {
            0
        };
        let pause = Duration::from_millis(jitter.max(if was_subscribed { 0 } else { 200 }));
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let report = conn.report();
    shared.reports.lock().push(report);
}

/// One session: open, connect, subscribe, then read until disconnected or stopped.
async fn session(conn: &mut Conn) -> End {
    let shared = conn.shared.clone();
    let transport = conn.spec.transport;
    let kind = transport.kind();
    let permit = match shared.handshakes.acquire().await {
        Ok(p) => p,
        Err(_) => return End::Stopped,
    };
    let handshake = async {
        let mut link = open(conn).await?;
        let connected =
            wait_for(&mut link, conn, kind, |e| matches!(e, Event::Connected(_))).await?;
        let Event::Connected(connected) = connected else {
            unreachable!()
        };
        if transport.bidirectional() {
            if let Link::Body { emulation, .. } = &mut link {
                *emulation = Some((
                    connected.session.clone(),
                    connected.node.clone(),
                    conn.spec.addr,
                ));
            }
            let cmd = conn.subscribe_command();
            link.send(&shared, cmd).await.map_err(End::Failed)?;
            let sub =
                wait_for(&mut link, conn, kind, |e| matches!(e, Event::Subscribed(_))).await?;
            let Event::Subscribed(r) = sub else {
                unreachable!()
            };
            conn.on_subscribed(&r);
        } else {
            let r = connected
                .subs
                .get(&conn.spec.channel)
                .cloned()
                .ok_or_else(|| {
                    End::Failed(format!(
                        "connect result has no subscription to {} (the token's channels claim)",
                        conn.spec.channel
                    ))
                })?;
            conn.on_subscribed(&r);
        }
        Ok::<Link, End>(link)
    };
    let mut link = match tokio::time::timeout(Duration::from_secs(20), handshake).await {
        Ok(Ok(link)) => link,
        Ok(Err(end)) => return end,
        Err(_) => return End::Failed("connect and subscribe took over 20 s".into()),
    };
    drop(permit);
    conn.sessions += 1;
    conn.subscribed = true;
    if conn.sessions > 1 {
        shared.recorder.down.fetch_sub(1, Ordering::Relaxed);
    }
    shared.recorder.subscribed.fetch_add(1, Ordering::Relaxed);
    let decode = conn.spec.track_positions;
    loop {
        let events = match link.recv(conn, kind, decode).await {
            Ok(e) => e,
            Err(end) => return end,
        };
        for e in events {
            match e {
                Event::Ping if transport.bidirectional() => {
                    if let Err(e) = link.send(&shared, Command::default()).await {
                        return End::Failed(format!("pong: {e}"));
                    }
                }
                Event::Disconnect(code, reason) => return End::Disconnected(code, reason),
                Event::Error(id, code, msg) => {
                    shared
                        .recorder
                        .error(format!("{transport}: error reply {id}: {code} {msg}"));
                }
                _ => {}
            }
        }
    }
}

/// Reads until an event matching `pred` arrives; errors and disconnects end the wait.
async fn wait_for(
    link: &mut Link,
    conn: &mut Conn,
    kind: Kind,
    pred: impl Fn(&Event) -> bool,
) -> Result<Event, End> {
    let shared = conn.shared.clone();
    loop {
        let events = link.recv(conn, kind, true).await?;
        for e in events {
            if pred(&e) {
                return Ok(e);
            }
            match e {
                Event::Error(id, code, msg) => {
                    return Err(End::Failed(format!(
                        "error reply to command {id}: {code} {msg}"
                    )));
                }
                Event::Disconnect(code, reason) => return Err(End::Disconnected(code, reason)),
                Event::Ping if conn.spec.transport.bidirectional() => {
                    link.send(&shared, Command::default())
                        .await
                        .map_err(End::Failed)?;
                }
                _ => {}
            }
        }
    }
}

/// A connection of any transport.
enum Link {
    Ws {
        ws: Box<WebSocketStream<Counted<TcpStream>>>,
        encoding: Encoding,
        uni: bool,
    },
    Body {
        body: Incoming,
        framer: Framer,
        /// Session, node and address for `/emulation` (bidirectional emulation only).
        emulation: Option<(String, String, SocketAddr)>,
        protobuf: bool,
        _conn: AbortOnDrop,
    },
    Grpc {
        stream: tonic::Streaming<Bytes>,
        commands: Option<mpsc::UnboundedSender<Command>>,
        _channel: tonic::transport::Channel,
    },
}

impl Link {
    /// The events of the next read (one frame, chunk or message).
    async fn recv(&mut self, conn: &mut Conn, kind: Kind, decode: bool) -> Result<Vec<Event>, End> {
        let mut out = Vec::new();
        match self {
            Link::Ws { ws, encoding, uni } => loop {
                let Some(msg) = ws.next().await else {
                    return Err(End::Disconnected(0, "connection closed".into()));
                };
                let msg = msg.map_err(|e| End::Failed(format!("WebSocket: {e}")))?;
                if let Some((code, reason)) = msg.as_close() {
                    return Err(End::Disconnected(
                        u16::from(code).into(),
                        reason.to_string(),
                    ));
                }
                if !msg.is_text() && !msg.is_binary() {
                    continue;
                }
                let frame: &[u8] = msg.as_payload();
                if *uni || encoding.is_json() {
                    for line in frame.split(|b| *b == b'\n') {
                        if !line.is_empty() {
                            out.push(conn.on_unit(kind, line, decode));
                        }
                    }
                } else {
                    let mut rest = frame;
                    while !rest.is_empty() {
                        let len = prost::encoding::decode_varint(&mut rest)
                            .map_err(|e| End::Failed(format!("bad length prefix: {e}")))?
                            as usize;
                        if len > rest.len() {
                            return Err(End::Failed("truncated Protobuf frame".into()));
                        }
                        out.push(conn.on_unit(kind, &rest[..len], decode));
                        rest = &rest[len..];
                    }
                }
                return Ok(out);
            },
            Link::Body { body, framer, .. } => loop {
                let Some(frame) = body.frame().await else {
                    return Err(End::Disconnected(0, "response ended".into()));
                };
                let frame = frame.map_err(|e| End::Failed(format!("response body: {e}")))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let mut err = None;
                framer.feed(
                    &data,
                    |unit| out.push(conn.on_unit(kind, unit, decode)),
                    &mut err,
                );
                if let Some(e) = err {
                    return Err(End::Failed(e));
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            },
            Link::Grpc { stream, .. } => match stream.message().await {
                Ok(Some(msg)) => {
                    out.push(conn.on_unit(kind, &msg, decode));
                    Ok(out)
                }
                Ok(None) => Err(End::Disconnected(0, "stream ended".into())),
                Err(status) => Err(End::Failed(format!("gRPC status {status}"))),
            },
        }
    }

    /// Sends a command (bidirectional transports).
    async fn send(&mut self, shared: &Shared, cmd: Command) -> Result<(), String> {
        match self {
            Link::Ws { ws, encoding, .. } => {
                let bytes = encoding.encode(&cmd);
                let msg = if encoding.is_json() {
                    Message::text(bytes)
                } else {
                    Message::binary(bytes)
                };
                ws.send(msg)
                    .await
                    .map_err(|e| format!("WebSocket send: {e}"))
            }
            Link::Body {
                emulation,
                protobuf,
                ..
            } => {
                let Some((session, node, addr)) = emulation else {
                    return Err("no emulation session".into());
                };
                let (body, ct) = if *protobuf {
                    let mut data = BytesMut::new();
                    let _ = cmd.encode_length_delimited(&mut data);
                    let req = proto::EmulationRequest {
                        node: node.clone(),
                        session: session.clone(),
                        data: data.freeze(),
                    };
                    (Bytes::from(req.encode_to_vec()), "application/octet-stream")
                } else {
                    let line = Encoding::Json.encode(&cmd);
                    let data = String::from_utf8_lossy(&line).into_owned();
                    let v = serde_json::json!({"session": session, "node": node, "data": data});
                    (Bytes::from(v.to_string()), "application/json")
                };
                let uri = format!("http://{addr}/emulation");
                let req = http::Request::post(uri)
                    .header(http::header::CONTENT_TYPE, ct)
                    .body(Full::new(body))
                    .map_err(|e| e.to_string())?;
                let resp = tokio::time::timeout(Duration::from_secs(10), shared.http.request(req))
                    .await
                    .map_err(|_| "POST /emulation timed out".to_string())?
                    .map_err(|e| format!("POST /emulation: {e}"))?;
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                // Herald answers 200 (handed to the session); Centrifugo 204.
                if !status.is_success() {
                    return Err(format!("POST /emulation: HTTP {status}"));
                }
                Ok(())
            }
            Link::Grpc { commands, .. } => match commands {
                Some(tx) => tx.send(cmd).map_err(|_| "gRPC stream closed".to_string()),
                None => Err("unidirectional gRPC takes no commands".into()),
            },
        }
    }
}

/// Splits a streamed response body into protocol messages.
#[derive(Debug)]
enum Framer {
    /// Newline-delimited JSON.
    Lines(BytesMut),
    /// SSE events: each `data:` line is one JSON message.
    Sse(BytesMut),
    /// Varint-length-prefixed Protobuf.
    Delimited(BytesMut),
}

impl Framer {
    fn feed(&mut self, chunk: &[u8], mut unit: impl FnMut(&[u8]), err: &mut Option<String>) {
        match self {
            Framer::Lines(buf) => {
                buf.extend_from_slice(chunk);
                let Some(last) = memchr::memrchr(b'\n', buf) else {
                    return;
                };
                let complete = buf.split_to(last + 1);
                for line in complete[..].split(|b| *b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if !line.is_empty() {
                        unit(line);
                    }
                }
            }
            Framer::Sse(buf) => {
                buf.extend_from_slice(chunk);
                let Some(last) = memchr::memrchr(b'\n', buf) else {
                    return;
                };
                let complete = buf.split_to(last + 1);
                for line in complete[..].split(|b| *b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if let Some(data) = line.strip_prefix(b"data:") {
                        let data = data.strip_prefix(b" ").unwrap_or(data);
                        if !data.is_empty() {
                            unit(data);
                        }
                    }
                }
            }
            Framer::Delimited(buf) => {
                buf.extend_from_slice(chunk);
                loop {
                    let mut peek: &[u8] = buf;
                    let before = peek.len();
                    let len = match prost::encoding::decode_varint(&mut peek) {
                        Ok(l) => l as usize,
                        Err(_) if buf.len() < 10 => return,
                        Err(e) => {
                            *err = Some(format!("bad length prefix: {e}"));
                            return;
                        }
                    };
                    let header = before - peek.len();
                    if buf.len() < header + len {
                        return;
                    }
                    buf.advance(header);
                    let msg = buf.split_to(len);
                    unit(&msg);
                }
            }
        }
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Opens the connection and sends the connect (command or request).
async fn open(conn: &mut Conn) -> Result<Link, End> {
    let shared = conn.shared.clone();
    let t = &shared.target;
    let src = conn.spec.source;
    let counter = Some(shared.recorder.clone());
    let fail = |what: &str, e: &dyn std::fmt::Display| End::Failed(format!("{what}: {e}"));
    let connect_cmd = |conn: &Conn| Command {
        id: 1,
        connect: Some(conn.connect_request(false)),
        ..Default::default()
    };
    match conn.spec.transport {
        Transport::Websocket | Transport::WebsocketProtobuf | Transport::UniWebsocket => {
            let protobuf = conn.spec.transport == Transport::WebsocketProtobuf;
            let uni = conn.spec.transport == Transport::UniWebsocket;
            let path = if uni {
                "/connection/uni_websocket"
            } else {
                "/connection/websocket"
            };
            let tcp = connect_tcp(src, conn.spec.addr)
                .await
                .map_err(|e| fail("TCP connect", &e))?;
            let uri: http::Uri = format!("ws://{}{path}", conn.spec.addr)
                .parse()
                .map_err(|e| fail("URI", &e))?;
            let mut builder = ClientBuilder::from_uri(uri).limits(Limits::unlimited());
            if protobuf {
                builder = builder
                    .add_header(
                        http::header::SEC_WEBSOCKET_PROTOCOL,
                        http::HeaderValue::from_static("centrifuge-protobuf"),
                    )
                    .map_err(|e| fail("header", &e))?;
            }
            let (ws, _) = builder
                .connect_on(Counted::new(tcp, counter))
                .await
                .map_err(|e| fail("WebSocket handshake", &e))?;
            let encoding = if protobuf {
                Encoding::Protobuf
            } else {
                Encoding::Json
            };
            let mut link = Link::Ws {
                ws: Box::new(ws),
                encoding,
                uni,
            };
            if uni {
                let req = conn.connect_request(true);
                let body = serde_json::to_string(&req).map_err(|e| fail("encode", &e))?;
                if let Link::Ws { ws, .. } = &mut link {
                    ws.send(Message::text(body))
                        .await
                        .map_err(|e| fail("WebSocket send", &e))?;
                }
            } else {
                link.send(&shared, connect_cmd(conn))
                    .await
                    .map_err(End::Failed)?;
            }
            Ok(link)
        }
        Transport::HttpStream
        | Transport::HttpStreamProtobuf
        | Transport::Sse
        | Transport::UniSse
        | Transport::UniHttpStream
        | Transport::UniHttpStreamH2c => {
            let h2 = conn.spec.transport == Transport::UniHttpStreamH2c;
            let protobuf = conn.spec.transport == Transport::HttpStreamProtobuf;
            let (method, path, ct, body, framer) = match conn.spec.transport {
                Transport::HttpStream => (
                    http::Method::POST,
                    "/connection/http_stream".to_string(),
                    "application/json",
                    Bytes::from(Encoding::Json.encode(&connect_cmd(conn)).to_vec()),
                    Framer::Lines(BytesMut::new()),
                ),
                Transport::HttpStreamProtobuf => (
                    http::Method::POST,
                    "/connection/http_stream".to_string(),
                    "application/octet-stream",
                    Encoding::Protobuf.encode(&connect_cmd(conn)),
                    Framer::Delimited(BytesMut::new()),
                ),
                Transport::Sse => {
                    let line = Encoding::Json.encode(&connect_cmd(conn));
                    let q = url_encode(&String::from_utf8_lossy(&line));
                    (
                        http::Method::GET,
                        format!("/connection/sse?cf_connect={q}"),
                        "text/event-stream",
                        Bytes::new(),
                        Framer::Sse(BytesMut::new()),
                    )
                }
                Transport::UniSse => {
                    let req = serde_json::to_string(&conn.connect_request(true))
                        .map_err(|e| fail("encode", &e))?;
                    (
                        http::Method::GET,
                        format!("/connection/uni_sse?cf_connect={}", url_encode(&req)),
                        "text/event-stream",
                        Bytes::new(),
                        Framer::Sse(BytesMut::new()),
                    )
                }
                _ => {
                    let req = serde_json::to_vec(&conn.connect_request(true))
                        .map_err(|e| fail("encode", &e))?;
                    (
                        http::Method::POST,
                        "/connection/uni_http_stream".to_string(),
                        "application/json",
                        Bytes::from(req),
                        Framer::Lines(BytesMut::new()),
                    )
                }
            };
            let tcp = connect_tcp(src, conn.spec.addr)
                .await
                .map_err(|e| fail("TCP connect", &e))?;
            let io = TokioIo::new(Counted::new(tcp, counter));
            let mut req = http::Request::builder().method(method);
            req = if h2 {
                req.uri(format!("http://{}{path}", conn.spec.addr))
            } else {
                req.uri(path)
                    .header(http::header::HOST, conn.spec.addr.to_string())
            };
            let header = if ct == "text/event-stream" {
                http::header::ACCEPT
            } else {
                http::header::CONTENT_TYPE
            };
            let req = req
                .header(header, ct)
                .body(Full::new(body))
                .map_err(|e| fail("request", &e))?;
            let (resp, task) = if h2 {
                let (mut sender, c) =
                    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                        .handshake::<_, Full<Bytes>>(io)
                        .await
                        .map_err(|e| fail("HTTP/2 handshake", &e))?;
                let task = AbortOnDrop(tokio::spawn(async move {
                    let _ = c.await;
                }));
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| fail("request", &e))?;
                (resp, task)
            } else {
                let (mut sender, c) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
                    .await
                    .map_err(|e| fail("HTTP/1.1 handshake", &e))?;
                let task = AbortOnDrop(tokio::spawn(async move {
                    let _ = c.await;
                }));
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(|e| fail("request", &e))?;
                (resp, task)
            };
            if resp.status() != http::StatusCode::OK {
                let status = resp.status();
                let text = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                return Err(End::Failed(format!("HTTP {status}: {}", text.trim())));
            }
            Ok(Link::Body {
                body: resp.into_body(),
                framer,
                emulation: None,
                protobuf,
                _conn: task,
            })
        }
        Transport::UniGrpc | Transport::Grpc => {
            let uni = conn.spec.transport == Transport::UniGrpc;
            let addr = if uni { t.uni_grpc_addr } else { conn.spec.addr };
            let channel = grpc_channel(src, addr, counter)
                .await
                .map_err(|e| fail("gRPC connect", &e))?;
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.map_err(|e| fail("gRPC ready", &e))?;
            if uni {
                let path = http::uri::PathAndQuery::from_static(
                    "/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume",
                );
                let stream = grpc
                    .server_streaming(
                        tonic::Request::new(conn.connect_request(true)),
                        path,
                        RawCodec::<proto::ConnectRequest>::default(),
                    )
                    .await
                    .map_err(|e| fail("Consume", &e))?
                    .into_inner();
                Ok(Link::Grpc {
                    stream,
                    commands: None,
                    _channel: channel,
                })
            } else {
                let (tx, rx) = mpsc::unbounded_channel::<Command>();
                tx.send(connect_cmd(conn))
                    .map_err(|_| End::Failed("gRPC queue".into()))?;
                let requests = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|c| (c, rx))
                });
                let path =
                    http::uri::PathAndQuery::from_static("/herald.stream.HeraldStream/Connect");
                let stream = grpc
                    .streaming(
                        tonic::Request::new(requests),
                        path,
                        RawCodec::<Command>::default(),
                    )
                    .await
                    .map_err(|e| fail("HeraldStream/Connect", &e))?
                    .into_inner();
                Ok(Link::Grpc {
                    stream,
                    commands: Some(tx),
                    _channel: channel,
                })
            }
        }
    }
}

/// A gRPC channel over one TCP connection from `src`.
pub async fn grpc_channel(
    src: Option<IpAddr>,
    addr: SocketAddr,
    counter: Option<Arc<Recorder>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let connector = crate::net::Connector { src, counter };
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_with_connector(connector)
        .await
}

/// A tonic codec that encodes requests with prost and hands responses over as their bytes
/// (decoded, or scanned, by the client).
#[derive(Debug)]
pub struct RawCodec<E>(PhantomData<E>);

impl<E> Default for RawCodec<E> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

/// Encoder half of [`RawCodec`].
#[derive(Debug)]
pub struct ProstEncoder<E>(PhantomData<E>);

/// Decoder half of [`RawCodec`].
#[derive(Debug)]
pub struct BytesDecoder;

impl<E: prost::Message + Send + 'static> tonic::codec::Codec for RawCodec<E> {
    type Encode = E;
    type Decode = Bytes;
    type Encoder = ProstEncoder<E>;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}

impl<E: prost::Message> tonic::codec::Encoder for ProstEncoder<E> {
    type Item = E;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: E,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(framer: &mut Framer, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for c in chunks {
            let mut err = None;
            framer.feed(
                c,
                |u| out.push(String::from_utf8_lossy(u).into_owned()),
                &mut err,
            );
            assert!(err.is_none());
        }
        out
    }

    #[test]
    fn framers_reassemble_split_messages() {
        let mut lines = Framer::Lines(BytesMut::new());
        assert_eq!(
            units(&mut lines, &[b"{\"a\"", b":1}\n{}\r\n{\"b", b"\":2}\n"]),
            vec!["{\"a\":1}", "{}", "{\"b\":2}"]
        );
        let mut sse = Framer::Sse(BytesMut::new());
        assert_eq!(
            units(
                &mut sse,
                &[b"id: 1:e:x\ndata: {\"a\"", b":1}\n\n: comment\ndata:{}\n\n"]
            ),
            vec!["{\"a\":1}", "{}"]
        );
        let mut delimited = Framer::Delimited(BytesMut::new());
        let mut wire = Vec::new();
        for m in [&b"hello"[..], b"", &[7u8; 200][..]] {
            prost::encoding::encode_varint(m.len() as u64, &mut wire);
            wire.extend_from_slice(m);
        }
        let (a, b) = wire.split_at(7);
        let got = units(&mut delimited, &[&a[..1], &a[1..], &b[..2], &b[2..]]);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], "hello");
        assert_eq!(got[1], "");
        assert_eq!(got[2].len(), 200);
    }

    #[test]
    fn transport_names_round_trip() {
        use clap::ValueEnum;
        for t in Transport::ALL {
            assert_eq!(Transport::from_str(t.name(), false).unwrap(), t);
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::Value::String(t.name().into())
            );
        }
    }
}
