//! Real clients for every transport, gRPC included, reduced to one shape: an [`EventStream`] of
//! normalized [`Event`]s (connect results, subscribe replies, publications, disconnects,
//! pings), so that a test can drive any transport the same way.
//!
//! Wire layers, each written here from the protocol text and independent of Herald's own
//! codecs: an SSE parser ([`SseParser`]: `id`, `event`, multi-line `data`, comments,
//! blank-line dispatch, CR/LF/CRLF), a newline-delimited reader ([`LineReader`]) and a
//! varint-length-prefixed reader ([`DelimitedReader`]). JSON messages are read as
//! `serde_json::Value`s; Protobuf messages with `prost` and the generated schema types.
//!
//! Connections: [`Http`] opens one connection per request with hyper's client connections:
//! HTTP/1.1 or h2c (prior knowledge) over TCP, or over TLS (tokio-rustls, ALPN `h2` or
//! `http/1.1`) trusting a test certificate ([`TlsFiles`], made by rcgen). WebSockets
//! (bidirectional JSON or Protobuf, and uni_websocket) use tokio-websockets on top of the
//! same connections, so they work over TLS too. [`curl`] runs the real curl binary.
//!
//! A [`Conn`] is a connected client: its stream, the connect result, and (bidirectional
//! transports) a way to send commands: over the WebSocket, or `POST /emulation` for the
//! emulation transports. A new transport needs one function that produces an
//! [`EventStream`] (feed normalized events into an [`EventTx`]) and, for bidirectional
//! ones, a [`Commander`].
//!
//! Every wait is bounded: reads by the caller's timeout, requests by [`super::WAIT`],
//! child processes by `--max-time`. Dropping a stream aborts its tasks, which closes the
//! connection (or kills curl).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use herald::protocol::proto;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_websockets::{ClientBuilder, Message};

use super::WAIT;

// ---------------------------------------------------------------------------------------
// Normalized events
// ---------------------------------------------------------------------------------------

/// A publication as a client saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pub {
    pub channel: String,
    pub offset: u64,
    /// The payload (JSON in these tests; a non-JSON payload becomes a JSON string).
    pub data: Value,
}

/// A stream position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// A subscribe result (a subscribe reply, or one entry of a connect result's `subs`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubInfo {
    pub recoverable: bool,
    pub positioned: bool,
    pub recovered: bool,
    pub was_recovering: bool,
    pub epoch: String,
    pub offset: u64,
    /// Publications recovered inside the result.
    pub publications: Vec<Pub>,
}

impl SubInfo {
    /// The position the result puts the client at.
    pub fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }
}

/// A connect result (bidirectional reply or unidirectional connect push).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectInfo {
    pub client: String,
    pub session: String,
    pub node: String,
    pub subs: HashMap<String, SubInfo>,
}

/// One protocol message, whatever the transport and encoding.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A connect result; the id is 0 for a unidirectional connect push.
    Connect(u32, ConnectInfo),
    /// A successful subscribe reply.
    Subscribed(u32, SubInfo),
    /// Any other reply, with its error (code, message) if any.
    Reply {
        id: u32,
        error: Option<(u32, String)>,
    },
    Pub(Pub),
    /// A disconnect push, or a WebSocket close frame.
    Disconnect {
        code: u32,
        reason: String,
    },
    /// A ping (empty message).
    Ping,
    /// Any other push (join, leave, unsubscribe, ...), described.
    Other(String),
}

impl Event {
    /// The id of a reply (0 for pushes).
    pub fn reply_id(&self) -> u32 {
        match self {
            Event::Connect(id, _) | Event::Subscribed(id, _) | Event::Reply { id, .. } => *id,
            _ => 0,
        }
    }
}

fn data_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn json_u64(v: &Value, key: &str) -> Result<u64, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(x) => x
            .as_u64()
            .ok_or_else(|| format!("`{key}` is not an unsigned integer in {v}")),
    }
}

fn json_u32(v: &Value, key: &str) -> Result<u32, String> {
    json_u64(v, key).and_then(|n| u32::try_from(n).map_err(|e| format!("`{key}`: {e}")))
}

fn json_str(v: &Value, key: &str) -> Result<String, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(x) => Err(format!("`{key}` is not a string: {x}")),
    }
}

fn json_bool(v: &Value, key: &str) -> Result<bool, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(x) => Err(format!("`{key}` is not a bool: {x}")),
    }
}

fn pub_from_json(channel: &str, p: &Value) -> Result<Pub, String> {
    Ok(Pub {
        channel: channel.to_string(),
        offset: json_u64(p, "offset")?,
        data: p.get("data").cloned().unwrap_or(Value::Null),
    })
}

fn sub_from_json(channel: &str, v: &Value) -> Result<SubInfo, String> {
    let publications = match v.get("publications") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| pub_from_json(channel, p))
            .collect::<Result<_, _>>()?,
        Some(x) => return Err(format!("`publications` is not an array: {x}")),
    };
    Ok(SubInfo {
        recoverable: json_bool(v, "recoverable")?,
        positioned: json_bool(v, "positioned")?,
        recovered: json_bool(v, "recovered")?,
        was_recovering: json_bool(v, "was_recovering")?,
        epoch: json_str(v, "epoch")?,
        offset: json_u64(v, "offset")?,
        publications,
    })
}

fn connect_from_json(v: &Value) -> Result<ConnectInfo, String> {
    let mut subs = HashMap::new();
    if let Some(map) = v.get("subs").and_then(Value::as_object) {
        for (channel, s) in map {
            subs.insert(channel.clone(), sub_from_json(channel, s)?);
        }
    }
    Ok(ConnectInfo {
        client: json_str(v, "client")?,
        session: json_str(v, "session")?,
        node: json_str(v, "node")?,
        subs,
    })
}

/// A JSON Push object (unidirectional message, or a bidirectional reply's `push`).
pub fn push_from_json(v: &Value) -> Result<Event, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("a push must be a JSON object: {v}"))?;
    if obj.is_empty() {
        return Ok(Event::Ping);
    }
    let channel = json_str(v, "channel")?;
    if let Some(p) = obj.get("pub") {
        return Ok(Event::Pub(pub_from_json(&channel, p)?));
    }
    if let Some(c) = obj.get("connect") {
        return Ok(Event::Connect(0, connect_from_json(c)?));
    }
    if let Some(d) = obj.get("disconnect") {
        return Ok(Event::Disconnect {
            code: json_u32(d, "code")?,
            reason: json_str(d, "reason")?,
        });
    }
    Ok(Event::Other(v.to_string()))
}

/// A JSON Reply object (bidirectional transports).
pub fn reply_from_json(v: &Value) -> Result<Event, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("a reply must be a JSON object: {v}"))?;
    if obj.is_empty() {
        return Ok(Event::Ping);
    }
    if let Some(p) = obj.get("push") {
        return push_from_json(p);
    }
    let id = json_u32(v, "id")?;
    if let Some(e) = obj.get("error") {
        return Ok(Event::Reply {
            id,
            error: Some((json_u32(e, "code")?, json_str(e, "message")?)),
        });
    }
    if let Some(c) = obj.get("connect") {
        return Ok(Event::Connect(id, connect_from_json(c)?));
    }
    if let Some(s) = obj.get("subscribe") {
        return Ok(Event::Subscribed(id, sub_from_json("", s)?));
    }
    Ok(Event::Reply { id, error: None })
}

fn pub_from_proto(channel: &str, p: &proto::Publication) -> Pub {
    Pub {
        channel: channel.to_string(),
        offset: p.offset,
        data: data_value(&p.data),
    }
}

fn sub_from_proto(channel: &str, s: &proto::SubscribeResult) -> SubInfo {
    SubInfo {
        recoverable: s.recoverable,
        positioned: s.positioned,
        recovered: s.recovered,
        was_recovering: s.was_recovering,
        epoch: s.epoch.clone(),
        offset: s.offset,
        publications: s
            .publications
            .iter()
            .map(|p| pub_from_proto(channel, p))
            .collect(),
    }
}

fn connect_from_proto(c: &proto::ConnectResult) -> ConnectInfo {
    ConnectInfo {
        client: c.client.clone(),
        session: c.session.clone(),
        node: c.node.clone(),
        subs: c
            .subs
            .iter()
            .map(|(ch, s)| (ch.clone(), sub_from_proto(ch, s)))
            .collect(),
    }
}

