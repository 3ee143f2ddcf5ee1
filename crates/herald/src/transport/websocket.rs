//! Bidirectional WebSocket at `/connection/websocket`: JSON text frames, or Protobuf
//! binary frames with the `centrifuge-protobuf` subprotocol (or `?format=protobuf`).
//!
//! The reader feeds frames to the session; a writer task drains the session's queue,
//! joining everything queued into one frame and one write (write coalescing). A frame over
//! `websocket.message_size_limit` closes the connection with 1009.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, Stream, StreamExt};
use http::{HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_websockets::{CloseCode, Limits, Message};

use crate::error::Disconnect;
use crate::hub::ClientHandle;
use crate::metrics::TransportLabel;
use crate::node::Node;
use crate::protocol::Encoding;
use crate::session::{Session, TransportInfo};

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
const NAME: &str = "websocket";

fn bad_request(msg: &'static str) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

fn header_has_token(value: Option<&HeaderValue>, token: &str) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Accepts the HTTP/1.1 upgrade and starts the session on the upgraded connection.
pub async fn handler(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let headers = req.headers();
    if !header_has_token(headers.get(header::UPGRADE), "websocket")
        || !header_has_token(headers.get(header::CONNECTION), "upgrade")
    {
        return bad_request("expected a WebSocket upgrade request");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return bad_request("unsupported Sec-WebSocket-Version (13 required)");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return bad_request("missing Sec-WebSocket-Key");
    };
    if !super::origin_allowed(headers, &node.config.client.allowed_origins) {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "WebSocket origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let protobuf_proto = header_has_token(
        headers.get(header::SEC_WEBSOCKET_PROTOCOL),
        PROTOBUF_SUBPROTOCOL,
    );
    let protobuf_query = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=protobuf"));
    let encoding = if protobuf_proto || protobuf_query {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());

    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(node, TokioIo::new(upgraded), encoding).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if protobuf_proto {
        resp = resp.header(header::SEC_WEBSOCKET_PROTOCOL, PROTOBUF_SUBPROTOCOL);
    }
    resp.body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Runs one WebSocket connection to the end.
pub async fn serve<S>(node: Arc<Node>, io: S, encoding: Encoding)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limit = node.config.websocket.message_size_limit;
    let ws = tokio_websockets::ServerBuilder::new()
        .limits(Limits::default().max_payload_len(Some(limit)))
        .serve(io);
    let (sink, stream) = ws.split();
    let session = Session::new(
        node.clone(),
        TransportInfo {
            name: NAME,
            encoding,
            unidirectional: false,
            emulation: false,
            positions_in_stream: false,
        },
    );
    let handle = session.handle();
    let writer = tokio::spawn(write_loop(node.clone(), handle, sink, encoding));
    let reason = session.run(inbound(stream)).await;
    tracing::trace!(code = reason.code, "websocket session ended");
    // The writer sends the close frame for `reason`; give it a moment, then drop the socket.
    let _ = tokio::time::timeout(node.config.websocket.write_timeout * 2, writer).await;
}

/// Data frames as a stream of payloads; ends at a close frame or when the peer goes away.
fn inbound<St>(stream: St) -> impl Stream<Item = Result<Bytes, Disconnect>> + Unpin
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

async fn write_loop<Si>(
    node: Arc<Node>,
    handle: Arc<ClientHandle>,
    mut sink: Si,
    encoding: Encoding,
) where
    Si: futures_util::Sink<Message, Error = tokio_websockets::Error> + Unpin,
{
    let timeout = node.config.websocket.write_timeout;
    let sent = node
        .metrics
        .messages_sent
        .get_or_create(&TransportLabel { transport: NAME })
        .clone();
    let mut buf = BytesMut::new();
    loop {
        let batch = handle.queue.next_batch().await;
        if !batch.items.is_empty() {
            let payload = if batch.items.len() == 1 {
                batch.items[0].clone()
            } else {
                encoding.join(&batch.items, &mut buf);
                buf.split().freeze()
            };
            let msg = if encoding.is_json() {
                Message::text(payload)
            } else {
                Message::binary(payload)
            };
            match tokio::time::timeout(timeout, sink.send(msg)).await {
                Ok(Ok(())) => {
                    sent.inc_by(batch.items.len() as u64);
                    node.metrics.batch_size.observe(batch.items.len() as f64);
                }
                _ => {
                    handle.queue.close(Disconnect::WRITE_ERROR);
                    return;
                }
            }
        }
        if let Some(d) = batch.close {
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
