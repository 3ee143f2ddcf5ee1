//! Calls to the application's backend (proxy hooks): connect, refresh, subscribe,
//! publish, sub_refresh and RPC, over HTTP (JSON) or gRPC, in Centrifugo v6's shapes so
//! that backends written for Centrifugo work unchanged.
//!
//! [`Proxies`] is built once from the configuration: the client-wide hooks
//! (`client.proxy.*`), the channel hooks' defaults (`channel.proxy.*`), the RPC default
//! (`rpc.proxy`) and the named `proxies` that namespaces select. A session picks the
//! [`Proxy`] for an event and calls it with a [`Call`]; the answer is an [`Outcome`].
//!
//! Every call is bounded: by the proxy's `timeout`, and by `client.proxy.max_in_flight`
//! calls per node (all proxies together), beyond which a call waits, within its timeout,
//! for a free slot. A backend that fails, answers garbage or is too slow gives the caller
//! a [`ProxyError`], which the session turns into the temporary internal error (100),
//! never a hang.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use crate::config::{ChannelOptions, Config, ProxyEndpointConfig, ProxyProtocol, RpcOptions};

pub mod grpc;
mod http_json;
mod wire;

pub use wire::{Call, Conn, Granted, Hook, Outcome, Overrides};

/// Why a proxy call gave no answer the client can be told.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No answer within the proxy's timeout (or no free slot in that time).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request failed (connection refused, reset, bad URL, gRPC status).
    #[error("request failed: {0}")]
    Request(String),
    /// The backend answered with an HTTP status other than 200.
    #[error("backend answered HTTP {0}")]
    Status(u16),
    /// The body is not a response of the expected shape.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// One configured proxy: its settings and its client.
pub struct Proxy {
    config: ProxyEndpointConfig,
    client: Client,
    slots: Arc<Semaphore>,
}

enum Client {
    Http(http_json::HttpProxy),
    Grpc(grpc::GrpcProxy),
}

/// The channel hooks a namespace may enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelHook {
    /// `subscribe_proxy_enabled` / `_name`.
    Subscribe,
    /// `publish_proxy_enabled` / `_name`.
    Publish,
    /// `sub_refresh_proxy_enabled` / `_name`.
    SubRefresh,
}

/// The proxies a node calls, built once from the configuration.
#[derive(Default)]
pub struct Proxies {
    connect: Option<Arc<Proxy>>,
    refresh: Option<Arc<Proxy>>,
    subscribe: Option<Arc<Proxy>>,
    publish: Option<Arc<Proxy>>,
    sub_refresh: Option<Arc<Proxy>>,
    rpc: Option<Arc<Proxy>>,
    named: HashMap<String, Arc<Proxy>>,
    /// Lowercase names of the request headers and gRPC metadata some proxy forwards.
    forwarded: Vec<String>,
}