/// A Protobuf Push.
pub fn push_from_proto(p: &proto::Push) -> Event {
    if *p == proto::Push::default() {
        return Event::Ping;
    }
    if let Some(publication) = &p.r#pub {
        return Event::Pub(pub_from_proto(&p.channel, publication));
    }
    if let Some(c) = &p.connect {
        return Event::Connect(
            0,
            ConnectInfo {
                client: c.client.clone(),
                session: c.session.clone(),
                node: c.node.clone(),
                subs: c
                    .subs
                    .iter()
                    .map(|(ch, s)| (ch.clone(), sub_from_proto(ch, s)))
                    .collect(),
            },
        );
    }
    if let Some(d) = &p.disconnect {
        return Event::Disconnect {
            code: d.code,
            reason: d.reason.clone(),
        };
    }
    Event::Other(format!("{p:?}"))
}

/// A Protobuf Reply.
pub fn reply_from_proto(r: &proto::Reply) -> Event {
    if *r == proto::Reply::default() {
        return Event::Ping;
    }
    if let Some(p) = &r.push {
        return push_from_proto(p);
    }
    if let Some(e) = &r.error {
        return Event::Reply {
            id: r.id,
            error: Some((e.code, e.message.clone())),
        };
    }
    if let Some(c) = &r.connect {
        return Event::Connect(r.id, connect_from_proto(c));
    }
    if let Some(s) = &r.subscribe {
        return Event::Subscribed(r.id, sub_from_proto("", s));
    }
    Event::Reply {
        id: r.id,
        error: None,
    }
}

// ---------------------------------------------------------------------------------------
// Framing readers
// ---------------------------------------------------------------------------------------

/// One dispatched SSE event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The last event ID at dispatch (the spec's `lastEventId`: kept from earlier events
    /// when this one has no `id` field).
    pub id: String,
    /// The event type (`message` unless an `event` field said otherwise).
    pub event: String,
    /// The data lines joined with `\n`.
    pub data: String,
}

/// An incremental `text/event-stream` parser following the HTML living standard: lines
/// end with CRLF, LF or CR (also split across chunks); `:` starts a comment; a field's
/// value loses one leading space; `data` lines accumulate; `id` (without NUL) sets the
/// last event ID; a blank line dispatches the event (none when the data is empty).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    started: bool,
    data: String,
    event: String,
    last_id: String,
    /// Comment lines seen.
    pub comments: usize,
    /// The last valid `retry` field, in milliseconds.
    pub retry: Option<u64>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last event ID so far.
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                b'\n' => self.end_line(&mut out),
                _ => self.line.push(b),
            }
        }
        out
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let raw = std::mem::take(&mut self.line);
        let mut line = String::from_utf8_lossy(&raw).into_owned();
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_string();
            }
        }
        if line.is_empty() {
            if !self.data.is_empty() {
                if self.data.ends_with('\n') {
                    self.data.pop();
                }
                let event = if self.event.is_empty() {
                    "message".to_string()
                } else {
                    std::mem::take(&mut self.event)
                };
                out.push(SseEvent {
                    id: self.last_id.clone(),
                    event,
                    data: std::mem::take(&mut self.data),
                });
            }
            self.data.clear();
            self.event.clear();
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "id" if !value.contains('\0') => self.last_id = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }
}

/// Splits a byte stream into lines (LF, with an optional CR before it); empty lines are
/// skipped.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if !line.iter().all(u8::is_ascii_whitespace) {
                    out.push(line);
                }
            } else {
                self.buf.push(b);
            }
        }
        out
    }

    /// Bytes of an unfinished line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Splits a byte stream of varint-length-prefixed messages.
#[derive(Debug, Default)]
pub struct DelimitedReader {
    buf: BytesMut,
}

impl DelimitedReader {
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let mut len: u64 = 0;
            let mut header = None;
            for (i, &b) in self.buf.iter().enumerate().take(10) {
                len |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    header = Some(i + 1);
                    break;
                }
            }
            let Some(header) = header else {
                if self.buf.len() >= 10 {
                    return Err("varint length prefix longer than 10 bytes".into());
                }
                return Ok(out);
            };
            let len = usize::try_from(len).map_err(|e| e.to_string())?;
            if self.buf.len() < header + len {
                return Ok(out);
            }
            self.buf.advance(header);
            out.push(self.buf.split_to(len).freeze());
        }
    }

    /// Bytes of an unfinished message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// How a stream carries messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// Newline-delimited JSON Push objects (uni_http_stream, uni_websocket frames).
    UniLines,
    /// SSE events whose data is a JSON Push (uni_sse).
    UniSse,
    /// Newline-delimited JSON Reply objects (http_stream, WebSocket JSON frames).
    BidiLines,
    /// SSE events whose data is JSON Reply lines (sse emulation).
    BidiSse,
    /// Length-prefixed Protobuf Replies (http_stream Protobuf, WebSocket Protobuf frames).
    BidiProtobuf,
}

/// Bytes in, normalized events out (with the SSE last event ID at each event).
#[derive(Debug)]
pub struct Decoder {
    wire: Wire,
    sse: SseParser,
    lines: LineReader,
    delimited: DelimitedReader,
}

impl Decoder {
    pub fn new(wire: Wire) -> Self {
        Decoder {
            wire,
            sse: SseParser::new(),
            lines: LineReader::default(),
            delimited: DelimitedReader::default(),
        }
    }

