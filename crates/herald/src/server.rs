//! Listeners, routing and graceful shutdown. One port serves HTTP/1.1, h2c (HTTP/2 with
//! prior knowledge) and, when `http_server.tls` is set, TLS with ALPN `h2` and `http/1.1`,
//! through hyper-util's auto builder, with upgrades for WebSocket. `grpc_api.port` and
//! `uni_grpc.port`, when set, add listeners of their own for those gRPC services (plain
//! HTTP/1.1 and h2c, as Centrifugo serves them), served by the same loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, any, get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::listener::{self, AcceptErrorLog, FirstBytesDeadline};
use crate::node::Node;
use crate::request_body::BodyLimit;
use crate::transport;

/// At most one "accept failed" line per this interval (a full descriptor table fails
/// every accept).
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Every route on the one listener; transports turned off in the config are not routed.
pub fn router(node: Arc<Node>) -> Router {
    let cfg = node.config.clone();
    let timeout = cfg.http_server.request_body_timeout;
    let limited = |m: MethodRouter<Arc<Node>>, max_size: usize, key: &'static str| {
        BodyLimit {
            max_size,
            key,
            timeout,
        }
        .apply(m)
    };
    // The key is checked from the headers before any of the body is read.
    let api = limited(
        post(crate::api::handler),
        cfg.http_api.max_request_body_size,
        "http_api.max_request_body_size",
    )
    .layer(axum::middleware::from_fn_with_state(
        node.clone(),
        crate::api::require_key,
    ));
    let mut r = Router::new()
        .route("/connection/websocket", any(transport::websocket::handler))
        .route("/api/{method}", api)
        .route("/health", get(health));
    if cfg.http_stream.enabled {
        r = r.route(
            "/connection/http_stream",
            limited(
                post(transport::http_stream::handler),
                cfg.http_stream.max_request_body_size,
                "http_stream.max_request_body_size",
            ),
        );
    }
    if cfg.sse.enabled {
        r = r.route(
            "/connection/sse",
            limited(
                get(transport::sse::handler).post(transport::sse::handler),
                cfg.sse.max_request_body_size,
                "sse.max_request_body_size",
            ),
        );
    }
    if cfg.http_stream.enabled || cfg.sse.enabled {
        r = r.route(
            "/emulation",
            limited(
                post(transport::emulation::handler),
                cfg.emulation.max_request_body_size,
                "emulation.max_request_body_size",
            ),
        );
    }
    if cfg.uni_websocket.enabled {
        r = r.route(
            "/connection/uni_websocket",
            any(transport::uni_websocket::handler),
        );
    }
    if cfg.uni_http_stream.enabled {
        r = r.route(
            "/connection/uni_http_stream",
            limited(
                post(transport::uni_http_stream::handler),
                cfg.uni_http_stream.max_request_body_size,
                "uni_http_stream.max_request_body_size",
            ),
        );
    }
    if cfg.uni_sse.enabled {
        r = r.route(
            "/connection/uni_sse",
            limited(
                get(transport::uni_sse::handler).post(transport::uni_sse::handler),
                cfg.uni_sse.max_request_body_size,
                "uni_sse.max_request_body_size",
            ),
        );
    }
    if cfg.prometheus.enabled {
        r = r.route("/metrics", get(metrics));
    }
    // gRPC services route by path (`/<package>.<Service>/<Method>`), so they share the port.
    let grpc = transport::grpc::router(&node).merge(crate::grpc_api::router(&node));
    r.with_state(node.clone())
        .merge(grpc)
        .merge(crate::web::router(node.clone()))
        .layer(axum::middleware::from_fn_with_state(
            node,
            transport::cors::middleware,
        ))
        .layer(axum::middleware::from_fn(host_from_authority))
}

/// HTTP/2 requests carry the host in `:authority`, not in a `Host` header; copy it so
/// that every same-origin check sees the host whatever the HTTP version.
async fn host_from_authority(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !req.headers().contains_key(http::header::HOST)
        && let Some(value) = req
            .uri()
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(http::header::HOST, value);
    }
    next.run(req).await
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

/// Error raised while setting up the listener.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// `address:port` as configured.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error("http_server.tls: {0}")]
    Tls(String),
}

