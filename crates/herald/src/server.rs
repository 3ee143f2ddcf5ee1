//! Listeners, routing and graceful shutdown. One port serves HTTP/1.1 and h2c (HTTP/2 with
//! prior knowledge) through hyper-util's auto builder, with upgrades for WebSocket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::node::Node;
use crate::transport;

/// How long shutdown waits for clients to go after telling them to reconnect.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Every route on the one listener.
pub fn router(node: Arc<Node>) -> Router {
    let mut r = Router::new()
        .route("/connection/websocket", any(transport::websocket::handler))
        .route(
            "/connection/http_stream",
            post(transport::http_stream::handler),
        )
        .route(
            "/connection/sse",
            get(transport::sse::handler).post(transport::sse::handler),
        )
        .route("/emulation", post(transport::emulation::handler))
        .route(
            "/connection/uni_websocket",
            any(transport::uni_websocket::handler),
        )
        .route(
            "/connection/uni_http_stream",
            post(transport::uni_http_stream::handler),
        )
        .route(
            "/connection/uni_sse",
            get(transport::uni_sse::handler).post(transport::uni_sse::handler),
        )
        .route("/api/{method}", post(crate::api::handler))
        .route("/health", get(health));
    if node.config.prometheus.enabled {
        r = r.route("/metrics", get(metrics));
    }
    r.with_state(node)
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({}))
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    node.metrics.update_gauges(&node.hub);
    (
        [(
            http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.render(),
    )
}

/// A bound listener, ready to serve.
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
}

impl Server {
    /// Binds the configured address.
    pub async fn bind(node: Arc<Node>) -> std::io::Result<Server> {
        let addr = format!(
            "{}:{}",
            node.config.http_server.address, node.config.http_server.port
        );
        let listener = TcpListener::bind(&addr).await?;
        Ok(Server { node, listener })
    }

    /// The address actually bound (port 0 resolves here).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, tells every client to
    /// reconnect (shutdown code), and waits up to a few seconds for connections to drain.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server { node, listener } = self;
        node.spawn_background();
        let app = router(node.clone());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            // Out of file descriptors and similar: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(app.clone());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::trace!(%peer, error = %e, "connection ended with error");
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: telling clients to reconnect");
        node.shutdown();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        while node.hub.num_clients() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
        tracing::info!("stopped");
    }
}