    fn json_line(&self, line: &[u8]) -> Result<Event, String> {
        let v: Value = serde_json::from_slice(line).map_err(|e| {
            format!(
                "not a JSON message ({e}): {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
        match self.wire {
            Wire::UniLines | Wire::UniSse => push_from_json(&v),
            _ => reply_from_json(&v),
        }
    }

    /// Feeds a piece of a byte stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<(Event, Option<String>)>, String> {
        let mut out = Vec::new();
        match self.wire {
            Wire::UniLines | Wire::BidiLines => {
                for line in self.lines.feed(chunk) {
                    out.push((self.json_line(&line)?, None));
                }
            }
            Wire::UniSse | Wire::BidiSse => {
                for ev in self.sse.feed(chunk) {
                    if ev.event != "message" {
                        out.push((Event::Other(format!("SSE event {:?}", ev.event)), None));
                        continue;
                    }
                    for line in ev.data.split('\n').filter(|l| !l.trim().is_empty()) {
                        out.push((self.json_line(line.as_bytes())?, Some(ev.id.clone())));
                    }
                }
            }
            Wire::BidiProtobuf => {
                for msg in self.delimited.feed(chunk)? {
                    let reply = proto::Reply::decode(msg.clone()).map_err(|e| {
                        format!(
                            "not a Protobuf Reply ({e}): {:02x?}",
                            &msg[..msg.len().min(64)]
                        )
                    })?;
                    out.push((reply_from_proto(&reply), None));
                }
            }
        }
        Ok(out)
    }

    /// Feeds one complete frame (a WebSocket message).
    pub fn feed_frame(&mut self, frame: &[u8]) -> Result<Vec<(Event, Option<String>)>, String> {
        let mut out = self.feed(frame)?;
        if matches!(self.wire, Wire::UniLines | Wire::BidiLines) {
            out.extend(self.feed(b"\n")?);
        }
        Ok(out)
    }

    /// Bytes of an unfinished message left when the stream ended.
    pub fn pending(&self) -> usize {
        self.lines.pending() + self.delimited.pending()
    }
}

// ---------------------------------------------------------------------------------------
// Event streams
// ---------------------------------------------------------------------------------------

/// What a reader task sends: an event (with its SSE last event ID), or the end.
#[derive(Debug)]
pub enum Msg {
    Event(Event, Option<String>),
    End(String),
}

/// Where a reader task sends what it reads.
pub type EventTx = mpsc::UnboundedSender<Msg>;

/// Aborts tasks when dropped.
#[derive(Debug, Default)]
pub struct TaskGuard(pub Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The result of one bounded read.
#[derive(Debug)]
pub enum Next {
    Event(Event),
    Timeout,
    Ended(String),
}

/// A client's inbound messages, normalized. Dropping it closes the connection.
pub struct EventStream {
    pub label: String,
    rx: mpsc::UnboundedReceiver<Msg>,
    inbox: VecDeque<(Event, Option<String>)>,
    ended: Option<String>,
    /// The SSE last event ID as of the last event handed out (SSE transports).
    pub last_event_id: Option<String>,
    _tasks: TaskGuard,
}

impl EventStream {
    /// A stream fed by `tasks` through the sender paired with `rx`.
    pub fn new(
        label: impl Into<String>,
        rx: mpsc::UnboundedReceiver<Msg>,
        tasks: Vec<JoinHandle<()>>,
    ) -> Self {
        EventStream {
            label: label.into(),
            rx,
            inbox: VecDeque::new(),
            ended: None,
            last_event_id: None,
            _tasks: TaskGuard(tasks),
        }
    }

    /// Reads one message from the reader task into the inbox; false on timeout or end.
    async fn pull(&mut self, deadline: Instant) -> bool {
        if self.ended.is_some() {
            return false;
        }
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Err(_) => false,
            Ok(Some(Msg::Event(e, id))) => {
                self.inbox.push_back((e, id));
                true
            }
            Ok(Some(Msg::End(why))) => {
                self.ended = Some(why);
                false
            }
            Ok(None) => {
                self.ended = Some("reader task ended".into());
                false
            }
        }
    }

    fn hand_out(&mut self, item: (Event, Option<String>)) -> Event {
        if let Some(id) = item.1 {
            self.last_event_id = Some(id);
        }
        item.0
    }

    /// The next message within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.inbox.pop_front() {
                return Next::Event(self.hand_out(item));
            }
            if !self.pull(deadline).await {
                return match &self.ended {
                    Some(why) => Next::Ended(why.clone()),
                    None => Next::Timeout,
                };
            }
        }
    }

    /// The next message that is not a ping.
    pub async fn next_non_ping(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Next::Event(Event::Ping) => continue,
                other => return other,
            }
        }
    }

    /// The next non-ping message; panics on timeout or end.
    pub async fn expect(&mut self, what: &str, timeout: Duration) -> Event {
        match self.next_non_ping(timeout).await {
            Next::Event(e) => e,
            Next::Timeout => panic!("[{}] no {what} within {timeout:?}", self.label),
            Next::Ended(why) => panic!("[{}] stream ended ({why}) before {what}", self.label),
        }
    }

    /// The first message matching `pred` (earlier ones stay queued, in order).
    pub async fn take_where(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let deadline = Instant::now() + timeout;
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.inbox.iter().skip(scanned).position(|(e, _)| pred(e)) {
                let item = self.inbox.remove(scanned + pos).expect("present");
                return self.hand_out(item);
            }
            scanned = self.inbox.len();
            if !self.pull(deadline).await {
                panic!(
                    "[{}] no {what} within {timeout:?} ({}); queued: {:?}",
                    self.label,
                    self.ended.as_deref().unwrap_or("timed out"),
                    self.inbox
                        .iter()
                        .map(|(e, _)| e)
                        .take(5)
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// The connect result that must come first (pings aside).
    pub async fn expect_connect(&mut self) -> ConnectInfo {
        match self.expect("connect result", WAIT).await {
            Event::Connect(_, info) => info,
            other => panic!("[{}] expected a connect result, got {other:?}", self.label),
        }
    }

    /// The next `n` publications on any channel, in arrival order; other pushes are
    /// skipped; a disconnect or the end of the stream fails the test.
    pub async fn pubs_any(&mut self, n: usize, timeout: Duration) -> Vec<Pub> {
        let deadline = Instant::now() + timeout;
        let mut got: Vec<Pub> = Vec::with_capacity(n);
        while got.len() < n {
            match self
                .next_non_ping(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Next::Event(Event::Pub(p)) => got.push(p),
                Next::Event(Event::Other(_)) => {}
                Next::Event(e) => panic!(
                    "[{}] unexpected {e:?} after {} of {n} publications",
                    self.label,
                    got.len()
                ),
                Next::Timeout => panic!(
                    "[{}] {} of {n} publications within {timeout:?}; last: {:?}",
                    self.label,
                    got.len(),
                    got.last()
                ),
                Next::Ended(why) => panic!(
                    "[{}] stream ended ({why}) after {} of {n} publications",
                    self.label,
                    got.len()
                ),
            }
        }
        got
    }

    /// The next `n` publications, all of which must be on `channel`.
    pub async fn pubs(&mut self, channel: &str, n: usize, timeout: Duration) -> Vec<Pub> {
        let got = self.pubs_any(n, timeout).await;
        if let Some(p) = got.iter().find(|p| p.channel != channel) {
            panic!(
                "[{}] publication on {:?}, expected {channel:?}: {p:?}",
                self.label, p.channel
            );
        }
        got
    }

    /// Asserts that no publication (or other non-ping message) arrives within `timeout`.
    pub async fn expect_quiet(&mut self, timeout: Duration) {
        match self.next_non_ping(timeout).await {
            Next::Timeout => {}
            Next::Event(e) => panic!("[{}] unexpected message {e:?}", self.label),
            Next::Ended(why) => panic!("[{}] stream ended ({why})", self.label),
        }
    }

    /// The disconnect that must come next (pings aside).
    pub async fn expect_disconnect(&mut self, timeout: Duration) -> (u32, String) {
        match self.expect("disconnect", timeout).await {
            Event::Disconnect { code, reason } => (code, reason),
            other => panic!("[{}] expected a disconnect, got {other:?}", self.label),
        }
    }

    /// Waits for the end of the stream; any message but a ping fails the test.
    pub async fn expect_end(&mut self, timeout: Duration) -> String {
        match self.next_non_ping(timeout).await {
            Next::Ended(why) => why,
            Next::Timeout => panic!("[{}] stream still open after {timeout:?}", self.label),
            Next::Event(e) => panic!("[{}] expected the end, got {e:?}", self.label),
        }
    }
}

/// Spawns a task that decodes `body` with `wire`; `keep` lives (and is aborted) with it.
pub fn body_stream(
    label: impl Into<String>,
    mut body: Incoming,
    wire: Wire,
    keep: Vec<JoinHandle<()>>,
) -> EventStream {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let _keep = TaskGuard(keep);
        let mut decoder = Decoder::new(wire);
        let why = loop {
            match body.frame().await {
                None => break format!("response body ended ({} bytes pending)", decoder.pending()),
                Some(Err(e)) => break format!("response body error: {e}"),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match decoder.feed(&data) {
                        Ok(events) => {
                            for (e, id) in events {
                                let _ = tx.send(Msg::Event(e, id));
                            }
                        }
                        Err(e) => break e,
                    }
                }
            }
        };
        let _ = tx.send(Msg::End(why));
    });
    EventStream::new(label, rx, vec![task])
}

// ---------------------------------------------------------------------------------------
// Connections: TCP or TLS, HTTP/1.1 or HTTP/2
// ---------------------------------------------------------------------------------------

