//! Transport adapters: each turns a socket or an HTTP request into a [`crate::session::Session`]
//! and drains the session's queue back to the client. Adapters never import each other.

pub mod emulation;
pub mod http_stream;
pub mod sse;
pub mod websocket;

use http::HeaderMap;

/// Whether a browser's `Origin` may open a connection (protection against cross-site
/// WebSocket hijacking). No Origin header (not a browser) is allowed; otherwise the origin
/// must match one of `allowed` ("*", exact, or with `*` wildcards) or the request's Host.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return true;
    };
    let origin = origin.to_ascii_lowercase();
    if allowed
        .iter()
        .any(|pattern| wildcard_match(&pattern.to_ascii_lowercase(), &origin))
    {
        return true;
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(&origin);
    !host.is_empty() && origin_host == host.to_ascii_lowercase()
}

/// Glob match where `*` stands for any run of characters.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
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

    #[test]
    fn origins() {
        let allowed = vec!["https://*.example.com".to_string()];
        assert!(origin_allowed(&headers(None, "h"), &allowed));
        assert!(origin_allowed(
            &headers(Some("https://app.example.com"), "h"),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(Some("https://evil.com"), "h"),
            &allowed
        ));
        assert!(!origin_allowed(
            &headers(Some("https://example.com.evil.com"), "h"),
            &allowed
        ));
        assert!(origin_allowed(
            &headers(Some("http://localhost:8000"), "localhost:8000"),
            &[]
        ));
        assert!(origin_allowed(
            &headers(Some("https://x.org"), "h"),
            &["*".to_string()]
        ));
    }
}

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Disconnect;
use crate::hub::ClientHandle;
use crate::metrics::TransportLabel;
use crate::node::Node;
use crate::protocol::{Encoding, Reply, proto};
use crate::session::{Session, TransportInfo};

/// What starts a session that is not a WebSocket.
pub enum Initial {
    /// Commands from the request (bidirectional emulation).
    Frame(Bytes),
    /// The connect request of a unidirectional client.
    Connect(proto::ConnectRequest),
}

/// Creates a session, handles its first commands and, once it is connected, runs it in
/// the background (later commands arrive as control frames). Returns its handle, whose
/// queue the caller streams to the client.
pub async fn start_session(
    node: Arc<Node>,
    info: TransportInfo,
    initial: Initial,
) -> Arc<ClientHandle> {
    let mut session = Session::new(node, info);
    let handle = session.handle();
    let result = match initial {
        Initial::Frame(frame) => session.handle_frame(&frame).await,
        Initial::Connect(req) => session.connect_unidirectional(req).await,
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
            Framing::SseData => {
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
    let state = (CloseOnDrop(handle), false);
    let stream = futures_util::stream::unfold(state, move |(guard, done)| {
        let sent = sent.clone();
        async move {
            if done {
                return None;
            }
            let batch = guard.0.queue.next_batch().await;
            let mut buf = BytesMut::new();
            for item in &batch.items {
                framing.frame(item, &mut buf);
            }
            sent.inc_by(batch.items.len() as u64);
            let mut finished = false;
            if let Some(d) = batch.close {
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
            Some((Ok::<Bytes, Infallible>(buf.freeze()), (guard, finished)))
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