/// Builds the TLS acceptor from `http_server.tls`, offering HTTP/2 and HTTP/1.1 by ALPN.
/// The certificate and key are read as Centrifugo reads them (see `TlsConfig::identity`);
/// errors name the keys at fault.
fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, ServerError> {
    let tls = &config.http_server.tls;
    if !tls.is_on() {
        return Ok(None);
    }
    let id = tls
        .identity()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(id.certs, id.key)
        .map_err(|e| {
            ServerError::Tls(format!(
                "the certificate ({}) and the private key ({}) do not fit together: {e}",
                id.cert_key, id.key_key
            ))
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// The routes of a gRPC port of its own: the server API, the gRPC client transports, or both.
fn grpc_router(node: &Arc<Node>, api: bool, clients: bool) -> Router {
    let mut r = Router::new();
    if clients {
        r = r.merge(transport::grpc::router(node));
    }
    if api {
        r = r.merge(crate::grpc_api::router(node));
    }
    // Browsers reach these through gRPC-Web, cross-origin as on the main port.
    r.layer(axum::middleware::from_fn_with_state(
        node.clone(),
        transport::cors::middleware,
    ))
}

/// A listener of its own for gRPC services (`grpc_api.port`, `uni_grpc.port`).
struct GrpcListener {
    listener: TcpListener,
    api: bool,
    clients: bool,
}

/// A bound listener, ready to serve.
pub struct Server {
    node: Arc<Node>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    grpc: Vec<GrpcListener>,
}

impl Server {
    /// Binds the configured address and prepares TLS when configured.
    pub async fn bind(node: Arc<Node>) -> Result<Server, ServerError> {
        let address = format!(
            "{}:{}",
            node.config.http_server.address, node.config.http_server.port
        );
        let tls = tls_acceptor(&node.config)?;
        let backlog = listener::backlog(node.config.http_server.listen_backlog);
        let listener = listener::bind(&address, backlog)
            .await
            .map_err(|source| ServerError::Bind { address, source })?;
        let cfg = &node.config;
        let own_address = |address: &str, port: u16| {
            let host = if address.is_empty() {
                cfg.http_server.address.as_str()
            } else {
                address
            };
            format!("{host}:{port}")
        };
        // (address, server API, client transports); both on one listener when they share it.
        let mut wanted: Vec<(String, bool, bool)> = Vec::new();
        if cfg.grpc_api.enabled && cfg.grpc_api.port != 0 {
            wanted.push((
                own_address(&cfg.grpc_api.address, cfg.grpc_api.port),
                true,
                false,
            ));
        }
        if cfg.uni_grpc.enabled && cfg.uni_grpc.port != 0 {
            let a = own_address(&cfg.uni_grpc.address, cfg.uni_grpc.port);
            match wanted.iter_mut().find(|w| w.0 == a) {
                Some(w) => w.2 = true,
                None => wanted.push((a, false, true)),
            }
        }
        let mut grpc = Vec::new();
        for (address, api, clients) in wanted {
            let listener = listener::bind(&address, backlog)
                .await
                .map_err(|source| ServerError::Bind { address, source })?;
            grpc.push(GrpcListener {
                listener,
                api,
                clients,
            });
        }
        Ok(Server {
            node,
            listener,
            tls,
            grpc,
        })
    }

    /// The addresses of the gRPC listeners of their own (`grpc_api.port`, `uni_grpc.port`).
    pub fn grpc_addrs(&self) -> Vec<SocketAddr> {
        self.grpc
            .iter()
            .filter_map(|g| g.listener.local_addr().ok())
            .collect()
    }

    /// The address actually bound (port 0 resolves here).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves, then drains (`shutdown.*`): stops accepting, tells
    /// every client to reconnect (3001) spread over `shutdown.reconnect_spread`, waits until
    /// they are gone or `shutdown.timeout` passed, and closes the engine.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server {
            node,
            listener,
            tls,
            grpc,
        } = self;
        node.start();
        // Index 0 is the main listener; the gRPC ports of their own follow, without TLS.
        let mut listeners = vec![(listener, router(node.clone()), tls)];
        for g in grpc {
            if let Ok(addr) = g.listener.local_addr() {
                tracing::info!(%addr, api = g.api, clients = g.clients, "gRPC listening on its own port");
            }
            listeners.push((g.listener, grpc_router(&node, g.api, g.clients), None));
        }
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let builder = connection_builder(&node.config);
        let mut accept_errors = AcceptErrorLog::new(ACCEPT_ERROR_LOG_INTERVAL);
        let handshake_timeout = node.config.http_server.handshake_timeout;
        let write_timeout = node.config.http_server.write_timeout;
        tokio::pin!(shutdown);
        let mut turn = 0usize;
        loop {
            // Each turn starts at the next listener, so a connection storm on one port
            // cannot starve the others.
            turn = turn.wrapping_add(1);
            let first = turn % listeners.len();
            let accept_any = std::future::poll_fn(|cx| {
                for k in 0..listeners.len() {
                    let i = (first + k) % listeners.len();
                    if let Poll::Ready(r) = listeners[i].0.poll_accept(cx) {
                        return Poll::Ready((i, r));
                    }
                }
                Poll::Pending
            });
            tokio::select! {
                (i, accepted) = accept_any => {
                    let (_, app, tls) = &listeners[i];
                    let (stream, peer) = match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            // Out of file descriptors and similar: back off instead of spinning.
                            accept_errors.failed(&e);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // One deadline from accept covers the TLS handshake and the first bytes.
                    let deadline = tokio::time::Instant::now() + handshake_timeout;
                    let _ = stream.set_nodelay(true);
                    // A write blocked this long means the client stopped reading: the
                    // connection is closed rather than kept with its buffers forever.
                    let mut stream = TimeoutStream::new(stream);
                    stream.set_write_timeout(Some(write_timeout));
                    let stream = Box::pin(stream);
                    let service = TowerToHyperService::new(app.clone());
                    match &tls {
                        None => {
                            let stream = FirstBytesDeadline::new(stream, deadline);
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            let conn = graceful.watch(conn.into_owned());
                            tokio::spawn(async move {
                                if let Err(e) = conn.await {
                                    tracing::trace!(%peer, error = %e, "connection ended with error");
                                }
                            });
                        }
                        Some(acceptor) => {
                            let acceptor = acceptor.clone();
                            let builder = builder.clone();
                            let watcher = graceful.watcher();
                            tokio::spawn(async move {
                                let tls_stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                                    Ok(Ok(s)) => s,
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::debug!(%peer, "TLS handshake timed out");
                                        return;
                                    }
                                };
                                // The protocol ALPN selected is the only one spoken on the
                                // connection (RFC 7301): after `h2`, HTTP/1.1 is refused. Only
                                // `serve_connection` honours `http2_only` (the upgrade-capable
                                // path sniffs the bytes whatever it says), and HTTP/2 has no
                                // Upgrade to serve.
                                let alpn = tls_stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                                let result = match alpn.as_deref() {
                                    Some(b"h2") => {
                                        let io = TokioIo::new(FirstBytesDeadline::new(tls_stream, deadline));
                                        let h2_builder = builder.http2_only();
                                        let conn = h2_builder.serve_connection(io, service);
                                        watcher.watch(conn.into_owned()).await
                                    }
                                    // After `http/1.1` the preface is refused by the reader
                                    // (the upgrade path would take it as HTTP/2).
                                    Some(b"http/1.1") => {
                                        let io = TokioIo::new(FirstBytesDeadline::http1_only(tls_stream, deadline));
                                        let conn = builder.serve_connection_with_upgrades(io, service);
                                        watcher.watch(conn.into_owned()).await
                                    }
                                    _ => {
                                        let io = TokioIo::new(FirstBytesDeadline::new(tls_stream, deadline));
                                        let conn = builder.serve_connection_with_upgrades(io, service);
                                        watcher.watch(conn.into_owned()).await
                                    }
                                };
                                if let Err(e) = result {
                                    tracing::trace!(%peer, error = %e, "connection ended with error");
                                }
                            });
                        }
                    }
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listeners);
        let shutdown = node.config.shutdown.clone();
        let deadline = tokio::time::Instant::now() + shutdown.timeout;
        tracing::info!(
            clients = node.hub.num_clients(),
            spread = ?shutdown.reconnect_spread,
            "shutting down: listeners closed, telling clients to reconnect"
        );
        let _ = tokio::time::timeout_at(deadline, node.shutdown(shutdown.reconnect_spread)).await;
        while node.hub.num_clients() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
        node.close().await;
        tracing::info!("stopped");
    }
}

/// HTTP/1.1 and HTTP/2 settings from `http_server`.
fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let http = &config.http_server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.handshake_timeout);
    let mut h2 = builder.http2();
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(http.http2_max_concurrent_streams)
        // WebSocket over HTTP/2 (RFC 8441): the extended CONNECT that opens it.
        .enable_connect_protocol();
    if !http.http2_keepalive_interval.is_zero() {
        h2.keep_alive_interval(http.http2_keepalive_interval)
            .keep_alive_timeout(http.http2_keepalive_interval);
    }
    builder
}