/// A bidirectional byte stream (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written to a temp dir
/// (removed on drop).
pub struct TlsFiles {
    pub dir: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl TlsFiles {
    pub fn generate() -> TlsFiles {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("rcgen self-signed certificate");
        let dir = std::env::temp_dir().join(format!(
            "herald-tls-{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let cert_file = dir.join("cert.pem");
        let key_file = dir.join("key.pem");
        std::fs::write(&cert_file, certified.cert.pem()).expect("write cert");
        std::fs::write(&key_file, certified.signing_key.serialize_pem()).expect("write key");
        TlsFiles {
            dir,
            cert_file,
            key_file,
            cert_der: certified.cert.der().clone(),
        }
    }

    /// The server config fragment that turns TLS on with these files.
    pub fn server_config(&self) -> Value {
        json!({"http_server": {"tls": {
            "cert_pem_file": self.cert_file.to_string_lossy(),
            "key_pem_file": self.key_file.to_string_lossy(),
        }}})
    }

    /// A client config trusting this certificate only, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).expect("add test root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// HTTP version of a client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    H1,
    H2,
}

/// A way to reach the server: plain or TLS, HTTP/1.1 or HTTP/2 (h2c with prior knowledge
/// in plain text, ALPN `h2` over TLS). Every request opens its own connection.
#[derive(Clone)]
pub struct Http {
    pub addr: SocketAddr,
    pub version: HttpVersion,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A request sender on one connection.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Http {
    /// Plain HTTP/1.1.
    pub fn h1(addr: SocketAddr) -> Http {
        Http {
            addr,
            version: HttpVersion::H1,
            tls: None,
        }
    }

    /// h2c with prior knowledge.
    pub fn h2c(addr: SocketAddr) -> Http {
        Http {
            addr,
            version: HttpVersion::H2,
            tls: None,
        }
    }

    /// TLS trusting `files`, offering only the ALPN protocol of `version`.
    pub fn tls(addr: SocketAddr, version: HttpVersion, files: &TlsFiles) -> Http {
        let alpn: &[u8] = match version {
            HttpVersion::H1 => b"http/1.1",
            HttpVersion::H2 => b"h2",
        };
        Http {
            addr,
            version,
            tls: Some(files.client_config(&[alpn])),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A short description (`h1`, `h2c`, `h1+tls`, `h2+tls`).
    pub fn describe(&self) -> &'static str {
        match (self.version, self.is_tls()) {
            (HttpVersion::H1, false) => "h1",
            (HttpVersion::H2, false) => "h2c",
            (HttpVersion::H1, true) => "h1+tls",
            (HttpVersion::H2, true) => "h2+tls",
        }
    }

    /// `host:port` as the client names the server (`localhost` over TLS).
    pub fn authority(&self) -> String {
        if self.is_tls() {
            format!("localhost:{}", self.addr.port())
        } else {
            self.addr.to_string()
        }
    }

    /// An absolute URL for `path_and_query`.
    pub fn url(&self, path_and_query: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}{path_and_query}", self.authority())
    }

    /// Opens a TCP connection, with the TLS handshake when configured; over TLS the
    /// server must have chosen the offered ALPN protocol.
    pub async fn io(&self) -> Box<dyn Io> {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(self.addr))
            .await
            .unwrap_or_else(|_| panic!("TCP connect to {} timed out", self.addr))
            .unwrap_or_else(|e| panic!("TCP connect to {}: {e}", self.addr));
        let _ = tcp.set_nodelay(true);
        let Some(config) = &self.tls else {
            return Box::new(tcp);
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .unwrap_or_else(|_| panic!("TLS handshake with {} timed out", self.addr))
            .unwrap_or_else(|e| panic!("TLS handshake with {}: {e}", self.addr));
        let offered = config.alpn_protocols.first().cloned();
        let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(
            chosen.as_deref().map(String::from_utf8_lossy),
            offered.as_deref().map(String::from_utf8_lossy),
            "the server must select the offered ALPN protocol"
        );
        Box::new(tls)
    }

    async fn connect(&self) -> (Sender, JoinHandle<()>) {
        let io = TokioIo::new(self.io().await);
        match self.version {
            HttpVersion::H1 => {
                let (sender, conn) = tokio::time::timeout(
                    WAIT,
                    hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io),
                )
                .await
                .expect("HTTP/1.1 handshake timed out")
                .expect("HTTP/1.1 handshake");
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::H1(sender), task)
            }
            HttpVersion::H2 => {
                let (sender, conn) = tokio::time::timeout(
                    WAIT,
                    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                        .handshake::<_, Full<Bytes>>(io),
                )
                .await
                .expect("HTTP/2 handshake timed out")
                .expect("HTTP/2 handshake");
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::H2(sender), task)
            }
        }
    }

    /// Builds a request for `path_and_query` (absolute URI for HTTP/2, origin form and
    /// `Host` for HTTP/1.1).
    pub fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(method);
        b = match self.version {
            HttpVersion::H1 => b
                .uri(path_and_query)
                .header(http::header::HOST, self.authority()),
            HttpVersion::H2 => b.uri(self.url(path_and_query)),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(body.into())).expect("request")
    }

    /// Sends `req` on a new connection; returns the response head and the connection's
    /// task (abort it, or drop the response, to close the connection).
    pub async fn send(&self, req: Request<Full<Bytes>>) -> (Response<Incoming>, JoinHandle<()>) {
        let what = format!("{} {}", req.method(), req.uri());
        let (sender, conn) = self.connect().await;
        let resp = match sender {
            Sender::H1(mut s) => tokio::time::timeout(WAIT, s.send_request(req)).await,
            Sender::H2(mut s) => tokio::time::timeout(WAIT, s.send_request(req)).await,
        };
        let resp = resp
            .unwrap_or_else(|_| panic!("{what} ({}): no response within {WAIT:?}", self.describe()))
            .unwrap_or_else(|e| panic!("{what} ({}): {e}", self.describe()));
        let expected = match self.version {
            HttpVersion::H1 => http::Version::HTTP_11,
            HttpVersion::H2 => http::Version::HTTP_2,
        };
        assert_eq!(resp.version(), expected, "{what}: response HTTP version");
        (resp, conn)
    }

    /// Sends `req` and reads the whole (bounded) response: status, headers, body text.
    pub async fn fetch(&self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
        let what = format!("{} {}", req.method(), req.uri());
        let (resp, conn) = self.send(req).await;
        let _guard = TaskGuard(vec![conn]);
        let (parts, body) = resp.into_parts();
        let bytes = tokio::time::timeout(WAIT, body.collect())
            .await
            .unwrap_or_else(|_| panic!("{what}: body not complete within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{what}: body: {e}"))
            .to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// `GET path`: status and body.
    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let (s, _, b) = self.fetch(self.request(Method::GET, path, &[], "")).await;
        (s, b)
    }

    /// `POST path` with `content_type` and `body`: status and body.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> (StatusCode, String) {
        let req = self.request(Method::POST, path, &[("content-type", content_type)], body);
        let (s, _, b) = self.fetch(req).await;
        (s, b)
    }

    /// Calls the server API method with `key`; asserts 200 and no error; returns `result`.
    pub async fn api(&self, key: &str, method: &str, body: Value) -> Value {
        let req = self.request(
            Method::POST,
            &format!("/api/{method}"),
            &[("content-type", "application/json"), ("x-api-key", key)],
            body.to_string(),
        );
        let (status, _, text) = self.fetch(req).await;
        assert_eq!(status, 200, "API {method} {body}: HTTP {status}: {text}");
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("API {method}: not JSON ({e}): {text}"));
        assert!(v.get("error").is_none(), "API {method} {body} failed: {v}");
        v.get("result").cloned().unwrap_or(Value::Null)
    }

    /// Publishes through the server API; returns the publication's position.
    pub async fn publish(&self, key: &str, channel: &str, data: Value) -> Position {
        let r = self
            .api(key, "publish", json!({"channel": channel, "data": data}))
            .await;
        Position {
            offset: r["offset"].as_u64().unwrap_or(0),
            epoch: r["epoch"].as_str().unwrap_or("").to_string(),
        }
    }

    /// Opens a streaming request; `Ok` with the stream on 200, `Err` with the status and
    /// body text otherwise.
    pub async fn open_stream(
        &self,
        label: impl Into<String>,
        req: Request<Full<Bytes>>,
        wire: Wire,
    ) -> Result<EventStream, (StatusCode, String)> {
        let (resp, conn) = self.send(req).await;
        stream_from_response(label, resp, wire, vec![conn]).await
    }

    /// One HTTP/2 connection on which several requests share the connection (streams).
    pub async fn h2_session(&self) -> H2Session {
        assert_eq!(self.version, HttpVersion::H2, "h2_session needs HTTP/2");
        let (sender, conn) = self.connect().await;
        let Sender::H2(sender) = sender else {
            unreachable!("HTTP/2 connection")
        };
        H2Session {
            http: self.clone(),
            sender,
            _conn: TaskGuard(vec![conn]),
        }
    }
}

/// The stream of a 200 response, or the refusal (status and body text).
pub async fn stream_from_response(
    label: impl Into<String>,
    resp: Response<Incoming>,
    wire: Wire,
    keep: Vec<JoinHandle<()>>,
) -> Result<EventStream, (StatusCode, String)> {
    let status = resp.status();
    if status != StatusCode::OK {
        let _guard = TaskGuard(keep);
        let text = match tokio::time::timeout(WAIT, resp.into_body().collect()).await {
            Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            _ => String::new(),
        };
        return Err((status, text));
    }
    Ok(body_stream(label, resp.into_body(), wire, keep))
}