impl Proxies {
    /// The proxies `config` configures (a validated configuration: a proxy whose client
    /// cannot be built is logged and left out, and its hook fails with error 100).
    pub fn new(config: &Config) -> Proxies {
        let slots = Arc::new(Semaphore::new(config.client.proxy.max_in_flight));
        let build = |c: &ProxyEndpointConfig, key: &str| -> Option<Arc<Proxy>> {
            match Proxy::new(c.clone(), slots.clone()) {
                Ok(p) => Some(Arc::new(p)),
                Err(e) => {
                    tracing::error!(proxy = key, error = %e, "proxy left out");
                    None
                }
            }
        };
        let used = |c: &ProxyEndpointConfig| !c.endpoint.is_empty();
        let client = &config.client.proxy;
        let channel = &config.channel.proxy;
        let mut proxies = Proxies {
            connect: client
                .connect
                .enabled
                .then(|| build(&client.connect, "client.proxy.connect"))
                .flatten(),
            refresh: client
                .refresh
                .enabled
                .then(|| build(&client.refresh, "client.proxy.refresh"))
                .flatten(),
            subscribe: used(&channel.subscribe)
                .then(|| build(&channel.subscribe, "channel.proxy.subscribe"))
                .flatten(),
            publish: used(&channel.publish)
                .then(|| build(&channel.publish, "channel.proxy.publish"))
                .flatten(),
            sub_refresh: used(&channel.sub_refresh)
                .then(|| build(&channel.sub_refresh, "channel.proxy.sub_refresh"))
                .flatten(),
            rpc: used(&config.rpc.proxy)
                .then(|| build(&config.rpc.proxy, "rpc.proxy"))
                .flatten(),
            named: config
                .proxies
                .iter()
                .filter_map(|c| Some((c.name.clone(), build(c, &c.name)?)))
                .collect(),
            forwarded: Vec::new(),
        };
        let mut forwarded: Vec<String> = proxies
            .all()
            .flat_map(|p| p.config.http_headers.iter().chain(&p.config.grpc_metadata))
            .map(|n| n.to_ascii_lowercase())
            .collect();
        forwarded.sort();
        forwarded.dedup();
        proxies.forwarded = forwarded;
        proxies
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Proxy>> {
        [
            &self.connect,
            &self.refresh,
            &self.subscribe,
            &self.publish,
            &self.sub_refresh,
            &self.rpc,
        ]
        .into_iter()
        .flatten()
        .chain(self.named.values())
    }

    /// Whether any proxy is configured.
    pub fn any(&self) -> bool {
        self.all().next().is_some()
    }

    /// The connect proxy, when connects without a token go to the backend.
    pub fn connect(&self) -> Option<&Proxy> {
        self.connect.as_deref()
    }

    /// The refresh proxy, when the backend (rather than the client) prolongs expiring
    /// connections.
    pub fn refresh(&self) -> Option<&Proxy> {
        self.refresh.as_deref()
    }

    /// The proxy for `hook` in a namespace with `options`; `None` when the namespace does
    /// not enable the hook.
    pub fn channel(&self, hook: ChannelHook, options: &ChannelOptions) -> Option<&Proxy> {
        let (enabled, name, default) = match hook {
            ChannelHook::Subscribe => (
                options.subscribe_proxy_enabled,
                &options.subscribe_proxy_name,
                &self.subscribe,
            ),
            ChannelHook::Publish => (
                options.publish_proxy_enabled,
                &options.publish_proxy_name,
                &self.publish,
            ),
            ChannelHook::SubRefresh => (
                options.sub_refresh_proxy_enabled,
                &options.sub_refresh_proxy_name,
                &self.sub_refresh,
            ),
        };
        self.select(enabled, name, default)
    }

    /// The proxy for an RPC method with `options`; `None` when its namespace does not
    /// proxy RPC.
    pub fn rpc(&self, options: &RpcOptions) -> Option<&Proxy> {
        self.select(options.proxy_enabled, &options.proxy_name, &self.rpc)
    }

    fn select<'a>(
        &'a self,
        enabled: bool,
        name: &str,
        default: &'a Option<Arc<Proxy>>,
    ) -> Option<&'a Proxy> {
        if !enabled {
            return None;
        }
        if name.is_empty() {
            default.as_deref()
        } else {
            self.named.get(name).map(|p| &**p)
        }
    }

    /// Whether a namespace enables `hook` (even if its proxy could not be built: the
    /// call then fails rather than being skipped).
    pub fn channel_enabled(hook: ChannelHook, options: &ChannelOptions) -> bool {
        match hook {
            ChannelHook::Subscribe => options.subscribe_proxy_enabled,
            ChannelHook::Publish => options.publish_proxy_enabled,
            ChannelHook::SubRefresh => options.sub_refresh_proxy_enabled,
        }
    }

    /// The lowercase names of the client's request headers (or gRPC metadata) some proxy
    /// forwards: what a transport keeps of the request for the session.
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &str> {
        self.forwarded.iter().map(String::as_str)
    }
}

impl Proxy {
    fn new(config: ProxyEndpointConfig, slots: Arc<Semaphore>) -> Result<Proxy, ProxyError> {
        let client = match config.protocol().map_err(ProxyError::Request)? {
            ProxyProtocol::Http => Client::Http(http_json::HttpProxy::new(&config)),
            ProxyProtocol::Grpc => Client::Grpc(grpc::GrpcProxy::new(&config)?),
        };
        Ok(Proxy {
            config,
            client,
            slots,
        })
    }

