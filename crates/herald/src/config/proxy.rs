//! Proxy hooks to the application's backend, with Centrifugo v6's keys and defaults:
//! `client.proxy.{connect,refresh}`, `channel.proxy.{subscribe,publish,sub_refresh}`,
//! `rpc.proxy`, and the named `proxies` that namespaces select by name.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;

/// `client.proxy`: the client-wide events proxied to the backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientProxyConfig {
    /// `client.proxy.connect`: called when a client connects without a token; the backend
    /// decides the user (or refuses).
    pub connect: ProxyEndpointConfig,
    /// `client.proxy.refresh`: called when a connection is about to expire, instead of
    /// asking the client for a new token; the backend prolongs it or lets it expire.
    pub refresh: ProxyEndpointConfig,
    /// Most proxy calls one node makes at once (all hooks together); more wait for a slot
    /// within their timeout. Herald only. Default `1024`.
    pub max_in_flight: usize,
}

impl Default for ClientProxyConfig {
    fn default() -> Self {
        ClientProxyConfig {
            connect: ProxyEndpointConfig::default(),
            refresh: ProxyEndpointConfig::default(),
            max_in_flight: 1024,
        }
    }
}

/// `channel.proxy`: the default endpoints of the channel-wide hooks, used by the
/// namespaces that enable a hook without naming a proxy (`enabled` is not read here: a
/// namespace enables the hook).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelProxyConfig {
    /// Called when a client subscribes to a channel of a namespace with
    /// `subscribe_proxy_enabled` (and no subscription token).
    pub subscribe: ProxyEndpointConfig,
    /// Called when a client publishes to a channel of a namespace with
    /// `publish_proxy_enabled`; the backend may refuse or replace the data.
    pub publish: ProxyEndpointConfig,
    /// Called when a subscription with an expiry is about to expire, in a namespace with
    /// `sub_refresh_proxy_enabled`.
    pub sub_refresh: ProxyEndpointConfig,
}

/// One proxy: where to send an event and what to send along. The same object serves
/// every hook, and each entry of `proxies` (with a `name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyEndpointConfig {
    /// In `proxies` only: the name namespaces refer to (`^[-a-zA-Z0-9_.]{2,}$`, unique).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// For `client.proxy.connect` and `client.proxy.refresh`: whether the event is
    /// proxied. Default `false`.
    pub enabled: bool,
    /// `http://host/path` or `https://host/path` (a JSON POST per event; HTTPS trusts the
    /// system's roots) or `grpc://host:port` (the `CentrifugoProxy` service of
    /// `proto/proxy.proto`).
    pub endpoint: String,
    /// How long a call may take before the client gets a temporary error. Default `1s`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Headers of the client's HTTP request (WebSocket upgrade, SSE or HTTP-streaming
    /// request) copied to the call, by name (case-insensitive); as gRPC metadata for a
    /// gRPC proxy. Default none.
    pub http_headers: Vec<String>,
    /// Headers the client sent in its connect command (`headers`, the SDKs' headers
    /// emulation) copied to the call, by name. Client-controlled: only for values the
    /// backend validates. Default none.
    pub emulated_headers: Vec<String>,
    /// Metadata keys of a gRPC client's call (uni_grpc, Herald's bidirectional stream)
    /// copied to the call; as HTTP headers for an HTTP proxy. Default none.
    pub grpc_metadata: Vec<String>,
    /// Send the connection's `meta` (from the connect proxy's result) with every call
    /// but connect's. Default `false`.
    pub include_connection_meta: bool,
    /// Send payloads as base64 (`b64data`) rather than JSON (`data`), for binary
    /// payloads over an HTTP proxy. Default `false`.
    pub binary_encoding: bool,
    /// HTTP-specific options.
    pub http: ProxyHttpConfig,
    /// gRPC-specific options.
    pub grpc: ProxyGrpcConfig,
}

impl Default for ProxyEndpointConfig {
    fn default() -> Self {
        ProxyEndpointConfig {
            name: String::new(),
            enabled: false,
            endpoint: String::new(),
            timeout: Duration::from_secs(1),
            http_headers: Vec::new(),
            emulated_headers: Vec::new(),
            grpc_metadata: Vec::new(),
            include_connection_meta: false,
            binary_encoding: false,
            http: ProxyHttpConfig::default(),
            grpc: ProxyGrpcConfig::default(),
        }
    }
}