/// Requests multiplexed on one HTTP/2 connection; dropping it closes the connection (and
/// ends its streams).
pub struct H2Session {
    pub http: Http,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    _conn: TaskGuard,
}

impl H2Session {
    /// Sends `req` as a new stream of this connection.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        let what = format!("{} {}", req.method(), req.uri());
        let mut sender = self.sender.clone();
        tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .unwrap_or_else(|_| panic!("{what} (shared h2): no response within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{what} (shared h2): {e}"))
    }

    /// Sends `req` and reads the whole response.
    pub async fn fetch(&self, req: Request<Full<Bytes>>) -> (StatusCode, String) {
        let resp = self.send(req).await;
        let status = resp.status();
        let bytes = tokio::time::timeout(WAIT, resp.into_body().collect())
            .await
            .expect("body within WAIT")
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Opens a streaming request on this connection.
    pub async fn open_stream(
        &self,
        label: impl Into<String>,
        req: Request<Full<Bytes>>,
        wire: Wire,
    ) -> Result<EventStream, (StatusCode, String)> {
        let resp = self.send(req).await;
        stream_from_response(label, resp, wire, Vec::new()).await
    }

    /// Publishes through the server API on this connection.
    pub async fn publish(&self, key: &str, channel: &str, data: Value) -> Position {
        let req = self.http.request(
            Method::POST,
            "/api/publish",
            &[("content-type", "application/json"), ("x-api-key", key)],
            json!({"channel": channel, "data": data}).to_string(),
        );
        let (status, text) = self.fetch(req).await;
        assert_eq!(status, 200, "API publish: {text}");
        let v: Value = serde_json::from_str(&text).expect("API JSON");
        Position {
            offset: v["result"]["offset"].as_u64().unwrap_or(0),
            epoch: v["result"]["epoch"].as_str().unwrap_or("").to_string(),
        }
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str) -> String {
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

// ---------------------------------------------------------------------------------------
// Connected clients
// ---------------------------------------------------------------------------------------

/// How a bidirectional client sends commands after connecting.
pub enum Commander {
    /// Unidirectional: no commands.
    None,
    /// Over the WebSocket (the reader task writes them); JSON commands, converted to
    /// Protobuf for a Protobuf connection.
    Ws(mpsc::UnboundedSender<Value>),
    /// `POST /emulation` with the session and node of the connect result.
    Emulation {
        http: Http,
        session: String,
        node: String,
        protobuf: bool,
    },
}

/// A JSON command as length-prefixed Protobuf.
pub fn command_to_protobuf(cmd: &Value) -> Vec<u8> {
    let c: proto::Command = serde_json::from_value(cmd.clone())
        .unwrap_or_else(|e| panic!("command {cmd} does not fit the schema: {e}"));
    c.encode_length_delimited_to_vec()
}

/// The body of `POST /emulation` carrying `commands` (JSON: `{session, node, data}` with
/// the JSON lines as a string; Protobuf: an EmulationRequest with length-prefixed commands).
pub fn emulation_body(session: &str, node: &str, commands: &[Value], protobuf: bool) -> Vec<u8> {
    if protobuf {
        let data: Vec<u8> = commands.iter().flat_map(command_to_protobuf).collect();
        proto::EmulationRequest {
            node: node.to_string(),
            session: session.to_string(),
            data: data.into(),
        }
        .encode_to_vec()
    } else {
        let lines: Vec<String> = commands.iter().map(Value::to_string).collect();
        json!({"session": session, "node": node, "data": lines.join("\n")})
            .to_string()
            .into_bytes()
    }
}

/// A connected client of any transport.
pub struct Conn {
    pub events: EventStream,
    pub connect: ConnectInfo,
    commander: Commander,
    next_id: u32,
}

impl Conn {
    /// A client whose stream has delivered nothing yet: waits for its connect result.
    pub async fn after_connect(mut events: EventStream, commander: Commander) -> Conn {
        let connect = match events.expect("connect result", WAIT).await {
            Event::Connect(_, info) => info,
            other => panic!(
                "[{}] expected a connect result, got {other:?}",
                events.label
            ),
        };
        let commander = match commander {
            Commander::Emulation { http, protobuf, .. } => Commander::Emulation {
                http,
                session: connect.session.clone(),
                node: connect.node.clone(),
                protobuf,
            },
            other => other,
        };
        Conn {
            events,
            connect,
            commander,
            next_id: 1,
        }
    }

    pub fn label(&self) -> &str {
        &self.events.label
    }

    /// Sends this emulation client's later commands (`POST /emulation`) through `http`
    /// (another node of a cluster, say) instead of the server it streams from.
    pub fn emulate_via(&mut self, via: Http) {
        match &mut self.commander {
            Commander::Emulation { http, .. } => *http = via,
            _ => panic!("[{}] not an emulation client", self.events.label),
        }
    }

    /// Sends a command (a JSON Command without id; one is assigned); returns the id.
    pub async fn send(&mut self, mut cmd: Value) -> u32 {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = json!(id);
        match &self.commander {
            Commander::None => panic!(
                "[{}] a unidirectional client sends no commands",
                self.label()
            ),
            Commander::Ws(tx) => tx
                .send(cmd)
                .unwrap_or_else(|_| panic!("[{}] the WebSocket is gone", self.events.label)),
            Commander::Emulation {
                http,
                session,
                node,
                protobuf,
            } => {
                let ct = if *protobuf {
                    "application/octet-stream"
                } else {
                    "application/json"
                };
                let body = emulation_body(session, node, &[cmd], *protobuf);
                let (status, text) = http.post("/emulation", ct, body).await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "[{}] POST /emulation: {text}",
                    self.events.label
                );
            }
        }
        id
    }

    /// Answers a server ping: an empty command (`{}`, or an empty Protobuf Command).
    pub async fn pong(&mut self) {
        match &self.commander {
            Commander::None => {}  // unidirectional clients do not answer pings
            Commander::Ws(_) => {} // the WebSocket task answers by itself
            Commander::Emulation {
                http,
                session,
                node,
                protobuf,
            } => {
                let ct = if *protobuf {
                    "application/octet-stream"
                } else {
                    "application/json"
                };
                let body = emulation_body(session, node, &[json!({})], *protobuf);
                let (status, text) = http.post("/emulation", ct, body).await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "[{}] pong through /emulation: {text}",
                    self.events.label
                );
            }
        }
    }

    /// Sends a command and waits for its reply (other messages stay queued).
    pub async fn call(&mut self, cmd: Value) -> Event {
        let id = self.send(cmd.clone()).await;
        self.events
            .take_where(&format!("reply to {cmd}"), WAIT, |e| e.reply_id() == id)
            .await
    }

    /// Subscribes to `channel`, recovering from `since` when given.
    pub async fn subscribe(&mut self, channel: &str, since: Option<&Position>) -> SubInfo {
        let mut req = json!({"channel": channel});
        if let Some(p) = since {
            req["recover"] = json!(true);
            req["offset"] = json!(p.offset);
            req["epoch"] = json!(p.epoch);
        }
        match self.call(json!({"subscribe": req})).await {
            Event::Subscribed(_, mut info) => {
                for p in &mut info.publications {
                    p.channel = channel.to_string();
                }
                info
            }
            other => panic!(
                "[{}] subscribe to {channel} failed: {other:?}",
                self.events.label
            ),
        }
    }

    /// The state of `channel` in the connect result (server-side subscriptions).
    pub fn sub(&self, channel: &str) -> &SubInfo {
        self.connect.subs.get(channel).unwrap_or_else(|| {
            panic!(
                "[{}] connect result has no subscription to {channel}: {:?}",
                self.events.label,
                self.connect.subs.keys().collect::<Vec<_>>()
            )
        })
    }
}

/// A unidirectional connect request.
#[derive(Clone, Debug, Default)]
pub struct UniConnect {
    pub token: String,
    /// Channels in `subs`, each with a position to recover from, or none.
    pub subs: BTreeMap<String, Option<Position>>,
    /// SSE: the last event id to resume from.
    pub last_event_id: Option<String>,
    /// SSE: send it as the `last_event_id` query parameter instead of the header.
    pub last_event_id_in_query: bool,
}

