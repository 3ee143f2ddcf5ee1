//! Proxy hooks to the application's backend (`client.proxy.*`), with Centrifugo v6's keys
//! and defaults: one endpoint object per event.

use std::collections::BTreeMap;
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
    /// Most proxy calls one node makes at once; more wait for a slot within their timeout.
    /// Herald only. Default `1024`.
    pub max_in_flight: usize,
}

impl Default for ClientProxyConfig {
    fn default() -> Self {
        ClientProxyConfig {
            connect: ProxyEndpointConfig::default(),
            max_in_flight: 1024,
        }
    }
}

/// One proxied event: where to send it and what to send along.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyEndpointConfig {
    /// Whether the event is proxied. Default `false`.
    pub enabled: bool,
    /// `http://` URL the event is POSTed to as JSON (`https://` and `grpc://` are not
    /// supported yet and refused).
    pub endpoint: String,
    /// How long a call may take before the client gets a temporary error. Default `1s`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Headers of the client's HTTP request (the WebSocket upgrade) copied to the call,
    /// by name (case-insensitive). Default none.
    pub http_headers: Vec<String>,
    /// Headers the client sent in its connect command (`headers`, the SDKs' headers
    /// emulation) copied to the call, by name. Client-controlled: only for values the
    /// backend validates. Default none.
    pub emulated_headers: Vec<String>,
    /// HTTP-specific options.
    pub http: ProxyHttpConfig,
}

impl Default for ProxyEndpointConfig {
    fn default() -> Self {
        ProxyEndpointConfig {
            enabled: false,
            endpoint: String::new(),
            timeout: Duration::from_secs(1),
            http_headers: Vec::new(),
            emulated_headers: Vec::new(),
            http: ProxyHttpConfig::default(),
        }
    }
}

/// `http` of a proxy endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyHttpConfig {
    /// Headers added to every call; a forwarded header of the same name wins.
    pub static_headers: BTreeMap<String, String>,
}

impl ProxyEndpointConfig {
    /// Checks an enabled endpoint.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        for (scheme, what) in [("grpc://", "gRPC"), ("https://", "https")] {
            if self.endpoint.starts_with(scheme) {
                return Err(format!(
                    "{what} proxies are not supported yet; use an http:// endpoint on a trusted network"
                ));
            }
        }
        if !self.endpoint.starts_with("http://") {
            return Err(format!("must be an http:// URL (got {:?})", self.endpoint));
        }
        if self.timeout.is_zero() {
            return Err("its timeout must be above 0".to_string());
        }
        Ok(())
    }
}
