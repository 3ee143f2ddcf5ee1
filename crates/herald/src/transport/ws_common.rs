//! What both WebSocket transports share: the handshake (RFC 6455 over an HTTP/1.1 upgrade, or
//! RFC 8441's extended CONNECT on an HTTP/2 stream, so that WebSocket shares an HTTP/2
//! connection with everything else), the inbound frame stream and the writer that drains a
//! session's queue.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, Stream, StreamExt};
use http::{HeaderValue, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use tokio_websockets::{CloseCode, Limits, Message};

use crate::error::Disconnect;
use crate::hub::{Batch, ClientHandle};
use crate::metrics::TransportLabel;
use crate::node::Node;
use crate::protocol::Encoding;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn header_has_token(value: Option<&HeaderValue>, token: &str) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// An accepted handshake: the 101 response to return and the upgraded connection to come.
pub struct Accepted {
    /// The `101 Switching Protocols` response.
    pub response: Response,
    /// Resolves to the raw connection once the response is sent.
    pub upgrade: OnUpgrade,
    /// Whether the client offered (and got) `subprotocol`.
    pub subprotocol: bool,
}

/// Validates a WebSocket opening (method, headers, version, Origin) and builds the
/// response. `subprotocol` is selected when the client offers it.
///
/// HTTP/1.1: a GET with `Upgrade: websocket` and a key, answered 101 with the accept hash.
/// HTTP/2 (RFC 8441): a CONNECT whose `:protocol` is `websocket`, answered 200; the stream
/// then carries the WebSocket frames (no key, no hash: the stream is already the client's).
pub fn accept(
    node: &Node,
    req: &mut Request,
    subprotocol: Option<&str>,
) -> Result<Accepted, Box<Response>> {
    let bad = |msg: &'static str| Box::new((StatusCode::BAD_REQUEST, msg).into_response());
    let headers = req.headers();
    let extended_connect = req.method() == http::Method::CONNECT
        && req.version() == http::Version::HTTP_2
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    if !extended_connect
        && (!header_has_token(headers.get(header::UPGRADE), "websocket")
            || !header_has_token(headers.get(header::CONNECTION), "upgrade"))
    {
        return Err(bad("expected a WebSocket upgrade request"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(bad("unsupported Sec-WebSocket-Version (13 required)"));
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    if key.is_none() && !extended_connect {
        return Err(bad("missing Sec-WebSocket-Key"));
    }
    if !super::origin_allowed(headers, &node.config.client.allowed_origins) {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "WebSocket origin not allowed");
        return Err(Box::new(
            (StatusCode::FORBIDDEN, "origin not allowed").into_response(),
        ));
    }
    let selected =
        subprotocol.filter(|p| header_has_token(headers.get(header::SEC_WEBSOCKET_PROTOCOL), p));
    let upgrade = hyper::upgrade::on(&mut *req);
    let mut resp = match key.filter(|_| !extended_connect) {
        Some(key) => {
            let mut sha = sha1_smol::Sha1::new();
            sha.update(key.as_bytes());
            sha.update(WS_GUID.as_bytes());
            let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::UPGRADE, "websocket")
                .header(header::CONNECTION, "Upgrade")
                .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        }
        None => Response::builder().status(StatusCode::OK),
    };
    if let Some(p) = selected {
        resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    let response = resp
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    let http = if extended_connect { "2" } else { "1.1" };
    node.metrics
        .websocket_handshakes
        .get_or_create(&crate::metrics::HttpVersionLabel { http })
        .inc();
    Ok(Accepted {
        response,
        upgrade,
        subprotocol: selected.is_some(),
    })
}

/// A server-side WebSocket stream over an upgraded connection, with the message size limit.
pub fn server_stream<S>(node: &Node, io: S) -> tokio_websockets::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let limit = node.config.websocket.message_size_limit;
    tokio_websockets::ServerBuilder::new()
        .limits(Limits::default().max_payload_len(Some(limit)))
        .serve(io)
}

/// Data frames as a stream of payloads; ends at a close frame or when the peer goes away.
/// A frame over the size limit ends it with 1009.
pub fn inbound<St>(stream: St) -> impl Stream<Item = Result<Bytes, Disconnect>> + Unpin
where
    St: Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    Box::pin(futures_util::stream::unfold(stream, |mut s| async move {
        loop {
            match s.next().await? {
                Ok(m) if m.is_text() || m.is_binary() => {
                    return Some((Ok(Bytes::from(m.into_payload())), s));
                }
                Ok(m) if m.is_close() => return None,
                Ok(_) => continue,
                Err(tokio_websockets::Error::PayloadTooLong { len, max_len }) => {
                    tracing::debug!(len, max_len, "WebSocket message over the size limit");
                    return Some((Err(Disconnect::custom(1009, "message too big")), s));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket read error");
                    return Some((Err(Disconnect::BAD_REQUEST), s));
                }
            }
        }
    }))
}

/// Drains the client's queue to the socket until the queue closes, then sends the close
/// frame. With `batch_frames`, everything queued goes out as one frame (messages joined
/// as the encoding batches them); otherwise one frame per message, still in one write.
pub async fn write_loop<Si>(
    node: Arc<Node>,
    handle: Arc<ClientHandle>,
    mut sink: Si,
    transport: &'static str,
    batch_frames: bool,
) where
    Si: futures_util::Sink<Message, Error = tokio_websockets::Error> + Unpin,
{
    let encoding: Encoding = handle.queue.encoding();
    let timeout = node.config.websocket.write_timeout;
    let sent = node
        .metrics
        .messages_sent
        .get_or_create(&TransportLabel { transport })
        .clone();
    let message = |payload: Bytes| {
        if encoding.is_json() {
            Message::text(payload)
        } else {
            Message::binary(payload)
        }
    };
    let mut buf = BytesMut::new();
    let mut batch = Batch::default();
    loop {
        handle.queue.next_batch_into(&mut batch).await;
        let n = batch.items.len();
        if n > 0 {
            let write = async {
                if batch_frames || n == 1 {
                    let payload = if n == 1 {
                        batch.items[0].clone()
                    } else {
                        encoding.join(&batch.items, &mut buf);
                        buf.split().freeze()
                    };
                    sink.send(message(payload)).await
                } else {
                    for item in &batch.items {
                        sink.feed(message(item.clone())).await?;
                    }
                    sink.flush().await
                }
            };
            let written = tokio::time::timeout(timeout, write).await;
            match written {
                Ok(Ok(())) => {
                    sent.inc_by(n as u64);
                    node.metrics.batch_size.observe(n as f64);
                    // Written: let go of the messages now rather than at the next batch.
                    batch.items.clear();
                }
                _ => {
                    handle.queue.close(Disconnect::WRITE_ERROR);
                    return;
                }
            }
        }
        if let Some(d) = batch.close.take() {
            let code = u16::try_from(d.code)
                .ok()
                .and_then(|c| CloseCode::try_from(c).ok());
            let reason: String = d.reason.chars().take(120).collect();
            let _ = tokio::time::timeout(timeout, async {
                let _ = sink.send(Message::close(code, &reason)).await;
                let _ = sink.close().await;
            })
            .await;
            return;
        }
    }
}