impl UniConnect {
    pub fn new(token: &str) -> Self {
        UniConnect {
            token: token.to_string(),
            ..Default::default()
        }
    }

    /// Requests `channel` in `subs`, recovering from `pos` when given.
    pub fn sub(mut self, channel: &str, pos: Option<&Position>) -> Self {
        self.subs.insert(channel.to_string(), pos.cloned());
        self
    }

    /// Resumes an SSE stream from `id` (header, or query parameter when `in_query`).
    pub fn last_event_id(mut self, id: &str, in_query: bool) -> Self {
        self.last_event_id = Some(id.to_string());
        self.last_event_id_in_query = in_query;
        self
    }

    /// The JSON ConnectRequest.
    pub fn body(&self) -> String {
        let mut req = json!({"token": self.token, "name": "herald-tests"});
        if !self.subs.is_empty() {
            let subs: serde_json::Map<String, Value> = self
                .subs
                .iter()
                .map(|(ch, pos)| {
                    let v = match pos {
                        Some(p) => json!({"recover": true, "offset": p.offset, "epoch": p.epoch}),
                        None => json!({}),
                    };
                    (ch.clone(), v)
                })
                .collect();
            req["subs"] = Value::Object(subs);
        }
        req.to_string()
    }

    /// `/connection/uni_sse?cf_connect=...` (and `last_event_id` when asked).
    pub fn sse_path(&self) -> String {
        let mut path = format!(
            "/connection/uni_sse?cf_connect={}",
            url_encode(&self.body())
        );
        if let (Some(id), true) = (&self.last_event_id, self.last_event_id_in_query) {
            path.push_str(&format!("&last_event_id={}", url_encode(id)));
        }
        path
    }
}

/// A connect command (JSON).
pub fn connect_command(token: &str) -> Value {
    json!({"id": 1, "connect": {"token": token, "name": "herald-tests"}})
}

/// `/connection/uni_sse` with a GET (EventSource-like): the raw stream, or the refusal.
pub async fn uni_sse_raw(
    http: &Http,
    req: &UniConnect,
) -> Result<EventStream, (StatusCode, String)> {
    let mut headers = vec![("accept", "text/event-stream")];
    if let (Some(id), false) = (&req.last_event_id, req.last_event_id_in_query) {
        headers.push(("last-event-id", id.as_str()));
    }
    let r = http.request(Method::GET, &req.sse_path(), &headers, "");
    http.open_stream(format!("uni_sse/{}", http.describe()), r, Wire::UniSse)
        .await
}

/// A connected uni_sse client.
pub async fn uni_sse(http: &Http, req: &UniConnect) -> Conn {
    match uni_sse_raw(http, req).await {
        Ok(s) => Conn::after_connect(s, Commander::None).await,
        Err((status, text)) => panic!("uni_sse refused: {status} {text}"),
    }
}

/// `POST /connection/uni_http_stream`: the raw stream, or the refusal.
pub async fn uni_http_stream_raw(
    http: &Http,
    body: impl Into<Bytes>,
) -> Result<EventStream, (StatusCode, String)> {
    let r = http.request(
        Method::POST,
        "/connection/uni_http_stream",
        &[("content-type", "application/json")],
        body,
    );
    http.open_stream(
        format!("uni_http_stream/{}", http.describe()),
        r,
        Wire::UniLines,
    )
    .await
}

/// A connected uni_http_stream client.
pub async fn uni_http_stream(http: &Http, req: &UniConnect) -> Conn {
    match uni_http_stream_raw(http, req.body()).await {
        Ok(s) => Conn::after_connect(s, Commander::None).await,
        Err((status, text)) => panic!("uni_http_stream refused: {status} {text}"),
    }
}

/// `POST /connection/http_stream` with the first commands as `body`: the raw stream.
pub async fn http_stream_raw(
    http: &Http,
    protobuf: bool,
    body: impl Into<Bytes>,
) -> Result<EventStream, (StatusCode, String)> {
    let (ct, wire, enc) = if protobuf {
        ("application/octet-stream", Wire::BidiProtobuf, "protobuf")
    } else {
        ("application/json", Wire::BidiLines, "json")
    };
    let r = http.request(
        Method::POST,
        "/connection/http_stream",
        &[("content-type", ct)],
        body,
    );
    http.open_stream(format!("http_stream/{enc}/{}", http.describe()), r, wire)
        .await
}

/// A connected http_stream (emulation) client.
pub async fn http_stream(http: &Http, protobuf: bool, token: &str) -> Conn {
    let connect = connect_command(token);
    let body = if protobuf {
        command_to_protobuf(&connect)
    } else {
        connect.to_string().into_bytes()
    };
    let stream = match http_stream_raw(http, protobuf, body).await {
        Ok(s) => s,
        Err((status, text)) => panic!("http_stream refused: {status} {text}"),
    };
    let commander = Commander::Emulation {
        http: http.clone(),
        session: String::new(),
        node: String::new(),
        protobuf,
    };
    Conn::after_connect(stream, commander).await
}

/// `GET /connection/sse?cf_connect=<cf_connect>`: the raw stream.
pub async fn sse_raw(http: &Http, cf_connect: &str) -> Result<EventStream, (StatusCode, String)> {
    let path = format!("/connection/sse?cf_connect={}", url_encode(cf_connect));
    let r = http.request(Method::GET, &path, &[("accept", "text/event-stream")], "");
    http.open_stream(format!("sse/{}", http.describe()), r, Wire::BidiSse)
        .await
}

/// A connected SSE (emulation) client.
pub async fn sse(http: &Http, token: &str) -> Conn {
    let stream = match sse_raw(http, &connect_command(token).to_string()).await {
        Ok(s) => s,
        Err((status, text)) => panic!("sse refused: {status} {text}"),
    };
    let commander = Commander::Emulation {
        http: http.clone(),
        session: String::new(),
        node: String::new(),
        protobuf: false,
    };
    Conn::after_connect(stream, commander).await
}

/// A connected SSE (emulation) client that starts with a POST (body: the connect command).
pub async fn sse_post(http: &Http, token: &str) -> Conn {
    let r = http.request(
        Method::POST,
        "/connection/sse",
        &[
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ],
        connect_command(token).to_string(),
    );
    let stream = match http
        .open_stream(format!("sse-post/{}", http.describe()), r, Wire::BidiSse)
        .await
    {
        Ok(s) => s,
        Err((status, text)) => panic!("sse POST refused: {status} {text}"),
    };
    let commander = Commander::Emulation {
        http: http.clone(),
        session: String::new(),
        node: String::new(),
        protobuf: false,
    };
    Conn::after_connect(stream, commander).await
}

/// Opens a WebSocket at `path` over `http`'s connection (TLS too); `protocol` is offered
/// as the subprotocol.
pub async fn ws_open(
    http: &Http,
    path: &str,
    protocol: Option<&'static str>,
) -> tokio_websockets::WebSocketStream<Box<dyn Io>> {
    assert_eq!(http.version, HttpVersion::H1, "WebSockets need HTTP/1.1");
    let scheme = if http.is_tls() { "wss" } else { "ws" };
    let uri: http::Uri = format!("{scheme}://{}{path}", http.authority())
        .parse()
        .expect("ws uri");
    let mut builder = ClientBuilder::from_uri(uri);
    if let Some(p) = protocol {
        builder = builder
            .add_header(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(p),
            )
            .expect("subprotocol header");
    }
    let io = http.io().await;
    let (ws, resp) = tokio::time::timeout(WAIT, builder.connect_on(io))
        .await
        .expect("WebSocket handshake timed out")
        .unwrap_or_else(|e| panic!("WebSocket handshake at {path}: {e}"));
    if let Some(p) = protocol {
        assert_eq!(
            resp.headers()
                .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok()),
            Some(p),
            "the server must select subprotocol {p}"
        );
    }
    ws
}