/// `http` of a proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyHttpConfig {
    /// Headers added to every call; a forwarded header of the same name wins.
    pub static_headers: BTreeMap<String, String>,
}

/// `grpc` of a proxy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyGrpcConfig {
    /// Metadata key of a per-call credential (with `credentials_value`).
    pub credentials_key: String,
    /// Its value.
    pub credentials_value: String,
    /// Metadata added to every call; forwarded metadata of the same name wins.
    pub static_metadata: BTreeMap<String, String>,
}

/// How a proxy is reached, by its endpoint's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// `http://` or `https://`: JSON over HTTP POST.
    Http,
    /// `grpc://`: unary calls to `CentrifugoProxy`.
    Grpc,
}

impl ProxyEndpointConfig {
    /// The protocol its endpoint names, or why it names none Herald speaks.
    pub fn protocol(&self) -> Result<ProxyProtocol, String> {
        if self.endpoint.starts_with("grpc://") {
            return Ok(ProxyProtocol::Grpc);
        }
        if self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://") {
            return Ok(ProxyProtocol::Http);
        }
        Err(format!(
            "must be an http://, https:// or grpc:// URL (got {:?})",
            self.endpoint
        ))
    }

    /// Checks a proxy that is in use.
    pub fn validate(&self) -> Result<(), String> {
        let protocol = self.protocol()?;
        if protocol == ProxyProtocol::Grpc {
            let rest = &self.endpoint["grpc://".len()..];
            if rest.is_empty() || rest.contains('/') {
                return Err(format!(
                    "a gRPC endpoint is grpc://host:port (got {:?})",
                    self.endpoint
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err("its timeout must be above 0".to_string());
        }
        Ok(())
    }
}

/// `rpc`: where clients' `rpc` commands go. A method's namespace is the part before
/// `rpc.namespace_boundary` (`ns:method`); methods without one use `without_namespace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcConfig {
    /// The default RPC proxy, for namespaces that enable the proxy without naming one.
    pub proxy: ProxyEndpointConfig,
    /// Options of methods without a namespace.
    pub without_namespace: RpcOptions,
    /// RPC namespaces.
    pub namespaces: Vec<RpcNamespace>,
    /// Separates the namespace from the method name. Default `":"`.
    pub namespace_boundary: String,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            proxy: ProxyEndpointConfig::default(),
            without_namespace: RpcOptions::default(),
            namespaces: Vec::new(),
            namespace_boundary: ":".to_string(),
        }
    }
}

/// Options of an RPC namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcOptions {
    /// Proxy the namespace's methods to the backend.
    pub proxy_enabled: bool,
    /// The named proxy (`proxies`) to use; empty: `rpc.proxy`.
    pub proxy_name: String,
}

/// One entry of `rpc.namespaces`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcNamespace {
    /// Unique name matching `^[-a-zA-Z0-9_.]{2,}$`.
    pub name: String,
    /// Proxy the namespace's methods to the backend.
    pub proxy_enabled: bool,
    /// The named proxy to use; empty: `rpc.proxy`.
    pub proxy_name: String,
}

impl RpcConfig {
    /// The options for `method`; `None` when its namespace does not exist.
    pub fn options(&self, method: &str) -> Option<RpcOptions> {
        let ns = if self.namespace_boundary.is_empty() {
            ""
        } else {
            method
                .split_once(self.namespace_boundary.as_str())
                .map_or("", |(ns, _)| ns)
        };
        if ns.is_empty() {
            return Some(self.without_namespace.clone());
        }
        self.namespaces
            .iter()
            .find(|n| n.name == ns)
            .map(|n| RpcOptions {
                proxy_enabled: n.proxy_enabled,
                proxy_name: n.proxy_name.clone(),
            })
    }
}

/// Checks a use of a proxy by a namespace: `name` must be in `proxies`, or the default
/// must be configured. Returns the message for the key at fault.
pub(super) fn check_selection(
    name: &str,
    default: &ProxyEndpointConfig,
    default_key: &str,
    names: &HashSet<&str>,
) -> Result<(), String> {
    if !name.is_empty() {
        return if names.contains(name) {
            Ok(())
        } else {
            Err(format!("no proxy named {name:?} in proxies"))
        };
    }
    if default.endpoint.is_empty() {
        return Err(format!("enabled, but {default_key}.endpoint is not set"));
    }
    Ok(())
}