    /// Asks the backend; at most the proxy's timeout, waiting for a slot included.
    pub async fn call(&self, call: Call<'_>) -> Result<Outcome, ProxyError> {
        let timeout = self.config.timeout;
        let started = Instant::now();
        let work = async {
            let _slot = self.slots.acquire().await;
            let headers = self.headers(&call.conn);
            match &self.client {
                Client::Http(c) => c.call(&self.config, &call, headers).await,
                Client::Grpc(c) => c.call(&self.config, &call, headers).await,
            }
        };
        let answer = tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(ProxyError::Timeout(timeout)));
        tracing::debug!(
            hook = call.hook.name(),
            client = call.conn.client,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = answer.is_ok(),
            "proxy answered"
        );
        answer
    }

    /// The call's headers (gRPC: metadata): the static ones, then the emulated ones
    /// allowed, then the transport's allowed ones (later sources win, as Centrifugo). A
    /// client over HTTP forwards its `http_headers`, one over gRPC its `grpc_metadata`.
    fn headers(&self, conn: &Conn<'_>) -> HeaderMap {
        let c = &self.config;
        let statics: &BTreeMap<String, String> = match self.client {
            Client::Http(_) => &c.http.static_headers,
            Client::Grpc(_) => &c.grpc.static_metadata,
        };
        let transport_list = if conn.grpc {
            &c.grpc_metadata
        } else {
            &c.http_headers
        };
        let mut out = HeaderMap::new();
        let mut put = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
                HeaderValue::from_str(value),
            ) {
                out.insert(n, v);
            }
        };
        for (name, value) in statics {
            put(name, value);
        }
        for name in &c.emulated_headers {
            if let Some((_, v)) = conn
                .emulated
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                put(name, v);
            }
        }
        for name in transport_list {
            if let Some(v) = conn
                .headers
                .get(name.to_ascii_lowercase().as_str())
                .and_then(|v| v.to_str().ok())
            {
                put(name, v);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::protocol::Encoding;

    #[tokio::test]
    async fn forwarded_headers_follow_the_lists_and_transport_values_win() {
        let proxy = Proxy::new(
            ProxyEndpointConfig {
                enabled: true,
                endpoint: "http://127.0.0.1:1/connect".into(),
                http_headers: vec!["Cookie".into(), "X-Real-Ip".into()],
                emulated_headers: vec!["Authorization".into(), "Cookie".into()],
                grpc_metadata: vec!["x-grpc".into()],
                http: crate::config::ProxyHttpConfig {
                    static_headers: [("X-Static".to_string(), "s".to_string())].into(),
                },
                ..Default::default()
            },
            Arc::new(Semaphore::new(8)),
        )
        .unwrap();
        let mut request = HeaderMap::new();
        request.insert("cookie", HeaderValue::from_static("session=real"));
        request.insert("user-agent", HeaderValue::from_static("not listed"));
        request.insert("x-grpc", HeaderValue::from_static("metadata"));
        let emulated: HashMap<String, String> = [
            ("authorization".to_string(), "Bearer x".to_string()),
            ("Cookie".to_string(), "session=emulated".to_string()),
            ("X-Other".to_string(), "no".to_string()),
        ]
        .into();
        let meta = Bytes::new();
        let mut conn = Conn {
            client: "c",
            transport: "websocket",
            encoding: Encoding::Json,
            user: "",
            meta: &meta,
            headers: &request,
            emulated: &emulated,
            grpc: false,
        };
        let out = proxy.headers(&conn);
        assert_eq!(out["x-static"], "s");
        assert_eq!(out["authorization"], "Bearer x");
        assert_eq!(out["cookie"], "session=real", "the transport's value wins");
        assert!(out.get("user-agent").is_none() && out.get("x-other").is_none());
        assert!(
            out.get("x-grpc").is_none(),
            "grpc_metadata is for gRPC clients"
        );
        assert_eq!(out.len(), 3);
        conn.grpc = true;
        let out = proxy.headers(&conn);
        assert_eq!(out["x-grpc"], "metadata");
        assert_eq!(
            out["cookie"], "session=emulated",
            "http_headers is for HTTP clients"
        );
    }
}