/// Runs a WebSocket: frames in become events (a close frame a disconnect), commands from
/// `cmds` go out; pings are answered with pongs on bidirectional connections.
fn ws_stream(
    label: String,
    mut ws: tokio_websockets::WebSocketStream<Box<dyn Io>>,
    wire: Wire,
) -> (EventStream, mpsc::UnboundedSender<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Value>();
    let protobuf = wire == Wire::BidiProtobuf;
    let bidi = wire != Wire::UniLines;
    let frame = move |cmd: &Value| -> Message {
        if protobuf {
            Message::binary(Bytes::from(command_to_protobuf(cmd)))
        } else {
            Message::text(cmd.to_string())
        }
    };
    let task = tokio::spawn(async move {
        let mut decoder = Decoder::new(wire);
        let mut cmds_open = true;
        let why = loop {
            tokio::select! {
                cmd = cmd_rx.recv(), if cmds_open => match cmd {
                    Some(cmd) => {
                        if let Err(e) = ws.send(frame(&cmd)).await {
                            break format!("WebSocket send failed: {e}");
                        }
                    }
                    None => cmds_open = false,
                },
                msg = ws.next() => match msg {
                    None => break "WebSocket ended without a close frame".to_string(),
                    Some(Err(e)) => break format!("WebSocket error: {e}"),
                    Some(Ok(m)) => {
                        if let Some((code, reason)) = m.as_close() {
                            let _ = tx.send(Msg::Event(Event::Disconnect {
                                code: u32::from(u16::from(code)),
                                reason: reason.to_string(),
                            }, None));
                            break format!("closed with {}", u16::from(code));
                        }
                        if !(m.is_text() || m.is_binary()) {
                            continue;
                        }
                        match decoder.feed_frame(m.as_payload()) {
                            Ok(events) => {
                                for (e, id) in events {
                                    if e == Event::Ping && bidi {
                                        let pong = if protobuf {
                                            Message::binary(Bytes::from_static(&[0]))
                                        } else {
                                            Message::text("{}")
                                        };
                                        let _ = ws.send(pong).await;
                                    }
                                    let _ = tx.send(Msg::Event(e, id));
                                }
                            }
                            Err(e) => break e,
                        }
                    }
                },
            }
        };
        let _ = tx.send(Msg::End(why));
    });
    (EventStream::new(label, rx, vec![task]), cmd_tx)
}

/// A connected bidirectional WebSocket client (JSON, or Protobuf by subprotocol).
pub async fn websocket(http: &Http, protobuf: bool, token: &str) -> Conn {
    let (proto_name, wire, enc) = if protobuf {
        (Some("centrifuge-protobuf"), Wire::BidiProtobuf, "protobuf")
    } else {
        (None, Wire::BidiLines, "json")
    };
    let ws = ws_open(http, "/connection/websocket", proto_name).await;
    let (events, cmds) = ws_stream(format!("websocket/{enc}/{}", http.describe()), ws, wire);
    let connect = connect_command(token);
    cmds.send(connect).expect("WebSocket task");
    Conn::after_connect(events, Commander::Ws(cmds)).await
}

/// A uni_websocket whose first message is `first` (a JSON ConnectRequest, or anything).
pub async fn uni_websocket_raw(http: &Http, first: Message) -> EventStream {
    let mut ws = ws_open(http, "/connection/uni_websocket", None).await;
    tokio::time::timeout(WAIT, ws.send(first))
        .await
        .expect("uni_websocket send timed out")
        .expect("uni_websocket send");
    let (events, _cmds) = ws_stream(
        format!("uni_websocket/{}", http.describe()),
        ws,
        Wire::UniLines,
    );
    events
}

/// A connected uni_websocket client.
pub async fn uni_websocket(http: &Http, req: &UniConnect) -> Conn {
    let events = uni_websocket_raw(http, Message::text(req.body())).await;
    Conn::after_connect(events, Commander::None).await
}

// ---------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------

/// Whether `curl` is installed and speaks HTTP/2.
pub fn curl_has_http2() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("Features:") && l.contains("HTTP2"))
        })
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `curl -sS -N` with `args` (bounded by `--max-time`); its output is decoded with
/// `wire`. Dropping the stream kills curl.
pub fn curl(label: impl Into<String>, args: &[String], wire: Wire) -> EventStream {
    let mut child = std::process::Command::new("curl")
        .args(["-sS", "-N", "--noproxy", "*", "--max-time", "60"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn curl: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (chunk_tx, mut chunk_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 16384];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || chunk_tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let err_text = std::thread::spawn(move || {
        use std::io::Read;
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut child = KillOnDrop(child);
        let mut decoder = Decoder::new(wire);
        let why = loop {
            match chunk_rx.recv().await {
                Some(chunk) => match decoder.feed(&chunk) {
                    Ok(events) => {
                        for (e, id) in events {
                            let _ = tx.send(Msg::Event(e, id));
                        }
                    }
                    Err(e) => break e,
                },
                None => {
                    let deadline = Instant::now() + WAIT;
                    let status = loop {
                        match child.0.try_wait() {
                            Ok(Some(s)) => break Some(s),
                            _ if Instant::now() >= deadline => break None,
                            _ => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    };
                    let stderr = if status.is_some() {
                        err_text.join().unwrap_or_default()
                    } else {
                        String::new()
                    };
                    break format!("curl output ended ({status:?}): {}", stderr.trim());
                }
            }
        };
        let _ = tx.send(Msg::End(why));
    });
    EventStream::new(label, rx, vec![task])
}

/// curl arguments that reach `http` at `path`: the URL, the HTTP version, and for TLS
/// the test certificate and a `--resolve` for `localhost`.
pub fn curl_target(http: &Http, path: &str, tls: Option<&TlsFiles>) -> Vec<String> {
    let mut args = Vec::new();
    match (http.version, http.is_tls()) {
        (HttpVersion::H1, _) => args.push("--http1.1".to_string()),
        (HttpVersion::H2, false) => args.push("--http2-prior-knowledge".to_string()),
        (HttpVersion::H2, true) => args.push("--http2".to_string()),
    }
    if http.is_tls() {
        let files = tls.expect("TLS curl needs the test certificate");
        args.push("--cacert".into());
        args.push(files.cert_file.to_string_lossy().into_owned());
        args.push("--resolve".into());
        args.push(format!("localhost:{}:127.0.0.1", http.addr.port()));
    }
    args.push(http.url(path));
    args
}

/// uni_http_stream through curl.
pub async fn curl_uni_http_stream(http: &Http, req: &UniConnect, tls: Option<&TlsFiles>) -> Conn {
    let mut args = vec![
        "-X".to_string(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "--data-binary".into(),
        req.body(),
    ];
    args.extend(curl_target(http, "/connection/uni_http_stream", tls));
    let s = curl(
        format!("curl uni_http_stream/{}", http.describe()),
        &args,
        Wire::UniLines,
    );
    Conn::after_connect(s, Commander::None).await
}

/// uni_sse through curl.
pub async fn curl_uni_sse(http: &Http, req: &UniConnect, tls: Option<&TlsFiles>) -> Conn {
    let mut args = vec!["-H".to_string(), "Accept: text/event-stream".into()];
    if let (Some(id), false) = (&req.last_event_id, req.last_event_id_in_query) {
        args.push("-H".into());
        args.push(format!("Last-Event-ID: {id}"));
    }
    args.extend(curl_target(http, &req.sse_path(), tls));
    let s = curl(
        format!("curl uni_sse/{}", http.describe()),
        &args,
        Wire::UniSse,
    );
    Conn::after_connect(s, Commander::None).await
}

/// A boxed future, for lists of client constructors.
pub type BoxFut<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

// ---------------------------------------------------------------------------------------
// gRPC: tonic clients (Consume, HeraldStream) and gRPC-Web framed by hand
// ---------------------------------------------------------------------------------------

/// Path of the unidirectional gRPC stream.
pub const GRPC_CONSUME_PATH: &str = "/centrifugal.centrifugo.unistream.CentrifugoUniStream/Consume";

/// A JSON command as a Protobuf Command.
pub fn command_from_json(cmd: &Value) -> proto::Command {
    serde_json::from_value(cmd.clone())
        .unwrap_or_else(|e| panic!("command {cmd} does not fit the schema: {e}"))
}

/// The Protobuf ConnectRequest of a unidirectional connect request.
pub fn uni_connect_proto(req: &UniConnect) -> proto::ConnectRequest {
    proto::ConnectRequest {
        token: req.token.clone(),
        name: "herald-tests".into(),
        subs: req
            .subs
            .iter()
            .map(|(ch, pos)| {
                let sub = match pos {
                    Some(p) => proto::SubscribeRequest {
                        recover: true,
                        offset: p.offset,
                        epoch: p.epoch.clone(),
                        ..Default::default()
                    },
                    None => proto::SubscribeRequest::default(),
                };
                (ch.clone(), sub)
            })
            .collect(),
        ..Default::default()
    }
}

/// A tonic channel to the server over one connection made by `http` (h2c, or TLS with
/// ALPN `h2` through the test's rustls config: the connector hands tonic the TLS stream,
/// so tonic's own TLS support is not needed). The endpoint's URI says `http` whatever
/// `http` does: with its TLS feature on, tonic refuses an `https` URI that has no TLS
/// config of its own, and the connector ignores the URI anyway.
pub async fn grpc_channel(http: &Http) -> tonic::transport::Channel {
    assert_eq!(http.version, HttpVersion::H2, "gRPC needs HTTP/2");
    let uri = http.url("").replacen("https://", "http://", 1);
    let endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
        .unwrap_or_else(|e| panic!("gRPC endpoint {uri}: {e}"));
    let http = http.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let http = http.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(http.io().await)) }
    });
    tokio::time::timeout(WAIT, endpoint.connect_with_connector(connector))
        .await
        .expect("gRPC connect timed out")
        .unwrap_or_else(|e| panic!("gRPC connect: {e:?}"))
}

