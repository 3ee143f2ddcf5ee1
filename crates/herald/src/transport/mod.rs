//! Transport adapters: each turns a socket or an HTTP request into a [`crate::session::Session`]
//! and drains the session's queue back to the client. Adapters never import each other.

pub mod cors;
pub mod emulation;
pub mod grpc;
pub mod http_stream;
pub mod sse;
pub mod uni_http_stream;
pub mod uni_sse;
pub mod uni_websocket;
pub mod websocket;
mod ws_common;

use http::HeaderMap;

/// Whether a browser's `Origin` may open a connection (protection against cross-site
/// WebSocket hijacking and cross-origin reads of streams). No Origin header (not a browser)
/// is allowed. With `client.allowed_origins` set, the origin must match one of its patterns
/// ("*", exact, or with `*` wildcards; ASCII case ignored) and nothing else: the same-origin
/// exception (origin host equal to `Host`) applies only when no list is configured, because
/// under DNS rebinding an attacker's page is same-origin with a `Host` the attacker chose
/// (`Origin: http://evil.example`, `Host: evil.example`), and a configured list is the
/// operator saying exactly which pages may connect.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return true;
    };
    let origin = origin.to_ascii_lowercase();
    if !allowed.is_empty() {
        return allowed
            .iter()
            .any(|pattern| crate::glob::matches(&pattern.to_ascii_lowercase(), &origin));
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(&origin);
    !host.is_empty() && origin_host == host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(http::header::ORIGIN, o.parse().unwrap());
        }
        h.insert(http::header::HOST, host.parse().unwrap());
        h
    }

    fn allowed(origin: &str, host: &str, list: &[&str]) -> bool {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        origin_allowed(&headers(Some(origin), host), &list)
    }

    #[test]
    fn a_list_admits_its_patterns_only() {
        let list = ["https://example.com", "https://*.example.org"];
        assert!(origin_allowed(&headers(None, "h"), &[]));
        assert!(allowed("https://example.com", "h", &list));
        assert!(allowed("HTTPS://EXAMPLE.COM", "h", &list));
        assert!(allowed("https://a.example.org", "h", &list));
        assert!(allowed("https://a.b.example.org", "h", &list));
        assert!(!allowed("https://example.org", "h", &list));
        assert!(!allowed("http://example.com", "h", &list));
        assert!(!allowed("https://example.com.evil.net", "h", &list));
        assert!(allowed("https://whatever.test", "h", &["*"]));
    }

    #[test]
    fn same_origin_is_allowed_only_without_a_list() {
        assert!(allowed("http://localhost:8000", "localhost:8000", &[]));
        assert!(!allowed("https://x.org", "h", &[]));
        // DNS rebinding: the attacker's page is same-origin with the Host it chose.
        assert!(!allowed(
            "http://evil.example",
            "evil.example",
            &["https://app.example.com"]
        ));
        assert!(allowed(
            "https://app.example.com",
            "evil.example",
            &["https://app.example.com"]
        ));
    }
}

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::engine::StreamPosition;
use crate::error::Disconnect;
use crate::hub::{Batch, ClientHandle, Tags};
use crate::metrics::TransportLabel;
use crate::node::Node;
use crate::protocol::{Encoding, Reply, proto};
use crate::session::{Session, TransportInfo};

/// What starts a session that is not a WebSocket.
pub enum Initial {
    /// Commands from the request (bidirectional emulation).
    Frame(Bytes),
    /// The connect request of a unidirectional client, with stream positions to resume
    /// from (SSE `Last-Event-ID`).
    Connect(Box<proto::ConnectRequest>, HashMap<String, StreamPosition>),
}

