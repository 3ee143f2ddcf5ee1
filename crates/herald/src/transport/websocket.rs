//! Bidirectional WebSocket at `/connection/websocket`: JSON text frames, or Protobuf
//! binary frames with the `centrifuge-protobuf` subprotocol (or `?format=protobuf`).
//!
//! The reader feeds frames to the session; a writer task drains the session's queue,
//! joining everything queued into one frame and one write (write coalescing). A frame over
//! `websocket.message_size_limit` closes the connection with 1009.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;

use super::ws_common;
use crate::node::Node;
use crate::protocol::Encoding;
use crate::session::{Session, TransportInfo};

const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";
const NAME: &str = "websocket";

/// Accepts the HTTP/1.1 upgrade and starts the session on the upgraded connection.
pub async fn handler(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let accepted = match ws_common::accept(&node, &mut req, Some(PROTOBUF_SUBPROTOCOL)) {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let protobuf_query = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "format=protobuf"));
    let encoding = if accepted.subprotocol || protobuf_query {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let upgrade = accepted.upgrade;
    let headers = std::mem::take(req.headers_mut());
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(node, TokioIo::new(upgraded), encoding, &headers).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    accepted.response
}

/// Runs one WebSocket connection to the end.
/// `headers` are the upgrade request's: the session keeps those a proxy hook forwards.
pub async fn serve<S>(node: Arc<Node>, io: S, encoding: Encoding, headers: &http::HeaderMap)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws_common::server_stream(&node, io).split();
    let mut session = Session::new(
        node.clone(),
        TransportInfo {
            name: NAME,
            encoding,
            unidirectional: false,
            emulation: false,
            positions_in_stream: false,
        },
    );
    session.keep_request_headers(headers);
    let writer = tokio::spawn(ws_common::write_loop(
        node.clone(),
        session.handle(),
        sink,
        NAME,
        true,
    ));
    let reason = session.run(ws_common::inbound(stream)).await;
    tracing::trace!(code = reason.code, "websocket session ended");
    // The writer sends the close frame for `reason`; give it a moment, then drop the socket.
    let _ = tokio::time::timeout(node.config.websocket.write_timeout * 2, writer).await;
}
