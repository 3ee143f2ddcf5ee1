//! Unidirectional WebSocket at `/connection/uni_websocket`, compatible with Centrifugo's:
//! the client's first message is a JSON ConnectRequest; after that the server sends bare
//! Push objects, one per frame (a connect push first, `{}` as a ping). Anything else the
//! client sends is ignored.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;

use super::ws_common;
use crate::error::Disconnect;
use crate::node::Node;
use crate::protocol::{Encoding, proto};
use crate::session::{Session, TransportInfo};

const NAME: &str = "uni_websocket";

/// Accepts the upgrade and runs the connection.
pub async fn handler(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let accepted = match ws_common::accept(&node, &mut req, None) {
        Ok(a) => a,
        Err(resp) => return *resp,
    };
    let upgrade = accepted.upgrade;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(node, TokioIo::new(upgraded)).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    accepted.response
}

async fn serve<S>(node: Arc<Node>, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws_common::server_stream(&node, io).split();
    let mut session = Session::new(
        node.clone(),
        TransportInfo {
            name: NAME,
            encoding: Encoding::UniJson,
            unidirectional: true,
            emulation: false,
            positions_in_stream: false,
        },
    );
    let writer = tokio::spawn(ws_common::write_loop(
        node.clone(),
        session.handle(),
        sink,
        NAME,
        false,
    ));
    let mut inbound = ws_common::inbound(stream);
    // The client has `client.stale_close_delay` to send its connect request.
    let first = tokio::time::timeout(node.config.client.stale_close_delay, inbound.next()).await;
    let connected = match first {
        Ok(Some(Ok(frame))) => match crate::protocol::json::from_slice::<proto::ConnectRequest>(
            &frame,
            node.config.client.max_json_depth,
        ) {
            Ok(req) => {
                session
                    .connect_unidirectional(req, Default::default())
                    .await
            }
            Err(e) => {
                tracing::debug!(error = %e, "malformed uni_websocket connect request");
                Err(Disconnect::BAD_REQUEST)
            }
        },
        Ok(Some(Err(d))) => Err(d),
        Ok(None) => Err(Disconnect::CONNECTION_CLOSED),
        Err(_) => Err(Disconnect::STALE),
    };
    match connected {
        Ok(()) => {
            // Later client messages carry nothing for a unidirectional session: drop them,
            // but keep reading to notice the close.
            let rest = inbound.filter_map(|m| async move {
                match m {
                    Ok(_) => None,
                    Err(d) => Some(Err(d)),
                }
            });
            session.run(Box::pin(rest)).await;
        }
        Err(d) => session.close(&d).await,
    }
    let _ = tokio::time::timeout(node.config.websocket.write_timeout * 2, writer).await;
}