/// Creates a session, handles its first commands and, once it is connected, runs it in
/// the background (later commands arrive as control frames). Returns its handle, whose
/// queue the caller streams to the client.
pub async fn start_session(
    node: Arc<Node>,
    info: TransportInfo,
    headers: &http::HeaderMap,
    initial: Initial,
) -> Arc<ClientHandle> {
    let mut session = Session::new(node, info);
    session.keep_request_headers(headers);
    let handle = session.handle();
    let result = match initial {
        Initial::Frame(frame) => session.handle_frame(&frame).await,
        Initial::Connect(req, resume) => session.connect_unidirectional(*req, resume).await,
    };
    match result {
        Ok(()) if session.is_connected() => {
            tokio::spawn(session.run(futures_util::stream::pending()));
        }
        // An error reply to the connect is queued; the stream ends after it.
        Ok(()) => session.close(&Disconnect::CONNECTION_CLOSED).await,
        Err(d) => session.close(&d).await,
    }
    handle
}

/// How a streaming transport delimits messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One JSON message per line (HTTP streaming, JSON).
    Lines,
    /// Length-prefixed Protobuf messages back to back.
    Delimited,
    /// One SSE event per message: `data: <json>` and a blank line.
    SseData,
    /// As `SseData`, and every event that moves a stream position carries an `id:` with
    /// all of the connection's positions (see [`sse_id`]), for `Last-Event-ID` resume.
    SseWithIds,
}

impl Framing {
    /// Appends one framed message.
    pub fn frame(self, message: &[u8], out: &mut BytesMut) {
        match self {
            Framing::Lines => {
                out.extend_from_slice(message);
                out.put_u8(b'\n');
            }
            Framing::Delimited => out.extend_from_slice(message),
            Framing::SseData | Framing::SseWithIds => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(message);
                out.extend_from_slice(b"\n\n");
            }
        }
    }
}

/// Closes the client's queue when the response body is dropped (the client went away).
struct CloseOnDrop(Arc<ClientHandle>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.queue.close(Disconnect::CONNECTION_CLOSED);
    }
}

/// A response body that streams the client's queue: every batch becomes one chunk (write
/// coalescing). A server-side disconnect is sent as a Disconnect push before the end.
pub fn queue_body(
    node: &Node,
    handle: Arc<ClientHandle>,
    framing: Framing,
    transport: &'static str,
) -> axum::body::Body {
    let sent = node
        .metrics
        .messages_sent
        .get_or_create(&TransportLabel { transport })
        .clone();
    let encoding = handle.queue.encoding();
    let state = (
        CloseOnDrop(handle),
        false,
        Positions::new(),
        Batch::default(),
    );
    let stream =
        futures_util::stream::unfold(state, move |(guard, done, mut positions, mut batch)| {
            let sent = sent.clone();
            async move {
                if done {
                    return None;
                }
                guard.0.queue.next_batch_into(&mut batch).await;
                let mut buf = BytesMut::new();
                let mut tags = batch.tags.iter().peekable();
                for (i, item) in batch.items.iter().enumerate() {
                    if let Some((_, t)) = tags.next_if(|(at, _)| *at == i)
                        && framing == Framing::SseWithIds
                    {
                        positions.apply(t);
                        buf.extend_from_slice(b"id: ");
                        buf.extend_from_slice(positions.sse_id().as_bytes());
                        buf.put_u8(b'\n');
                    }
                    framing.frame(item, &mut buf);
                }
                sent.inc_by(batch.items.len() as u64);
                batch.items.clear();
                let mut finished = false;
                if let Some(d) = batch.close.take() {
                    finished = true;
                    if d != Disconnect::CONNECTION_CLOSED
                        && let Some(bytes) = encoding.encode_reply(&disconnect_push(&d))
                    {
                        framing.frame(&bytes, &mut buf);
                    }
                }
                if buf.is_empty() && finished {
                    return None;
                }
                Some((
                    Ok::<Bytes, Infallible>(buf.freeze()),
                    (guard, finished, positions, batch),
                ))
            }
        });
    axum::body::Body::from_stream(stream)
}