fn grpc_end(status: &tonic::Status) -> String {
    format!("gRPC status {:?}: {}", status.code(), status.message())
}

/// `CentrifugoUniStream/Consume` with tonic: the raw stream of pushes.
pub async fn grpc_consume_raw(http: &Http, req: &UniConnect) -> Result<EventStream, tonic::Status> {
    use herald::transport::grpc::client::unistream::centrifugo_uni_stream_client::CentrifugoUniStreamClient;
    let mut client = CentrifugoUniStreamClient::new(grpc_channel(http).await);
    let mut stream = tokio::time::timeout(WAIT, client.consume(uni_connect_proto(req)))
        .await
        .expect("Consume timed out")?
        .into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let why = loop {
            match stream.next().await {
                None => break "gRPC stream ended with status OK".to_string(),
                Some(Err(s)) => break grpc_end(&s),
                Some(Ok(push)) => {
                    let _ = tx.send(Msg::Event(push_from_proto(&push), None));
                }
            }
        };
        let _ = tx.send(Msg::End(why));
    });
    Ok(EventStream::new(
        format!("grpc Consume/{}", http.describe()),
        rx,
        vec![task],
    ))
}

/// A connected `CentrifugoUniStream/Consume` client (tonic).
pub async fn grpc_consume(http: &Http, req: &UniConnect) -> Conn {
    match grpc_consume_raw(http, req).await {
        Ok(s) => Conn::after_connect(s, Commander::None).await,
        Err(status) => panic!("Consume refused: {status:?}"),
    }
}

/// A connected `HeraldStream/Connect` client (tonic): it connects with `token`; commands
/// go through a [`Commander::Ws`] channel to the task that runs the call, which converts
/// them to Protobuf Commands and answers pings (empty Replies) with empty Commands, as
/// the WebSocket task does.
pub async fn grpc_stream(http: &Http, token: &str) -> Conn {
    use herald::transport::grpc::client::stream::herald_stream_client::HeraldStreamClient;
    let mut client = HeraldStreamClient::new(grpc_channel(http).await);
    let (out_tx, out_rx) = mpsc::unbounded_channel::<proto::Command>();
    out_tx
        .send(command_from_json(&connect_command(token)))
        .expect("request stream");
    let outbound =
        futures_util::stream::unfold(
            out_rx,
            |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
        );
    let mut replies = tokio::time::timeout(WAIT, client.connect(outbound))
        .await
        .expect("HeraldStream/Connect timed out")
        .unwrap_or_else(|s| panic!("HeraldStream/Connect refused: {s:?}"))
        .into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Value>();
    let task = tokio::spawn(async move {
        let mut cmds_open = true;
        let why = loop {
            tokio::select! {
                cmd = cmd_rx.recv(), if cmds_open => match cmd {
                    Some(cmd) => {
                        if out_tx.send(command_from_json(&cmd)).is_err() {
                            break "the gRPC request stream is closed".to_string();
                        }
                    }
                    None => cmds_open = false,
                },
                msg = replies.next() => match msg {
                    None => break "gRPC stream ended with status OK".to_string(),
                    Some(Err(s)) => break grpc_end(&s),
                    Some(Ok(reply)) => {
                        let e = reply_from_proto(&reply);
                        if e == Event::Ping {
                            let _ = out_tx.send(proto::Command::default());
                        }
                        let _ = tx.send(Msg::Event(e, None));
                    }
                },
            }
        };
        let _ = tx.send(Msg::End(why));
    });
    let events = EventStream::new(
        format!("grpc HeraldStream/{}", http.describe()),
        rx,
        vec![task],
    );
    Conn::after_connect(events, Commander::Ws(cmd_tx)).await
}

/// One gRPC-Web data frame: flag 0, big-endian length, the message.
pub fn grpc_web_frame(msg: &impl prost::Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&u32::try_from(body.len()).expect("frame size").to_be_bytes());
    out.extend_from_slice(&body);
    out.freeze()
}

/// Splits complete gRPC-Web frames off `buf`: (is_trailer, payload).
pub fn grpc_web_take_frames(buf: &mut BytesMut) -> Vec<(bool, Bytes)> {
    let mut frames = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        let flag = buf[0];
        buf.advance(5);
        frames.push((flag & 0x80 != 0, buf.split_to(len).freeze()));
    }
    frames
}

/// gRPC-Web `Consume` (`application/grpc-web+proto`, as a browser sends it) over `http`:
/// the raw stream of pushes (it ends at the trailers frame), or the refusal.
pub async fn grpc_web_consume_raw(
    http: &Http,
    req: &UniConnect,
) -> Result<EventStream, (StatusCode, String)> {
    let r = http.request(
        Method::POST,
        GRPC_CONSUME_PATH,
        &[
            ("content-type", "application/grpc-web+proto"),
            ("x-grpc-web", "1"),
        ],
        grpc_web_frame(&uni_connect_proto(req)),
    );
    let (resp, conn) = http.send(r).await;
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if resp.status() != StatusCode::OK
        || !ct.starts_with("application/grpc-web")
        || grpc_status.as_deref().is_some_and(|s| s != "0")
    {
        let status = resp.status();
        let _guard = TaskGuard(vec![conn]);
        return Err((
            status,
            format!(
                "content-type {ct:?}, grpc-status {grpc_status:?}, grpc-message {:?}",
                resp.headers().get("grpc-message")
            ),
        ));
    }
    let mut body = resp.into_body();
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let _keep = TaskGuard(vec![conn]);
        let mut buf = BytesMut::new();
        let why = 'read: loop {
            match body.frame().await {
                None => break format!("response body ended ({} bytes pending)", buf.len()),
                Some(Err(e)) => break format!("response body error: {e}"),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.extend_from_slice(&data);
                    for (trailer, payload) in grpc_web_take_frames(&mut buf) {
                        if trailer {
                            break 'read format!(
                                "gRPC-Web trailers: {:?}",
                                String::from_utf8_lossy(&payload)
                            );
                        }
                        match proto::Push::decode(payload.clone()) {
                            Ok(push) => {
                                let _ = tx.send(Msg::Event(push_from_proto(&push), None));
                            }
                            Err(e) => {
                                break 'read format!(
                                    "not a Protobuf Push ({e}): {:02x?}",
                                    &payload[..payload.len().min(64)]
                                );
                            }
                        }
                    }
                }
            }
        };
        let _ = tx.send(Msg::End(why));
    });
    Ok(EventStream::new(
        format!("grpc-web Consume/{}", http.describe()),
        rx,
        vec![task],
    ))
}

/// A connected gRPC-Web `Consume` client.
pub async fn grpc_web_consume(http: &Http, req: &UniConnect) -> Conn {
    match grpc_web_consume_raw(http, req).await {
        Ok(s) => Conn::after_connect(s, Commander::None).await,
        Err((status, text)) => panic!("gRPC-Web Consume refused: {status} {text}"),
    }
}