fn disconnect_push(d: &Disconnect) -> Reply {
    Reply {
        push: Some(proto::Push {
            disconnect: Some(d.to_proto()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Response headers every streaming response carries: no caching, no proxy buffering.
pub fn streaming_headers(content_type: &'static str) -> [(http::HeaderName, &'static str); 3] {
    [
        (http::header::CONTENT_TYPE, content_type),
        (
            http::header::CACHE_CONTROL,
            "no-cache, no-store, must-revalidate",
        ),
        (http::HeaderName::from_static("x-accel-buffering"), "no"),
    ]
}

/// Whether a request body is Protobuf (by content type).
pub fn is_protobuf_request(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"))
}

/// The encoding that matches `protobuf` for a transport direction.
pub fn encoding_for(protobuf: bool, unidirectional: bool) -> Encoding {
    match (protobuf, unidirectional) {
        (false, false) => Encoding::Json,
        (true, false) => Encoding::Protobuf,
        (false, true) => Encoding::UniJson,
        (true, true) => Encoding::UniProtobuf,
    }
}

/// A connection's stream positions, by channel, as its events moved them.
#[derive(Default)]
pub struct Positions(BTreeMap<Arc<str>, (u64, Arc<str>)>);

impl Positions {
    /// No positions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the positions an item carries.
    pub fn apply(&mut self, tags: &Tags) {
        for t in tags.iter() {
            self.0
                .insert(t.channel.clone(), (t.offset, t.epoch.clone()));
        }
    }

    /// The SSE event id for the current positions (see [`sse_id`]).
    pub fn sse_id(&self) -> String {
        sse_id(self.0.iter().map(|(c, (o, e))| (&**c, *o, &**e)))
    }
}

/// Formats stream positions as an SSE event id: entries `offset:epoch:channel` joined by
/// `,`. In channel names `%`, `,`, spaces, control characters and every non-ASCII byte
/// are percent-encoded (UTF-8 bytes), so the id is plain ASCII that any proxy passes
/// through. Epochs never contain `:`, so the channel is everything after the second colon.
pub fn sse_id<'a>(positions: impl Iterator<Item = (&'a str, u64, &'a str)>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (i, (channel, offset, epoch)) in positions.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{offset}:{epoch}:");
        for b in channel.bytes() {
            if b == b'%' || b == b',' || !(0x21..=0x7e).contains(&b) {
                let _ = write!(out, "%{b:02X}");
            } else {
                out.push(b as char);
            }
        }
    }
    out
}

/// Parses an SSE event id made by [`sse_id`]; malformed entries are skipped.
pub fn parse_sse_id(id: &str) -> HashMap<String, StreamPosition> {
    let mut out = HashMap::new();
    for entry in id.trim().split(',') {
        let mut parts = entry.splitn(3, ':');
        let (Some(offset), Some(epoch), Some(channel)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(offset), Some(channel)) = (
            offset.parse::<u64>(),
            crate::config::percent_decode(channel),
        ) else {
            continue;
        };
        out.insert(
            channel,
            StreamPosition {
                offset,
                epoch: epoch.to_string(),
            },
        );
    }
    out
}

#[cfg(test)]
mod sse_id_tests {
    use super::*;

    #[test]
    fn sse_ids_round_trip() {
        let id = sse_id([("chat:room,1%", 42, "ab12cd34"), ("news", 0, "ffff0000")].into_iter());
        assert_eq!(id, "42:ab12cd34:chat:room%2C1%25,0:ffff0000:news");
        let non_ascii = sse_id([("rec:é x", 1, "e")].into_iter());
        assert_eq!(non_ascii, "1:e:rec:%C3%A9%20x");
        assert_eq!(parse_sse_id(&non_ascii)["rec:é x"].offset, 1);
        let back = parse_sse_id(&id);
        assert_eq!(
            back["chat:room,1%"],
            StreamPosition {
                offset: 42,
                epoch: "ab12cd34".into()
            }
        );
        assert_eq!(back["news"].offset, 0);
        assert!(parse_sse_id("garbage,x:y").is_empty());
    }
}
