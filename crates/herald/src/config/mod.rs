//! Configuration: one struct with defaults in one place.
//!
//! This module owns Herald's configuration: the [`Config`] tree with every
//! default, loading it from a file and `HERALD_*` environment variables, and
//! validating it before the server starts. It does no I/O beyond reading the
//! config file (and the kernel's host name once, for the default node name).
//!
//! # Shape
//!
//! Herald reads the same key names and nesting as Centrifugo v6, so a
//! Centrifugo v6 config moves over unchanged: `http_server.port`,
//! `client.token.hmac_secret_key`, `channel.namespaces`, and so on. Keys that
//! Herald does not implement are reported as warnings (never silently
//! accepted, never fatal). Where Herald differs from Centrifugo the field's
//! doc says so: `http_server.address` defaults to loopback, and `health` and
//! `prometheus` are enabled by default.
//!
//! # Sources, lowest priority first
//!
//! 1. [`Config::default()`], the embedded defaults.
//! 2. A config file, JSON (`.json`), YAML (`.yaml`, `.yml`) or TOML (`.toml`).
//! 3. Environment variables `HERALD_<PATH>`, where `<PATH>` is the dotted key
//!    upper-cased with `.` written as `_`: `HERALD_HTTP_SERVER_PORT=8001`,
//!    `HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY=...`. The value is read according
//!    to the key's type: booleans take Go's spellings (`true`, `1`, `f`, ...),
//!    numbers are numbers, strings are taken verbatim, lists take JSON
//!    (`'["a","b"]'`) or space-separated words, objects and lists of objects
//!    (`HERALD_CHANNEL_NAMESPACES='[{"name":"chat"}]'`) take JSON. An empty
//!    variable counts as unset, as in Centrifugo. A `HERALD_` variable that
//!    matches no key is reported as a warning; `HERALD_CONFIG` is not a
//!    configuration key and is ignored here.
//!
//! Command-line flags are applied by the binary on top of the loaded config.
//!
//! # Durations
//!
//! Durations take Go/Centrifugo strings (`"25s"`, `"300ms"`, `"1h30m"`) or a
//! plain integer number of seconds, and are exposed as
//! [`std::time::Duration`]; see [`duration`].

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

mod proxy;

pub use proxy::{
    ChannelProxyConfig, ClientProxyConfig, ProxyEndpointConfig, ProxyGrpcConfig, ProxyHttpConfig,
    ProxyProtocol, RpcConfig, RpcNamespace, RpcOptions,
};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "HERALD_";

/// `HERALD_*` variables that are not configuration keys (they are read by the
/// command line) and are skipped without a warning.
pub const NON_CONFIG_ENV_VARS: &[&str] = &["HERALD_CONFIG"];

/// The log levels accepted by `log.level`.
pub const LOG_LEVELS: &[&str] = &["none", "trace", "debug", "info", "warn", "error"];

/// An error that stops the start: the file cannot be read or parsed, or a
/// value is invalid. Every message names the file, variable or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file's extension names no supported format.
    #[error(
        "config file {}: unsupported format, expected a .json, .yaml, .yml or .toml extension",
        path.display()
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
    },
    /// The config file is not valid JSON, YAML or TOML, or is not a map at
    /// the top level.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the parser's location where it gives one.
        message: String,
    },
    /// An environment variable's value cannot be read as its key's type.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value has the wrong type or form (a port that is not a number, a
    /// malformed duration, ...).
    #[error("{origin}: {key}: {message}")]
    Value {
        /// Where the value came from: `config file <path>`, `environment
        /// variable <name>` or `configuration`.
        origin: String,
        /// The dotted key, e.g. `http_server.port` or `channel.namespaces[1].history_ttl`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed but not acceptable (failed validation).
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// The configuration tree
// ---------------------------------------------------------------------------

/// Herald's whole configuration. `Config::default()` is what Herald runs with
/// when given no file and no environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The HTTP listener shared by every transport and the server API.
    pub http_server: HttpServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Broker and presence storage.
    pub engine: EngineConfig,
    /// Client connections: authentication, origins, ping/pong and limits.
    pub client: ClientConfig,
    /// Channel naming rules and per-namespace options.
    pub channel: ChannelConfig,
    /// The HTTP server API (`POST /api/<method>`).
    pub http_api: HttpApiConfig,
    /// The gRPC server API (`centrifugal.centrifugo.api.CentrifugoApi`) on the main port,
    /// and on a port of its own when `grpc_api.port` is set. Default: **enabled**
    /// (Centrifugo: disabled).
    pub grpc_api: GrpcApiConfig,
    /// The bidirectional WebSocket transport (`/connection/websocket`), always on.
    pub websocket: WebsocketConfig,
    /// Bidirectional SSE emulation (`/connection/sse`). Default: **enabled**
    /// (Centrifugo: disabled): Herald serves every transport from one port.
    pub sse: TransportConfig,
    /// Bidirectional HTTP-streaming emulation (`/connection/http_stream`). Default: enabled.
    pub http_stream: TransportConfig,
    /// `POST /emulation`, where emulation clients send their later commands.
    pub emulation: EmulationConfig,
    /// Unidirectional WebSocket (`/connection/uni_websocket`). Default: enabled.
    pub uni_websocket: TransportConfig,
    /// Unidirectional SSE (`/connection/uni_sse`). Default: enabled.
    pub uni_sse: TransportConfig,
    /// Unidirectional HTTP streaming (`/connection/uni_http_stream`). Default: enabled.
    pub uni_http_stream: TransportConfig,
    /// Unidirectional gRPC (`CentrifugoUniStream/Consume`) on the main port, and on a port
    /// of its own when `uni_grpc.port` is set. Default: **enabled** (Centrifugo: disabled).
    pub uni_grpc: UniGrpcConfig,
    /// `health.enabled`. Herald serves `/health` whatever this says; the flag
    /// is kept for Centrifugo compatibility. Default: **enabled** (Centrifugo:
    /// disabled). A `health` section without `enabled` keeps it enabled.
    #[serde(deserialize_with = "flag_default_true")]
    pub health: EnabledFlag,
    /// `prometheus.enabled`: serve `/metrics`. Default: **enabled**
    /// (Centrifugo: disabled). A `prometheus` section without `enabled` keeps
    /// it enabled.
    #[serde(deserialize_with = "flag_default_true")]
    pub prometheus: EnabledFlag,
    /// This node's identity in a cluster.
    pub node: NodeConfig,
    /// `demo.enabled`: serve the chat demo at `/` and demo connection tokens at
    /// `POST /demo/token` (anyone may mint a token for any user: for trying Herald
    /// out, never on a public server). Herald only (Centrifugo has no demo).
    /// Default `false`; `herald serve --demo` turns it on.
    pub demo: EnabledFlag,
    /// The web console at `/console`, as Centrifugo's admin web interface.
    pub admin: AdminConfig,
    /// What SIGTERM does: the drain of a node (rolling restarts).
    pub shutdown: ShutdownConfig,
    /// Clients' `rpc` commands: which go to the backend, through which proxy.
    pub rpc: RpcConfig,
    /// Named proxies, selected by namespaces (`subscribe_proxy_name`, ...,
    /// `rpc.namespaces[].proxy_name`); each a proxy object with a `name`.
    pub proxies: Vec<ProxyEndpointConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_server: HttpServerConfig::default(),
            log: LogConfig::default(),
            engine: EngineConfig::default(),
            client: ClientConfig::default(),
            channel: ChannelConfig::default(),
            http_api: HttpApiConfig::default(),
            grpc_api: GrpcApiConfig::default(),
            websocket: WebsocketConfig::default(),
            sse: TransportConfig::default(),
            http_stream: TransportConfig::default(),
            emulation: EmulationConfig::default(),
            uni_websocket: TransportConfig::default(),
            uni_sse: TransportConfig::default(),
            uni_http_stream: TransportConfig::default(),
            uni_grpc: UniGrpcConfig::default(),
            health: EnabledFlag { enabled: true },
            prometheus: EnabledFlag { enabled: true },
            node: NodeConfig::default(),
            demo: EnabledFlag::default(),
            admin: AdminConfig::default(),
            shutdown: ShutdownConfig::default(),
            rpc: RpcConfig::default(),
            proxies: Vec::new(),
        }
    }
}

/// `http_server.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpServerConfig {
    /// Interface address to listen on. Default `"127.0.0.1"` (loopback; unlike
    /// Centrifugo, whose default `""` means every interface). Set `"0.0.0.0"`
    /// or `"::"` to accept remote clients.
    pub address: String,
    /// TCP port. Default `8000`. Accepts an integer or a numeric string.
    #[serde(deserialize_with = "port::deserialize")]
    pub port: u16,
    /// TLS for the listener (HTTP/1.1 and HTTP/2 negotiated with ALPN). Off by default.
    pub tls: TlsConfig,
    /// Time a new connection has, from accept, to finish the TLS handshake (on a TLS
    /// listener) and to show its protocol: the whole first request head (HTTP/1.1) or the
    /// HTTP/2 preface and first frame header. Later HTTP/1.1 request heads have the same
    /// time. A connection that sends nothing, or too little, is closed then. Applies to
    /// every listener (the main port and the gRPC ports of their own). Default `10s`.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// Time a request body has to arrive in full, counted from the end of its headers
    /// (server API, emulation and the connect requests of the HTTP transports; streamed
    /// gRPC bodies are exempt). A slower body is answered 408 and its connection closed.
    /// Herald only; Centrifugo's HTTP server cuts whole requests at 30s. Default `30s`.
    #[serde(with = "duration")]
    pub request_body_timeout: Duration,
    /// Pending connections the kernel queues for each listener before Herald accepts
    /// them (the `listen(2)` backlog). `0`: the system maximum
    /// (`/proc/sys/net/core/somaxconn`), as Go servers such as Centrifugo use; the kernel
    /// caps larger values at that maximum. Applies to every listener. Herald only.
    /// Default `0`.
    pub listen_backlog: u32,
    /// How often to send HTTP/2 keep-alive pings on idle connections; a connection
    /// that does not answer within the same interval is closed. `0` turns it off.
    /// Default `30s`.
    #[serde(with = "duration")]
    pub http2_keepalive_interval: Duration,
    /// Maximum concurrent streams per HTTP/2 connection. Default `1000`.
    pub http2_max_concurrent_streams: u32,
    /// How long one socket write may stay blocked (the client stopped reading) before
    /// the connection is closed. Frees the socket and its buffers of clients that
    /// vanished without closing. Default `10s`.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            address: "127.0.0.1".to_owned(),
            port: 8000,
            tls: TlsConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            request_body_timeout: Duration::from_secs(30),
            listen_backlog: 0,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_max_concurrent_streams: 1000,
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// `http_server.tls.*`, as in Centrifugo v6: `cert_pem` and `key_pem` each take PEM text,
/// base64 of the PEM, or the path of a PEM file, detected in Centrifugo's order (see
/// [`TlsConfig::identity`]). Herald's earlier keys stay as aliases of one form each:
/// `cert_pem_file`/`key_pem_file` (a path), `cert_pem_b64`/`key_pem_b64` (base64).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// Turn TLS on. A certificate or key given without `enabled` turns it on too
    /// (Centrifugo needs `enabled`).
    pub enabled: bool,
    /// The certificate chain: PEM text, base64 of the PEM, or a path to a PEM file.
    pub cert_pem: String,
    /// The private key: PEM text, base64 of the PEM, or a path to a PEM file.
    pub key_pem: String,
    /// Alias of `cert_pem` that takes only a path.
    pub cert_pem_file: String,
    /// Alias of `key_pem` that takes only a path.
    pub key_pem_file: String,
    /// Alias of `cert_pem` that takes only base64 of the PEM.
    pub cert_pem_b64: String,
    /// Alias of `key_pem` that takes only base64 of the PEM.
    pub key_pem_b64: String,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("enabled", &self.enabled)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &redacted(&self.key_pem))
            .field("cert_pem_file", &self.cert_pem_file)
            .field("key_pem_file", &self.key_pem_file)
            .field("key_pem_b64", &redacted(&self.key_pem_b64))
            .finish_non_exhaustive()
    }
}

/// The certificate chain and private key `http_server.tls` names, parsed.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The certificate chain, leaf first, as in the PEM.
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    /// The key that gave the certificate, e.g. `http_server.tls.cert_pem`, for messages.
    pub cert_key: String,
    /// The key that gave the private key, e.g. `http_server.tls.key_pem`, for messages.
    pub key_key: String,
}

/// How a TLS key's value is read.
#[derive(Clone, Copy)]
enum PemForm {
    /// PEM text, base64 of the PEM, or a path (Centrifugo's `cert_pem`, `key_pem`).
    Any,
    /// A path only (`*_pem_file`).
    File,
    /// Base64 of the PEM only (`*_pem_b64`).
    Base64,
}

impl TlsConfig {
    /// Whether TLS is on: `enabled`, or a certificate or key is given (then both must be).
    pub fn is_on(&self) -> bool {
        self.enabled
            || [
                &self.cert_pem,
                &self.key_pem,
                &self.cert_pem_file,
                &self.key_pem_file,
                &self.cert_pem_b64,
                &self.key_pem_b64,
            ]
            .iter()
            .any(|v| !v.trim().is_empty())
    }

    /// Reads and parses the certificate chain and the private key.
    ///
    /// `cert_pem` and `key_pem` are read as Centrifugo v6 reads them, trying in order:
    /// PEM text (the value holds a PEM block), base64 of PEM text, the path of an
    /// existing file holding PEM. At most one of `cert_pem`, `cert_pem_file` and
    /// `cert_pem_b64` may be set, and likewise for the key. Every error names the key.
    pub fn identity(&self) -> Result<TlsIdentity, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let (cert_key, cert_from, cert_pem) = Self::source(
            "certificate",
            [
                ("cert_pem", &self.cert_pem, PemForm::Any),
                ("cert_pem_file", &self.cert_pem_file, PemForm::File),
                ("cert_pem_b64", &self.cert_pem_b64, PemForm::Base64),
            ],
        )?;
        let (key_key, key_from, key_pem) = Self::source(
            "private key",
            [
                ("key_pem", &self.key_pem, PemForm::Any),
                ("key_pem_file", &self.key_pem_file, PemForm::File),
                ("key_pem_b64", &self.key_pem_b64, PemForm::Base64),
            ],
        )?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::invalid(&cert_key, format!("{cert_from}: bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ConfigError::invalid(
                &cert_key,
                format!("{cert_from}: no CERTIFICATE block in the PEM"),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            let why = match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block in the PEM".to_owned()
                }
                e => format!("bad PEM: {e}"),
            };
            ConfigError::invalid(&key_key, format!("{key_from}: {why}"))
        })?;
        Ok(TlsIdentity {
            certs,
            key,
            cert_key,
            key_key,
        })
    }

    /// The one set key among `candidates` and its PEM bytes: `(dotted key, where the
    /// PEM came from, PEM)`. `what` names the item in messages.
    fn source(
        what: &str,
        candidates: [(&str, &String, PemForm); 3],
    ) -> Result<(String, String, Vec<u8>), ConfigError> {
        let key = |name: &str| format!("http_server.tls.{name}");
        let set: Vec<_> = candidates
            .iter()
            .filter(|(_, value, _)| !value.trim().is_empty())
            .collect();
        match set.as_slice() {
            [] => Err(ConfigError::invalid(
                key(candidates[0].0),
                format!(
                    "TLS is on but no {what} is set: give {} (PEM text, base64 of the PEM, or a file path)",
                    key(candidates[0].0)
                ),
            )),
            [(name, value, form)] => {
                let (from, pem) = load_pem(value.trim(), *form)
                    .map_err(|m| ConfigError::invalid(key(name), m))?;
                Ok((key(name), from, pem))
            }
            [first, second, ..] => Err(ConfigError::invalid(
                key(first.0),
                format!(
                    "{} is set too; give the {what} once, in one of them",
                    key(second.0)
                ),
            )),
        }
    }
}

/// Whether `bytes` hold a PEM block (`-----BEGIN …-----` through `-----END …-----`).
fn holds_pem(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.find("-----BEGIN ")
        .is_some_and(|begin| text[begin..].contains("-----END "))
}

/// Reads one TLS value in `form`; returns where the PEM came from (for messages) and the
/// PEM. The order for [`PemForm::Any`] is Centrifugo's (`PEMData.Load`): PEM text, then
/// base64 of PEM, then the path of an existing file.
fn load_pem(value: &str, form: PemForm) -> Result<(String, Vec<u8>), String> {
    use base64::Engine;
    let read_file = |path: &str| -> Result<(String, Vec<u8>), String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read the file {path:?}: {e}"))?;
        if !holds_pem(&bytes) {
            return Err(format!("the file {path:?} holds no PEM block"));
        }
        Ok((format!("the file {path:?}"), bytes))
    };
    // Line breaks are skipped, as Go's decoder does (`base64 cert.pem` wraps its output).
    let base64 = |value: &str| {
        let compact: String = value.split_ascii_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .ok()
            .filter(|bytes| holds_pem(bytes))
    };
    match form {
        PemForm::File => read_file(value),
        PemForm::Base64 => base64(value)
            .map(|pem| ("base64 PEM".to_owned(), pem))
            .ok_or_else(|| "not base64 of a PEM block".to_owned()),
        PemForm::Any => {
            if holds_pem(value.as_bytes()) {
                return Ok(("inline PEM".to_owned(), value.as_bytes().to_vec()));
            }
            if let Some(pem) = base64(value) {
                return Ok(("base64 PEM".to_owned(), pem));
            }
            if std::path::Path::new(value).is_file() {
                return read_file(value);
            }
            // Name the value when it looks like a path: it holds a dot, which neither PEM
            // nor base64 key material has, so a private key is never echoed.
            let shown = if value.len() <= 256
                && value.contains('.')
                && !value.contains(char::is_whitespace)
            {
                format!("{value:?} is ")
            } else {
                String::new()
            };
            Err(format!(
                "{shown}not PEM text, base64 of PEM, or the path of an existing file"
            ))
        }
    }
}

/// A streaming transport's section: on/off and the size of the request that opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransportConfig {
    /// Serve this transport. Default `true` (Centrifugo: `false`).
    pub enabled: bool,
    /// Largest request body (the connect request or first commands), bytes.
    /// Default `65536`; a larger one is refused with 413.
    pub max_request_body_size: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            enabled: true,
            max_request_body_size: 65536,
        }
    }
}

/// `emulation.*`: the endpoint emulation clients send later commands to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmulationConfig {
    /// Largest `POST /emulation` body, bytes. Default `65536`; larger is refused with 413.
    pub max_request_body_size: usize,
}

impl Default for EmulationConfig {
    fn default() -> Self {
        EmulationConfig {
            max_request_body_size: 65536,
        }
    }
}

/// `log.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// One of [`LOG_LEVELS`]. Default `"info"`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

/// `engine.*`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineConfig {
    /// `engine.type`. Default `memory`.
    #[serde(rename = "type")]
    pub kind: EngineType,
    /// `engine.redis.*`: read when `engine.type` is `redis`.
    pub redis: RedisConfig,
}

/// How long a presence entry of the memory engine lives without being refreshed.
pub const MEMORY_PRESENCE_TTL: Duration = Duration::from_secs(60);

impl EngineConfig {
    /// How long a presence entry lives without being refreshed by its node:
    /// `engine.redis.presence_ttl` with Redis, [`MEMORY_PRESENCE_TTL`] in memory.
    pub fn presence_ttl(&self) -> Duration {
        match self.kind {
            EngineType::Memory => MEMORY_PRESENCE_TTL,
            EngineType::Redis => self.redis.presence_ttl,
        }
    }
}

/// `engine.redis.*`, Centrifugo v6's keys.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// `engine.redis.address`: one address (a string) or several (a list). Each is
    /// `redis://[user[:password]@]host[:port][/db]`, `rediss://…` (TLS) or a bare
    /// `host:port`. Several addresses shard channels over independent Redis instances
    /// by consistent hashing of the channel name. A Redis Cluster is detected; its other
    /// nodes may be given as `?addr=host:port&addr=…`. Default
    /// `["redis://127.0.0.1:6379"]`.
    #[serde(deserialize_with = "string_or_list")]
    pub address: Vec<String>,
    /// `engine.redis.prefix`: starts every Redis key and PUB/SUB channel Herald uses, so
    /// that several setups can share one Redis. Default `"herald"` (Centrifugo:
    /// `"centrifugo"`).
    pub prefix: String,
    /// `engine.redis.connect_timeout`: time to establish a connection. Default `1s`.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// `engine.redis.io_timeout`: time one request (a publish, a history read, …) may
    /// take before it fails. Default `4s`.
    #[serde(with = "duration")]
    pub io_timeout: Duration,
    /// `engine.redis.db`: database number, for addresses that do not name one. Redis
    /// PUB/SUB ignores databases: setups sharing a Redis need different prefixes.
    /// Default `0`.
    pub db: i64,
    /// `engine.redis.user`: ACL user, for addresses that do not name one. Default `""`.
    pub user: String,
    /// `engine.redis.password`: password, for addresses that do not carry one.
    /// Default `""`.
    pub password: String,
    /// `engine.redis.tls.*`: TLS to the Redis servers. On with `enabled` or with a
    /// `rediss://` address; the other keys apply in both cases.
    pub tls: RedisTlsConfig,
    /// `engine.redis.sentinel_tls.*`: TLS to the Sentinels of `redis+sentinel://`
    /// addresses. On with `enabled` or with a `rediss+sentinel://` address.
    pub sentinel_tls: RedisTlsConfig,
    /// `engine.redis.presence_ttl`: how long a presence entry lives in Redis without
    /// being refreshed; the entries of a node that died disappear after it. Must exceed
    /// `client.presence_update_interval`. Default `60s` (as Centrifugo).
    #[serde(with = "duration")]
    pub presence_ttl: Duration,
}

/// `engine.redis.tls.*` and `engine.redis.sentinel_tls.*`: the client side of TLS to
/// Redis, with Centrifugo v6's keys. Every PEM value takes PEM text, base64 of the PEM, or
/// the path of a PEM file (Centrifugo's order).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisTlsConfig {
    /// `enabled`: TLS even for `redis://` addresses. Default `false`.
    pub enabled: bool,
    /// `cert_pem`: the client certificate chain, for servers that ask for one
    /// (`tls-auth-clients yes`, Redis's default). Needs `key_pem`. Default `""`.
    pub cert_pem: String,
    /// `key_pem`: the client certificate's private key. Default `""`.
    pub key_pem: String,
    /// `server_ca_pem`: the CA certificates the server's certificate must chain to,
    /// instead of the system's roots. Default `""` (the system's roots).
    pub server_ca_pem: String,
    /// `insecure_skip_verify`: accept any server certificate (no chain, no host name
    /// check). For tests only. Default `false`.
    pub insecure_skip_verify: bool,
    /// `server_name`: Centrifugo's override of the name the certificate is checked
    /// against. Refused by validation: the Redis client checks the address's host, so
    /// the address must name the host the certificate is for. Default `""`.
    pub server_name: String,
}

impl fmt::Debug for RedisTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTlsConfig")
            .field("enabled", &self.enabled)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &redacted(&self.key_pem))
            .field("server_ca_pem", &self.server_ca_pem)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// The PEM material of a [`RedisTlsConfig`], read and checked.
#[derive(Clone, Default)]
pub struct RedisTlsMaterial {
    /// CA certificates (PEM) that replace the system's roots.
    pub server_ca: Option<Vec<u8>>,
    /// Client certificate chain and private key (PEM).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// Accept any server certificate.
    pub insecure_skip_verify: bool,
}

impl fmt::Debug for RedisTlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTlsMaterial")
            .field("server_ca", &self.server_ca.is_some())
            .field("client", &self.client.is_some())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

impl RedisTlsConfig {
    /// Reads and checks the PEM values; `section` (`engine.redis.tls`) names the keys in
    /// errors.
    pub fn material(&self, section: &str) -> Result<RedisTlsMaterial, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let key = |name: &str| format!("{section}.{name}");
        if !self.server_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                key("server_name"),
                "is not supported: the certificate is checked against the host of the address, so name that host in engine.redis.address",
            ));
        }
        let load = |name: &str, value: &str| -> Result<Option<Vec<u8>>, ConfigError> {
            let value = value.trim();
            if value.is_empty() {
                return Ok(None);
            }
            let (_, pem) =
                load_pem(value, PemForm::Any).map_err(|m| ConfigError::invalid(key(name), m))?;
            Ok(Some(pem))
        };
        let certs = |name: &str, pem: &[u8]| -> Result<(), ConfigError> {
            let n = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::invalid(key(name), format!("bad PEM: {e}")))?
                .len();
            if n == 0 {
                return Err(ConfigError::invalid(
                    key(name),
                    "no CERTIFICATE block in the PEM",
                ));
            }
            Ok(())
        };
        let server_ca = load("server_ca_pem", &self.server_ca_pem)?;
        if let Some(pem) = &server_ca {
            certs("server_ca_pem", pem)?;
        }
        let client = match (
            load("cert_pem", &self.cert_pem)?,
            load("key_pem", &self.key_pem)?,
        ) {
            (None, None) => None,
            (Some(cert), Some(private)) => {
                certs("cert_pem", &cert)?;
                PrivateKeyDer::from_pem_slice(&private).map_err(|e| {
                    ConfigError::invalid(key("key_pem"), format!("no usable private key: {e}"))
                })?;
                Some((cert, private))
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    key("key_pem"),
                    "is required with cert_pem (the client certificate's private key)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    key("cert_pem"),
                    "is required with key_pem (the client certificate)",
                ));
            }
        };
        Ok(RedisTlsMaterial {
            server_ca,
            client,
            insecure_skip_verify: self.insecure_skip_verify,
        })
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            address: vec!["redis://127.0.0.1:6379".to_owned()],
            prefix: "herald".to_owned(),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(4),
            db: 0,
            user: String::new(),
            password: String::new(),
            tls: RedisTlsConfig::default(),
            sentinel_tls: RedisTlsConfig::default(),
            presence_ttl: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field(
                "address",
                &self
                    .shards()
                    .map(|s| s.iter().map(|a| a.to_string()).collect::<Vec<_>>()),
            )
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("db", &self.db)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("tls", &self.tls)
            .field("sentinel_tls", &self.sentinel_tls)
            .field("presence_ttl", &self.presence_ttl)
            .finish()
    }
}

/// One Redis instance Herald talks to: an entry of `engine.redis.address`, with the
/// defaults of `engine.redis.*` filled in.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAddress {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS to the Redis servers: `rediss://` or `engine.redis.tls.enabled` (with
    /// Sentinel, to the master they name: `engine.redis.tls.enabled` only).
    pub tls: bool,
    /// Database number.
    pub db: i64,
    /// ACL user ("" for none).
    pub user: String,
    /// Password ("" for none).
    pub password: String,
    /// More nodes of the same Redis Cluster, or more Sentinels (`?addr=host:port`,
    /// repeatable): where to start when the first one is unreachable.
    pub seeds: Vec<(String, u16)>,
    /// `redis+sentinel://`: `host`, `port` and `seeds` are Sentinels, which name the
    /// master to use; `user` and `password` remain the master's.
    pub sentinel: Option<SentinelOptions>,
}

/// The Sentinel part of a `redis+sentinel://` address.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelOptions {
    /// `sentinel_master_name`: the monitored master's name. Required.
    pub master_name: String,
    /// `sentinel_user`: ACL user on the Sentinels ("" for none).
    pub user: String,
    /// `sentinel_password`: password on the Sentinels ("" for none).
    pub password: String,
    /// TLS to the Sentinels: `rediss+sentinel://` or `engine.redis.sentinel_tls.enabled`.
    pub tls: bool,
}

impl fmt::Display for RedisAddress {
    /// The address without its password, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match &self.sentinel {
            None if self.tls => "rediss",
            None => "redis",
            Some(s) if s.tls => "rediss+sentinel",
            Some(_) => "redis+sentinel",
        };
        write!(f, "{scheme}://")?;
        if !self.user.is_empty() {
            write!(f, "{}@", self.user)?;
        }
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{host}:{}/{}", self.port, self.db)?;
        if let Some(s) = &self.sentinel {
            write!(f, "?sentinel_master_name={}", s.master_name)?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl RedisConfig {
    /// The instances `address` names, in order (the shard order), or what is wrong
    /// with the first address that does not parse.
    pub fn shards(&self) -> Result<Vec<RedisAddress>, String> {
        if self.address.is_empty() {
            return Err("at least one address is required".to_owned());
        }
        self.address.iter().map(|a| self.parse_address(a)).collect()
    }

    fn parse_address(&self, raw: &str) -> Result<RedisAddress, String> {
        let text = raw.trim();
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("redis://{text}")
        };
        let shown = |why: &str| format!("{}: {why}", redact_url(text));
        let url = url::Url::parse(&with_scheme).map_err(|e| shown(&e.to_string()))?;
        let (tls, sentinel) = match url.scheme() {
            "redis" => (false, false),
            "rediss" => (true, false),
            "redis+sentinel" => (false, true),
            "rediss+sentinel" => (true, true),
            other => {
                return Err(shown(&format!(
                    "unknown scheme {other:?}, expected redis://, rediss:// or redis+sentinel://"
                )));
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(shown("no host")),
        };
        if host.is_empty() {
            return Err(shown("no host"));
        }
        let port = url.port().unwrap_or(if sentinel { 26379 } else { 6379 });
        let db = match url.path().trim_matches('/') {
            "" => self.db,
            db => db
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| shown(&format!("database {db:?} is not a number")))?,
        };
        let decode = |s: &str| {
            percent_decode(s).ok_or_else(|| shown("user or password is not valid percent-encoding"))
        };
        let user = if url.username().is_empty() {
            self.user.clone()
        } else {
            decode(url.username())?
        };
        let password = match url.password() {
            Some(p) => decode(p)?,
            None => self.password.clone(),
        };
        let mut seeds = Vec::new();
        let mut master_name = String::new();
        let (mut sentinel_user, mut sentinel_password) = (String::new(), String::new());
        for (key, value) in url.query_pairs() {
            match &*key {
                "addr" => {}
                "sentinel_master_name" if sentinel => {
                    master_name = value.into_owned();
                    continue;
                }
                "sentinel_user" if sentinel => {
                    sentinel_user = value.into_owned();
                    continue;
                }
                "sentinel_password" if sentinel => {
                    sentinel_password = value.into_owned();
                    continue;
                }
                _ => return Err(shown(&format!("unsupported address parameter {key:?}"))),
            }
            let (h, p) = value
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                .ok_or_else(|| shown(&format!("addr={value:?} is not host:port")))?;
            seeds.push((h.to_owned(), p));
        }
        let sentinel = if sentinel {
            if master_name.is_empty() {
                return Err(shown(
                    "sentinel_master_name is required with redis+sentinel://",
                ));
            }
            Some(SentinelOptions {
                master_name,
                user: sentinel_user,
                password: sentinel_password,
                tls: tls || self.sentinel_tls.enabled,
            })
        } else {
            None
        };
        // With Sentinel the scheme's TLS is the Sentinels'; the master's is `tls.enabled`.
        let tls = if sentinel.is_some() {
            self.tls.enabled
        } else {
            tls || self.tls.enabled
        };
        Ok(RedisAddress {
            seeds,
            sentinel,
            host,
            port,
            tls,
            db,
            user,
            password,
        })
    }
}

/// `s` with the password of a URL replaced, for error messages.
fn redact_url(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let userinfo = &s[start + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:<redacted>{}",
                    &s[..start + 3],
                    &userinfo[..colon],
                    &s[at..]
                ),
                None => s.to_owned(),
            }
        }
        _ => s.to_owned(),
    }
}

/// Decodes `%XX` escapes (URL user info, SSE ids); `None` for a malformed escape or
/// non-UTF-8. The one copy in the crate.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A list of strings given as a list or as one string (Centrifugo accepts both for
/// `engine.redis.address`).
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The engine implementations `engine.type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineType {
    /// One process, no external service.
    #[default]
    Memory,
    /// Redis (and Redis-compatible stores): history, positions, presence and PUB/SUB
    /// shared by every node on the same Redis.
    Redis,
}

impl fmt::Display for EngineType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineType::Memory => "memory",
            EngineType::Redis => "redis",
        })
    }
}

/// `client.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientConfig {
    /// Connection token verification (and subscription tokens too, unless
    /// `client.subscription_token.enabled`).
    pub token: TokenConfig,
    /// Separate keys for subscription tokens.
    pub subscription_token: SubscriptionTokenConfig,
    /// Origin patterns allowed to connect from browsers: exact origins,
    /// `"*"`, or globs such as `"https://*.example.com"`. See
    /// `crate::transport::origin_allowed`. Default: empty.
    pub allowed_origins: Vec<String>,
    /// Accept every connection without a token, as anonymous, and allow every
    /// channel operation. For demos only. Default `false`.
    pub insecure: bool,
    /// Accept connections that bring no token, as anonymous (user `""`).
    /// Channel access is still governed by channel options. Default `false`.
    pub allow_anonymous_connect_without_token: bool,
    /// How often the server pings a client; `0` disables pings. Default 25s.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// How long to wait for the pong after a ping; `0` disables the check.
    /// Must be less than `ping_interval`. Default 8s.
    #[serde(with = "duration")]
    pub pong_timeout: Duration,
    /// `client.queue_max_size` (Centrifugo's spelling; `max_queue_size` is
    /// accepted too): bytes a client's outbound queue may hold before the
    /// client is disconnected as slow. Default 1048576 (1 MiB).
    #[serde(rename = "queue_max_size", alias = "max_queue_size")]
    pub max_queue_size: usize,
    /// Subscriptions one client may hold; `0` means no limit. Default 128.
    pub channel_limit: usize,
    /// Most publications one history call may return; `0` means no limit. Default 300.
    pub history_max_publication_limit: usize,
    /// Most publications one recovery may return; `0` means no limit. Default 300.
    pub recovery_max_publication_limit: usize,
    /// Grace period after a connection's credentials expire before it is
    /// closed, to let the client refresh. Default 25s.
    #[serde(with = "duration")]
    pub expired_close_delay: Duration,
    /// How long a connection may stay open without a successful connect
    /// command before it is closed with 3502 (stale). Default 10s.
    #[serde(with = "duration")]
    pub stale_close_delay: Duration,
    /// How often a positioned subscription that received nothing meanwhile is compared
    /// with its stream's top, to find a publication the broker lost on its way to this
    /// node that no later publication revealed; one found behind is made to recover.
    /// `0` turns the checks off. Not done with the memory engine, which loses nothing.
    /// Default 40s (as Centrifugo).
    #[serde(with = "duration")]
    pub channel_position_check_delay: Duration,
    /// `client.presence_update_interval`: how often a node refreshes the presence entries
    /// of its clients' subscriptions; an entry not refreshed lapses after the engine's
    /// presence TTL (`engine.redis.presence_ttl` with Redis, 60 s in memory), which must
    /// be longer. Default `27s` (as Centrifugo).
    #[serde(with = "duration")]
    pub presence_update_interval: Duration,
    /// Deepest nesting of JSON objects and arrays accepted in what clients send (commands
    /// on every JSON transport, emulation bodies, unidirectional connect requests); a
    /// deeper command is refused as malformed. Protects subscribers' JSON parsers (Python's
    /// stops near 1000). Herald only (Centrifugo: 10000, Go's limit). Default `512`.
    pub max_json_depth: usize,
    /// `client.proxy`: events proxied to the application's backend.
    pub proxy: ClientProxyConfig,
    /// Most connected clients on this node; a connect beyond is closed with 3504.
    /// `0`: no limit (default).
    pub connection_limit: usize,
    /// Most connections of one user (not anonymous) on this node; a connect beyond is
    /// closed with 3504. `0`: no limit (default).
    pub user_connection_limit: usize,
    /// Most connects per second on this node (a burst of as many is allowed); a connect
    /// beyond is closed with 3504, and the SDKs retry with backoff. `0`: no limit
    /// (default).
    pub connection_rate_limit: u32,
    /// Commands per second one connection may send, on average; beyond, a command is
    /// answered with error 111 (too many requests) and not executed. `0`: no limit.
    /// Herald only. Default `100`.
    pub command_rate_limit: u32,
    /// How many commands a connection may send at once above the rate (a reconnecting
    /// SDK resubscribes to every channel in one go). Herald only. Default `256`.
    pub command_rate_burst: u32,
    /// Publications per second one connection may send (with a burst of as many);
    /// beyond, error 111. `0`: no limit (default). Herald only.
    pub publication_rate_limit: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            token: TokenConfig::default(),
            subscription_token: SubscriptionTokenConfig::default(),
            allowed_origins: Vec::new(),
            insecure: false,
            allow_anonymous_connect_without_token: false,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            max_queue_size: 1_048_576,
            channel_limit: 128,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
            expired_close_delay: Duration::from_secs(25),
            stale_close_delay: Duration::from_secs(10),
            channel_position_check_delay: Duration::from_secs(40),
            presence_update_interval: Duration::from_secs(27),
            max_json_depth: 512,
            proxy: ClientProxyConfig::default(),
            connection_limit: 0,
            user_connection_limit: 0,
            connection_rate_limit: 0,
            command_rate_limit: 100,
            command_rate_burst: 256,
            publication_rate_limit: 0,
        }
    }
}

impl ClientConfig {
    /// The keys subscription tokens are verified with: `client.subscription_token`
    /// when it is enabled, `client.token` otherwise.
    pub fn subscription_token_config(&self) -> &TokenConfig {
        if self.subscription_token.enabled {
            &self.subscription_token.token
        } else {
            &self.token
        }
    }
}

/// Token verification keys and claim checks (`client.token.*`, and the same
/// fields in `client.subscription_token.*`). An empty string means "not set".
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenConfig {
    /// Shared secret for HS256, HS384 and HS512 tokens.
    pub hmac_secret_key: String,
    /// Secrets that verify HS tokens too, for rotation: tokens signed with the previous
    /// secret stay valid while new ones are signed with `hmac_secret_key`. Herald only.
    /// Default none.
    pub hmac_previous_secret_keys: Vec<String>,
    /// PEM public key for RS256, RS384 and RS512 tokens.
    pub rsa_public_key: String,
    /// PEM public key (P-256 or P-384) for ES256 or ES384 tokens.
    pub ecdsa_public_key: String,
    /// When set, tokens must carry this value in `aud`.
    pub audience: String,
    /// When set, tokens must carry this value in `iss`.
    pub issuer: String,
    /// How far in the future a token's `nbf` (not before) may be and the
    /// token still be accepted: the clock skew tolerated between the backend
    /// that mints tokens and Herald. Whole seconds; default 5s; `0` checks
    /// `nbf` strictly, as Centrifugo does. A token whose `nbf` is further
    /// ahead is answered as expired (error 109), so the SDKs fetch another
    /// one. Herald's own key, not Centrifugo's. It does not apply to `exp`:
    /// see `docs/configuration.md`.
    #[serde(with = "duration")]
    pub nbf_leeway: Duration,
    /// URL of a JWKS document (`http://` or `https://`) whose keys, picked by the token's
    /// `kid`, verify RS and ES tokens. Fetched only from here; empty: no JWKS.
    pub jwks_public_endpoint: String,
    /// How long fetched keys are used before the set is fetched again. Herald only.
    /// Default `1h`.
    #[serde(with = "duration")]
    pub jwks_cache_ttl: Duration,
    /// Fewest time between two fetches caused by tokens naming unknown keys: a flood of
    /// forged `kid`s costs one fetch per interval. Herald only. Default `10s`.
    #[serde(with = "duration")]
    pub jwks_min_refresh_interval: Duration,
    /// How long a fetch may take. Herald only. Default `5s`.
    #[serde(with = "duration")]
    pub jwks_timeout: Duration,
}

/// Default of `client.token.nbf_leeway` (and `client.subscription_token.nbf_leeway`).
pub const DEFAULT_NBF_LEEWAY: Duration = Duration::from_secs(5);

fn default_nbf_leeway() -> Duration {
    DEFAULT_NBF_LEEWAY
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            hmac_secret_key: String::new(),
            hmac_previous_secret_keys: Vec::new(),
            rsa_public_key: String::new(),
            ecdsa_public_key: String::new(),
            audience: String::new(),
            issuer: String::new(),
            nbf_leeway: DEFAULT_NBF_LEEWAY,
            jwks_public_endpoint: String::new(),
            jwks_cache_ttl: Duration::from_secs(3600),
            jwks_min_refresh_interval: Duration::from_secs(10),
            jwks_timeout: Duration::from_secs(5),
        }
    }
}

impl TokenConfig {
    /// Whether any verification key is set.
    pub fn is_configured(&self) -> bool {
        !self.hmac_secret_key.is_empty()
            || !self.rsa_public_key.is_empty()
            || !self.ecdsa_public_key.is_empty()
            || !self.jwks_public_endpoint.is_empty()
    }
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("hmac_secret_key", &redacted(&self.hmac_secret_key))
            .field(
                "hmac_previous_secret_keys",
                &self
                    .hmac_previous_secret_keys
                    .iter()
                    .map(|k| redacted(k))
                    .collect::<Vec<_>>(),
            )
            .field("rsa_public_key", &self.rsa_public_key)
            .field("ecdsa_public_key", &self.ecdsa_public_key)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("nbf_leeway", &self.nbf_leeway)
            .field("jwks_public_endpoint", &self.jwks_public_endpoint)
            .field("jwks_cache_ttl", &self.jwks_cache_ttl)
            .field("jwks_min_refresh_interval", &self.jwks_min_refresh_interval)
            .field("jwks_timeout", &self.jwks_timeout)
            .finish()
    }
}

/// `client.subscription_token.*`: `enabled` plus the [`TokenConfig`] fields,
/// side by side as in Centrifugo.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "SubscriptionTokenRepr")]
pub struct SubscriptionTokenConfig {
    /// Verify subscription tokens with these keys instead of `client.token`'s.
    /// Default `false`.
    pub enabled: bool,
    /// The keys, used when `enabled`.
    #[serde(flatten)]
    pub token: TokenConfig,
}

// Deserialized through a flat struct rather than `#[serde(flatten)]`, so that
// unknown keys inside the section are still reported with their path.
#[derive(Deserialize, Default)]
#[serde(default)]
struct SubscriptionTokenRepr {
    enabled: bool,
    hmac_secret_key: String,
    hmac_previous_secret_keys: Vec<String>,
    rsa_public_key: String,
    ecdsa_public_key: String,
    audience: String,
    issuer: String,
    #[serde(with = "duration", default = "default_nbf_leeway")]
    nbf_leeway: Duration,
    jwks_public_endpoint: String,
    #[serde(with = "duration", default = "default_jwks_cache_ttl")]
    jwks_cache_ttl: Duration,
    #[serde(with = "duration", default = "default_jwks_min_refresh_interval")]
    jwks_min_refresh_interval: Duration,
    #[serde(with = "duration", default = "default_jwks_timeout")]
    jwks_timeout: Duration,
}

fn default_jwks_cache_ttl() -> Duration {
    TokenConfig::default().jwks_cache_ttl
}

fn default_jwks_min_refresh_interval() -> Duration {
    TokenConfig::default().jwks_min_refresh_interval
}

fn default_jwks_timeout() -> Duration {
    TokenConfig::default().jwks_timeout
}

impl SubscriptionTokenConfig {
    /// A copy of the keys (whether or not `enabled`).
    pub fn token_config(&self) -> TokenConfig {
        self.token.clone()
    }
}

impl From<SubscriptionTokenRepr> for SubscriptionTokenConfig {
    fn from(r: SubscriptionTokenRepr) -> Self {
        SubscriptionTokenConfig {
            enabled: r.enabled,
            token: TokenConfig {
                hmac_secret_key: r.hmac_secret_key,
                hmac_previous_secret_keys: r.hmac_previous_secret_keys,
                rsa_public_key: r.rsa_public_key,
                ecdsa_public_key: r.ecdsa_public_key,
                audience: r.audience,
                issuer: r.issuer,
                nbf_leeway: r.nbf_leeway,
                jwks_public_endpoint: r.jwks_public_endpoint,
                jwks_cache_ttl: r.jwks_cache_ttl,
                jwks_min_refresh_interval: r.jwks_min_refresh_interval,
                jwks_timeout: r.jwks_timeout,
            },
        }
    }
}

/// `websocket.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebsocketConfig {
    /// Largest inbound message, in bytes. Default 65536.
    pub message_size_limit: usize,
    /// Time allowed for one write to a client socket. Default 1s.
    #[serde(with = "duration")]
    pub write_timeout: Duration,
    /// Read buffer size in bytes; `0` uses the implementation's default.
    pub read_buffer_size: usize,
    /// Write buffer size in bytes; `0` uses the implementation's default.
    pub write_buffer_size: usize,
}

impl Default for WebsocketConfig {
    fn default() -> Self {
        WebsocketConfig {
            message_size_limit: 65_536,
            write_timeout: Duration::from_secs(1),
            read_buffer_size: 0,
            write_buffer_size: 0,
        }
    }
}

/// `http_api.*`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpApiConfig {
    /// The API key requests must present (`X-API-Key: <key>` or
    /// `Authorization: apikey <key>`). Checked from the headers before the body is read.
    /// Default empty.
    pub key: String,
    /// Accept API requests without a key. Default `false`.
    pub insecure: bool,
    /// Largest request body of `POST /api/<method>`, bytes; a larger one is answered 413
    /// (at once when `Content-Length` says so). Herald only. Default `2097152` (2 MiB).
    pub max_request_body_size: usize,
    /// Deepest nesting of JSON objects and arrays accepted in a server API request
    /// (publication data included); a deeper body is answered 400. Herald only (Go's JSON
    /// decoder, and so Centrifugo, stops at 10000). Default `512`.
    pub max_json_depth: usize,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        HttpApiConfig {
            key: String::new(),
            insecure: false,
            max_request_body_size: 2 * 1024 * 1024,
            max_json_depth: 512,
        }
    }
}

impl fmt::Debug for HttpApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpApiConfig")
            .field("key", &redacted(&self.key))
            .field("insecure", &self.insecure)
            .field("max_request_body_size", &self.max_request_body_size)
            .field("max_json_depth", &self.max_json_depth)
            .finish()
    }
}

/// `admin.*`: the web console at `/console` (Centrifugo's admin keys). Off by default.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Serve the console. Default `false`. Needs `password` unless `insecure`.
    pub enabled: bool,
    /// The password that logs in to the console (the `http_api.key` does too, when set).
    pub password: String,
    /// Signs console sessions (HMAC-SHA256). Empty: a random secret per process, so
    /// sessions end when Herald restarts. Default empty.
    pub secret: String,
    /// Serve the console without a login. Only behind something that authenticates.
    /// Default `false`.
    pub insecure: bool,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("password", &redacted(&self.password))
            .field("secret", &redacted(&self.secret))
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// `grpc_api.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcApiConfig {
    /// Serve the gRPC server API. Default `true`.
    pub enabled: bool,
    /// Address of its own listener (with `port`); empty: `http_server.address`.
    pub address: String,
    /// Port of its own listener (plain HTTP/2 and gRPC-Web, no TLS), besides the main port,
    /// as Centrifugo serves it (its default there is 10000). 0: the main port only.
    pub port: u16,
    /// API key of gRPC calls (`authorization: apikey <KEY>`); empty: `http_api.key`.
    pub key: String,
}

impl Default for GrpcApiConfig {
    fn default() -> Self {
        GrpcApiConfig {
            enabled: true,
            address: String::new(),
            port: 0,
            key: String::new(),
        }
    }
}

/// `uni_grpc.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UniGrpcConfig {
    /// Serve `CentrifugoUniStream/Consume`. Default `true`.
    pub enabled: bool,
    /// Address of its own listener (with `port`); empty: `http_server.address`.
    pub address: String,
    /// Port of its own listener (plain HTTP/2, no TLS) serving the gRPC client transports
    /// (`Consume`, and Herald's `HeraldStream`), besides the main port, as Centrifugo serves
    /// it (its default there is 11000). 0: the main port only.
    pub port: u16,
}

impl Default for UniGrpcConfig {
    fn default() -> Self {
        UniGrpcConfig {
            enabled: true,
            address: String::new(),
            port: 0,
        }
    }
}

/// A section whose only key Herald reads is `enabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EnabledFlag {
    /// Whether the feature is on. Default `false` unless the field's doc says otherwise.
    pub enabled: bool,
}

/// `shutdown.*`: the drain on SIGTERM or SIGINT. The listeners close at once (a proxy's
/// health check then sends new clients to the other nodes); connected clients are told to
/// reconnect (disconnect 3001, reconnect allowed) spread over `reconnect_spread`, so that
/// they arrive at the other nodes over that window rather than all at once, and are served
/// until then; the process exits once they are gone or `timeout` passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShutdownConfig {
    /// The longest drain, from the signal to the exit; clients still connected then are
    /// dropped. As Centrifugo's `shutdown.timeout`. Default `30s`.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// The window over which connected clients are told to reconnect, evenly; `0` tells
    /// them all at once (a single node restarting in place). Herald only (Centrifugo tells
    /// them all at once). Must be less than `timeout`. Default `5s`.
    #[serde(with = "duration")]
    pub reconnect_spread: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            timeout: Duration::from_secs(30),
            reconnect_spread: Duration::from_secs(5),
        }
    }
}

/// `node.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Human-readable node name. Default: the machine's host name, or `"herald"`.
    pub name: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: default_node_name().to_owned(),
        }
    }
}

fn default_node_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|p| {
                let name = std::fs::read_to_string(p).ok()?;
                let name = name.trim();
                (!name.is_empty()).then(|| name.to_owned())
            })
            .unwrap_or_else(|| "herald".to_owned())
    })
}

/// `channel.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelConfig {
    /// Options of channels without a namespace (no `namespace_boundary` in the name).
    pub without_namespace: ChannelOptions,
    /// Named namespaces: `chat:room1` takes the options of namespace `chat`.
    pub namespaces: Vec<Namespace>,
    /// How long history stream metadata (offset, epoch) is kept for channels
    /// whose options leave `history_meta_ttl` at 0. Default 720h (30 days).
    #[serde(with = "duration")]
    pub history_meta_ttl: Duration,
    /// Channels starting with this prefix need a subscription token. Default `"$"`.
    pub private_prefix: String,
    /// Separates the namespace from the rest of a channel name. Default `":"`.
    pub namespace_boundary: String,
    /// Starts the list of users allowed in a user-limited channel. Default `"#"`.
    pub user_boundary: String,
    /// Separates users in that list. Default `","`.
    pub user_separator: String,
    /// Longest channel name, in bytes. Default 255.
    pub max_length: usize,
    /// Default endpoints of the channel hooks (subscribe, publish, sub_refresh).
    pub proxy: ChannelProxyConfig,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            without_namespace: ChannelOptions::default(),
            namespaces: Vec::new(),
            history_meta_ttl: Duration::from_secs(720 * 3600),
            private_prefix: "$".to_owned(),
            namespace_boundary: ":".to_owned(),
            user_boundary: "#".to_owned(),
            user_separator: ",".to_owned(),
            max_length: 255,
            proxy: ChannelProxyConfig::default(),
        }
    }
}

impl ChannelConfig {
    /// The namespace part of `channel` (after removing `private_prefix`), or
    /// `""` when the channel has no namespace.
    pub fn namespace_name<'a>(&self, channel: &'a str) -> &'a str {
        let trimmed = if self.private_prefix.is_empty() {
            channel
        } else {
            channel
                .strip_prefix(self.private_prefix.as_str())
                .unwrap_or(channel)
        };
        if self.namespace_boundary.is_empty() {
            return "";
        }
        trimmed
            .split_once(self.namespace_boundary.as_str())
            .map_or("", |(ns, _)| ns)
    }

    /// Whether subscribing to `channel` needs a subscription token.
    pub fn is_private(&self, channel: &str) -> bool {
        !self.private_prefix.is_empty() && channel.starts_with(self.private_prefix.as_str())
    }

    /// Whether `channel` names the users allowed in it (`dialog#42,43`).
    pub fn is_user_limited(&self, channel: &str) -> bool {
        !self.user_boundary.is_empty() && channel.contains(self.user_boundary.as_str())
    }

    /// Whether `user` is among the users a user-limited channel names; `true`
    /// for channels that are not user-limited.
    pub fn user_allowed(&self, channel: &str, user: &str) -> bool {
        if !self.is_user_limited(channel) {
            return true;
        }
        let list = channel
            .rsplit(self.user_boundary.as_str())
            .next()
            .unwrap_or_default();
        if self.user_separator.is_empty() {
            return list == user;
        }
        list.split(self.user_separator.as_str()).any(|u| u == user)
    }

    /// The history metadata TTL in force for channels with `options`.
    pub fn effective_history_meta_ttl(&self, options: &ChannelOptions) -> Duration {
        if options.history_meta_ttl.is_zero() {
            self.history_meta_ttl
        } else {
            options.history_meta_ttl
        }
    }
}

/// One entry of `channel.namespaces`: a `name` and, beside it in the same
/// map, the [`ChannelOptions`] keys.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "NamespaceRepr")]
pub struct Namespace {
    /// Unique name matching `^[-a-zA-Z0-9_.]{2,}$`.
    pub name: String,
    /// The options of the namespace's channels.
    #[serde(flatten)]
    pub options: ChannelOptions,
}

/// Defines [`ChannelOptions`] and the flat struct a [`Namespace`] is read
/// through, from one field list. (`#[serde(flatten)]` would hide unknown
/// namespace keys from the unknown-key warnings.)
macro_rules! channel_options {
    ($( $(#[$attr:meta])* $field:ident : $ty:ty, )*) => {
        /// Per-channel behaviour, for `channel.without_namespace` and each
        /// namespace. Every option defaults to off (`false`, 0, empty).
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
        #[serde(default)]
        pub struct ChannelOptions {
            $( $(#[$attr])* pub $field: $ty, )*
        }

        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct NamespaceRepr {
            name: String,
            $( $(#[$attr])* $field: $ty, )*
        }

        impl From<NamespaceRepr> for Namespace {
            fn from(r: NamespaceRepr) -> Self {
                Namespace {
                    name: r.name,
                    options: ChannelOptions { $( $field: r.$field, )* },
                }
            }
        }
    };
}

channel_options! {
    /// Keep presence information (who is subscribed).
    presence: bool,
    /// Send join and leave events to subscribers that ask for them.
    join_leave: bool,
    /// Send join and leave events to every subscriber.
    force_push_join_leave: bool,
    /// Publications kept in history; 0 disables history. Needs `history_ttl`.
    history_size: usize,
    /// How long history is kept after the last publication; whole seconds.
    #[serde(with = "duration")]
    history_ttl: Duration,
    /// How long stream metadata is kept; 0 uses `channel.history_meta_ttl`.
    #[serde(with = "duration")]
    history_meta_ttl: Duration,
    /// Turn on positioning for every subscriber.
    force_positioning: bool,
    /// Allow subscribers to ask for positioning.
    allow_positioning: bool,
    /// Turn on recovery for every subscriber. Needs history.
    force_recovery: bool,
    /// Allow subscribers to ask for recovery.
    allow_recovery: bool,
    /// Authenticated clients may subscribe without a subscription token.
    allow_subscribe_for_client: bool,
    /// Anonymous clients may subscribe without a subscription token.
    allow_subscribe_for_anonymous: bool,
    /// Subscribers may publish.
    allow_publish_for_subscriber: bool,
    /// Authenticated clients may publish.
    allow_publish_for_client: bool,
    /// Anonymous clients may publish.
    allow_publish_for_anonymous: bool,
    /// Subscribers may read history.
    allow_history_for_subscriber: bool,
    /// Authenticated clients may read history.
    allow_history_for_client: bool,
    /// Anonymous clients may read history.
    allow_history_for_anonymous: bool,
    /// Subscribers may read presence.
    allow_presence_for_subscriber: bool,
    /// Authenticated clients may read presence.
    allow_presence_for_client: bool,
    /// Anonymous clients may read presence.
    allow_presence_for_anonymous: bool,
    /// Honour user-limited channel names (`dialog#42,43`).
    allow_user_limited_channels: bool,
    /// When set, channel names (without the namespace) must match this
    /// regular expression. Not validated here; the user of it compiles it.
    channel_regex: String,
    /// Ask the backend (subscribe proxy) whether a client may subscribe, instead of the
    /// `allow_subscribe_*` rules; not for subscriptions with a token or to user-limited
    /// channels.
    subscribe_proxy_enabled: bool,
    /// The named proxy for subscribes; empty: `channel.proxy.subscribe`.
    subscribe_proxy_name: String,
    /// Ask the backend (publish proxy) about each client publication, instead of the
    /// `allow_publish_*` rules; it may replace the data.
    publish_proxy_enabled: bool,
    /// The named proxy for publications; empty: `channel.proxy.publish`.
    publish_proxy_name: String,
    /// Ask the backend (sub_refresh proxy) to prolong expiring subscriptions.
    sub_refresh_proxy_enabled: bool,
    /// The named proxy for sub_refresh; empty: `channel.proxy.sub_refresh`.
    sub_refresh_proxy_name: String,
}

impl ChannelOptions {
    /// Whether the channel keeps history (both `history_size` and `history_ttl` set).
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// Whether a subscriber may recover missed publications (forced or allowed,
    /// and history kept).
    pub fn recovery_possible(&self) -> bool {
        (self.force_recovery || self.allow_recovery) && self.history_enabled()
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl Config {
    /// Loads the file at `path` (format by extension: `.json`, `.yaml`/`.yml`,
    /// `.toml`; an error for others), applies `HERALD_*` variables from the
    /// process environment, deserializes and validates. Returns the config
    /// and the warnings (unknown keys, unknown `HERALD_` variables), one
    /// sentence each.
    pub fn load(path: Option<&Path>) -> Result<(Config, Vec<String>), ConfigError> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::load_with_env(path, env)
    }

    /// Like [`Config::load`], with the environment given explicitly; the
    /// process environment is not read.
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let mut root = match path {
            Some(path) => read_file(path)?,
            None => Value::Object(Map::new()),
        };

        let tree = serde_json::to_value(Config::default()).map_err(|e| ConfigError::Value {
            origin: "configuration".to_owned(),
            key: "(root)".to_owned(),
            message: e.to_string(),
        })?;
        let env_paths = apply_env(&mut root, &tree, env, &mut warnings)?;

        let mut unknown = Vec::new();
        let parsed: Result<Config, _> = serde_ignored::deserialize(&root, |p| {
            let mut segs = Vec::new();
            path_segments(&p, &mut segs);
            unknown.push(segs);
        });
        let config = match parsed {
            Ok(config) => config,
            Err(err) => {
                let (segs, message) = locate_error(&root).unwrap_or((Vec::new(), err.to_string()));
                let key = if segs.is_empty() {
                    "(root)".to_owned()
                } else {
                    format_path(&segs)
                };
                let origin = env_paths
                    .iter()
                    .rev()
                    .find(|(prefix, _)| segs.starts_with(prefix))
                    .map(|(_, var)| format!("environment variable {var}"))
                    .or_else(|| path.map(|p| format!("config file {}", p.display())))
                    .unwrap_or_else(|| "configuration".to_owned());
                return Err(ConfigError::Value {
                    origin,
                    key,
                    message,
                });
            }
        };

        for segs in unknown {
            let mut leaves = Vec::new();
            match lookup(&root, &segs) {
                Some(value) => leaf_paths(&mut segs.clone(), value, &mut leaves),
                None => leaves.push(segs),
            }
            for leaf in leaves {
                warnings.push(format!("unknown configuration key {}", format_path(&leaf)));
            }
        }

        config.validate()?;
        Ok((config, warnings))
    }

    /// Checks the values that deserialization cannot: cross-field rules,
    /// ranges, names. The error names the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_proxies()?;
        for (prefix, t) in [
            ("client.token", &self.client.token),
            (
                "client.subscription_token",
                &self.client.subscription_token.token,
            ),
        ] {
            if !t.hmac_previous_secret_keys.is_empty()
                && (t.hmac_secret_key.is_empty()
                    || t.hmac_previous_secret_keys.iter().any(String::is_empty))
            {
                return Err(ConfigError::invalid(
                    format!("{prefix}.hmac_previous_secret_keys"),
                    "needs hmac_secret_key (the current secret) and no empty entry",
                ));
            }
            if t.jwks_public_endpoint.is_empty() {
                continue;
            }
            if !(t.jwks_public_endpoint.starts_with("http://")
                || t.jwks_public_endpoint.starts_with("https://"))
            {
                return Err(ConfigError::invalid(
                    format!("{prefix}.jwks_public_endpoint"),
                    "must be an http:// or https:// URL",
                ));
            }
            for (key, d) in [
                ("jwks_cache_ttl", t.jwks_cache_ttl),
                ("jwks_timeout", t.jwks_timeout),
            ] {
                if d.is_zero() {
                    return Err(ConfigError::invalid(
                        format!("{prefix}.{key}"),
                        "must be greater than 0",
                    ));
                }
            }
        }
        if self.client.proxy.max_in_flight == 0 {
            return Err(ConfigError::invalid(
                "client.proxy.max_in_flight",
                "must be greater than 0",
            ));
        }
        if !LOG_LEVELS.contains(&self.log.level.as_str()) {
            return Err(ConfigError::invalid(
                "log.level",
                format!(
                    "unknown level {:?}, expected one of {}",
                    self.log.level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        if self.engine.kind == EngineType::Redis {
            let redis = &self.engine.redis;
            redis
                .shards()
                .map_err(|e| ConfigError::invalid("engine.redis.address", e))?;
            if redis.prefix.is_empty() || redis.prefix.contains(['{', '}']) {
                return Err(ConfigError::invalid(
                    "engine.redis.prefix",
                    "must be non-empty and hold no '{' or '}' (Redis Cluster hash tags)",
                ));
            }
            for (key, d) in [
                ("engine.redis.connect_timeout", redis.connect_timeout),
                ("engine.redis.io_timeout", redis.io_timeout),
                ("engine.redis.presence_ttl", redis.presence_ttl),
            ] {
                if d.is_zero() {
                    return Err(ConfigError::invalid(key, "must be greater than 0"));
                }
            }
            redis.tls.material("engine.redis.tls")?;
            redis.sentinel_tls.material("engine.redis.sentinel_tls")?;
        }
        if self.client.presence_update_interval.is_zero() {
            return Err(ConfigError::invalid(
                "client.presence_update_interval",
                "must be greater than 0",
            ));
        }
        if self.client.presence_update_interval >= self.engine.presence_ttl() {
            return Err(ConfigError::invalid(
                "client.presence_update_interval",
                format!(
                    "must be shorter than the presence TTL ({:?}{}), or presence entries lapse between two refreshes",
                    self.engine.presence_ttl(),
                    if self.engine.kind == EngineType::Redis {
                        ", engine.redis.presence_ttl"
                    } else {
                        ""
                    }
                ),
            ));
        }

        let tls = &self.http_server.tls;
        if tls.is_on() {
            tls.identity()?;
        }
        let main = (&self.http_server.address, self.http_server.port);
        for (key, address, port) in [
            ("grpc_api.port", &self.grpc_api.address, self.grpc_api.port),
            ("uni_grpc.port", &self.uni_grpc.address, self.uni_grpc.port),
        ] {
            let same_address = address.is_empty() || address == main.0;
            if port != 0 && port == main.1 && same_address {
                return Err(ConfigError::invalid(
                    key,
                    "is the main port (http_server.port), which serves gRPC already; set 0 or another port",
                ));
            }
        }
        if self.http_server.write_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "http_server.write_timeout",
                "must be greater than 0",
            ));
        }
        if self.shutdown.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "shutdown.timeout",
                "must be greater than 0",
            ));
        }
        if self.shutdown.reconnect_spread >= self.shutdown.timeout {
            return Err(ConfigError::invalid(
                "shutdown.reconnect_spread",
                format!(
                    "must be less than shutdown.timeout ({})",
                    duration::format(self.shutdown.timeout)
                ),
            ));
        }
        for (key, value) in [
            (
                "http_server.handshake_timeout",
                self.http_server.handshake_timeout,
            ),
            (
                "http_server.request_body_timeout",
                self.http_server.request_body_timeout,
            ),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        for (key, value) in [
            (
                "http_api.max_request_body_size",
                self.http_api.max_request_body_size,
            ),
            ("http_api.max_json_depth", self.http_api.max_json_depth),
            ("client.max_json_depth", self.client.max_json_depth),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than 0"));
            }
        }
        if self.http_server.http2_max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "http_server.http2_max_concurrent_streams",
                "must be greater than 0",
            ));
        }
        for (key, t) in [
            ("sse", &self.sse),
            ("http_stream", &self.http_stream),
            ("uni_sse", &self.uni_sse),
            ("uni_http_stream", &self.uni_http_stream),
        ] {
            if t.max_request_body_size == 0 {
                return Err(ConfigError::invalid(
                    format!("{key}.max_request_body_size"),
                    "must be greater than 0",
                ));
            }
        }
        if self.emulation.max_request_body_size == 0 {
            return Err(ConfigError::invalid(
                "emulation.max_request_body_size",
                "must be greater than 0",
            ));
        }

        let client = &self.client;
        if !client.ping_interval.is_zero() && client.ping_interval <= client.pong_timeout {
            return Err(ConfigError::invalid(
                "client.ping_interval",
                "must be greater than client.pong_timeout",
            ));
        }
        check_whole_seconds("client.token.nbf_leeway", client.token.nbf_leeway)?;
        check_whole_seconds(
            "client.subscription_token.nbf_leeway",
            client.subscription_token.token.nbf_leeway,
        )?;
        if client.stale_close_delay.is_zero() {
            return Err(ConfigError::invalid(
                "client.stale_close_delay",
                "must be greater than 0",
            ));
        }
        if client.max_queue_size == 0 {
            return Err(ConfigError::invalid(
                "client.queue_max_size",
                "must be greater than 0",
            ));
        }
        for (i, origin) in client.allowed_origins.iter().enumerate() {
            if origin.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("client.allowed_origins[{i}]"),
                    "must not be empty",
                ));
            }
        }

        if self.websocket.message_size_limit == 0 {
            return Err(ConfigError::invalid(
                "websocket.message_size_limit",
                "must be greater than 0",
            ));
        }

        let channel = &self.channel;
        if channel.namespace_boundary.is_empty() {
            return Err(ConfigError::invalid(
                "channel.namespace_boundary",
                "must not be empty",
            ));
        }
        if channel.max_length == 0 {
            return Err(ConfigError::invalid(
                "channel.max_length",
                "must be greater than 0",
            ));
        }
        check_whole_seconds("channel.history_meta_ttl", channel.history_meta_ttl)?;
        validate_channel_options(
            "channel.without_namespace",
            &channel.without_namespace,
            channel,
        )?;
        let mut seen = HashSet::new();
        for (i, ns) in channel.namespaces.iter().enumerate() {
            let key = format!("channel.namespaces[{i}]");
            if !valid_namespace_name(&ns.name) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!(
                        "invalid namespace name {:?}, must match ^[-a-zA-Z0-9_.]{{2,}}$",
                        ns.name
                    ),
                ));
            }
            if !seen.insert(ns.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("duplicate namespace {:?}", ns.name),
                ));
            }
            validate_channel_options(&key, &ns.options, channel)?;
        }

        if self.node.name.trim().is_empty() {
            return Err(ConfigError::invalid("node.name", "must not be empty"));
        }
        if self.admin.enabled && !self.admin.insecure && self.admin.password.is_empty() {
            return Err(ConfigError::invalid(
                "admin.password",
                "must be set when admin.enabled is true (or set admin.insecure for a console without login)",
            ));
        }
        Ok(())
    }

    /// The options for `channel`: its namespace's (the part before
    /// `channel.namespace_boundary`, after removing `channel.private_prefix`),
    /// or `channel.without_namespace` when it has none. `None` when the
    /// namespace does not exist.
    pub fn channel_options(&self, channel: &str) -> Option<&ChannelOptions> {
        let ns = self.channel.namespace_name(channel);
        if ns.is_empty() {
            return Some(&self.channel.without_namespace);
        }
        self.channel
            .namespaces
            .iter()
            .find(|n| n.name == ns)
            .map(|n| &n.options)
    }
}

fn validate_channel_options(
    prefix: &str,
    o: &ChannelOptions,
    channel: &ChannelConfig,
) -> Result<(), ConfigError> {
    check_whole_seconds(&format!("{prefix}.history_ttl"), o.history_ttl)?;
    check_whole_seconds(&format!("{prefix}.history_meta_ttl"), o.history_meta_ttl)?;
    if o.history_size > 0 && o.history_ttl.is_zero() {
        return Err(ConfigError::invalid(
            format!("{prefix}.history_ttl"),
            "must be set when history_size is set",
        ));
    }
    if o.history_size == 0 && !o.history_ttl.is_zero() {
        return Err(ConfigError::invalid(
            format!("{prefix}.history_size"),
            "must be set when history_ttl is set",
        ));
    }
    let meta_ttl = channel.effective_history_meta_ttl(o);
    if o.history_ttl > meta_ttl {
        return Err(ConfigError::invalid(
            format!("{prefix}.history_ttl"),
            format!(
                "must not exceed the history meta TTL ({})",
                duration::format(meta_ttl)
            ),
        ));
    }
    if o.force_recovery && !o.history_enabled() {
        return Err(ConfigError::invalid(
            format!("{prefix}.force_recovery"),
            "requires history (history_size and history_ttl)",
        ));
    }
    Ok(())
}

fn check_whole_seconds(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.subsec_nanos() != 0 {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} has sub-second precision, which this key does not support",
                duration::format(d)
            ),
        ));
    }
    Ok(())
}

impl Config {
    /// The proxy hooks: every endpoint in use is one Herald can call, and every name a
    /// namespace selects exists.
    fn validate_proxies(&self) -> Result<(), ConfigError> {
        for (key, p) in [
            ("client.proxy.connect", &self.client.proxy.connect),
            ("client.proxy.refresh", &self.client.proxy.refresh),
        ] {
            if p.enabled {
                p.validate()
                    .map_err(|e| ConfigError::invalid(format!("{key}.endpoint"), e))?;
            }
        }
        for (key, p) in [
            ("channel.proxy.subscribe", &self.channel.proxy.subscribe),
            ("channel.proxy.publish", &self.channel.proxy.publish),
            ("channel.proxy.sub_refresh", &self.channel.proxy.sub_refresh),
            ("rpc.proxy", &self.rpc.proxy),
        ] {
            if !p.endpoint.is_empty() {
                p.validate()
                    .map_err(|e| ConfigError::invalid(format!("{key}.endpoint"), e))?;
            }
        }
        let mut names = HashSet::new();
        for (i, p) in self.proxies.iter().enumerate() {
            let key = format!("proxies[{i}]");
            if !valid_namespace_name(&p.name) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!(
                        "invalid proxy name {:?}, must match ^[-a-zA-Z0-9_.]{{2,}}$",
                        p.name
                    ),
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("duplicate proxy {:?}", p.name),
                ));
            }
            p.validate()
                .map_err(|e| ConfigError::invalid(format!("{key}.endpoint"), e))?;
        }
        let channel = &self.channel;
        let namespaces = std::iter::once((
            "channel.without_namespace".to_string(),
            &channel.without_namespace,
        ))
        .chain(
            channel
                .namespaces
                .iter()
                .enumerate()
                .map(|(i, ns)| (format!("channel.namespaces[{i}]"), &ns.options)),
        );
        for (key, o) in namespaces {
            for (enabled, name, hook, default) in [
                (
                    o.subscribe_proxy_enabled,
                    &o.subscribe_proxy_name,
                    "subscribe",
                    &channel.proxy.subscribe,
                ),
                (
                    o.publish_proxy_enabled,
                    &o.publish_proxy_name,
                    "publish",
                    &channel.proxy.publish,
                ),
                (
                    o.sub_refresh_proxy_enabled,
                    &o.sub_refresh_proxy_name,
                    "sub_refresh",
                    &channel.proxy.sub_refresh,
                ),
            ] {
                if enabled {
                    proxy::check_selection(name, default, &format!("channel.proxy.{hook}"), &names)
                        .map_err(|e| {
                            ConfigError::invalid(format!("{key}.{hook}_proxy_enabled"), e)
                        })?;
                }
            }
        }
        let rpc = &self.rpc;
        let mut seen = HashSet::new();
        for (i, ns) in rpc.namespaces.iter().enumerate() {
            let key = format!("rpc.namespaces[{i}]");
            if !valid_namespace_name(&ns.name) || !seen.insert(ns.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!(
                        "invalid or duplicate RPC namespace name {:?}, must match ^[-a-zA-Z0-9_.]{{2,}}$",
                        ns.name
                    ),
                ));
            }
            if ns.proxy_enabled {
                proxy::check_selection(&ns.proxy_name, &rpc.proxy, "rpc.proxy", &names)
                    .map_err(|e| ConfigError::invalid(format!("{key}.proxy_enabled"), e))?;
            }
        }
        if rpc.without_namespace.proxy_enabled {
            proxy::check_selection(
                &rpc.without_namespace.proxy_name,
                &rpc.proxy,
                "rpc.proxy",
                &names,
            )
            .map_err(|e| ConfigError::invalid("rpc.without_namespace.proxy_enabled", e))?;
        }
        Ok(())
    }
}

/// `^[-a-zA-Z0-9_.]{2,}$`
fn valid_namespace_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn redacted(s: &str) -> &'static str {
    if s.is_empty() { "" } else { "<redacted>" }
}

fn flag_default_true<'de, D: Deserializer<'de>>(d: D) -> Result<EnabledFlag, D::Error> {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Flag {
        enabled: Option<bool>,
    }
    let flag = Flag::deserialize(d)?;
    Ok(EnabledFlag {
        enabled: flag.enabled.unwrap_or(true),
    })
}

fn read_file(path: &Path) -> Result<Value, ConfigError> {
    enum Format {
        Json,
        Yaml,
        Toml,
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let format = match ext.as_deref() {
        Some("json") => Format::Json,
        Some("yaml" | "yml") => Format::Yaml,
        Some("toml") => Format::Toml,
        _ => {
            return Err(ConfigError::UnsupportedFormat {
                path: path.to_owned(),
            });
        }
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parse_err = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let value: Value = match format {
        Format::Json => serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))?,
        Format::Yaml => serde_yaml_ng::from_str(&text).map_err(|e| parse_err(e.to_string()))?,
        Format::Toml => toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?,
    };
    match value {
        Value::Object(_) => Ok(value),
        // An empty YAML document.
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(parse_err(
            "the top level must be a map of configuration keys".to_owned(),
        )),
    }
}

// ---------------------------------------------------------------------------
// Paths in the value tree
// ---------------------------------------------------------------------------

/// One step of a key path: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn format_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

fn path_segments(path: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
    use serde_ignored::Path as P;
    match path {
        P::Root => {}
        P::Seq { parent, index } => {
            path_segments(parent, out);
            out.push(Seg::Index(*index));
        }
        P::Map { parent, key } => {
            path_segments(parent, out);
            out.push(Seg::Key(key.clone()));
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_segments(parent, out);
        }
    }
}

fn lookup<'a>(root: &'a Value, segs: &[Seg]) -> Option<&'a Value> {
    segs.iter().try_fold(root, |v, seg| match seg {
        Seg::Key(k) => v.as_object()?.get(k),
        Seg::Index(i) => v.as_array()?.get(*i),
    })
}

/// The paths of the leaves under `value` (non-empty maps are descended).
fn leaf_paths(prefix: &mut Vec<Seg>, value: &Value, out: &mut Vec<Vec<Seg>>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                prefix.push(Seg::Key(k.clone()));
                leaf_paths(prefix, child, out);
                prefix.pop();
            }
        }
        _ => out.push(prefix.clone()),
    }
}

/// A tree holding only `leaf` at `segs`; list indexes become one-element lists.
fn isolate(segs: &[Seg], leaf: Value) -> Value {
    segs.iter().rev().fold(leaf, |acc, seg| match seg {
        Seg::Key(k) => {
            let mut map = Map::new();
            map.insert(k.clone(), acc);
            Value::Object(map)
        }
        Seg::Index(_) => Value::Array(vec![acc]),
    })
}

/// Finds the deepest key whose value alone fails to deserialize, with the
/// error message. Used only when deserializing the whole tree failed: serde's
/// errors from a `Value` carry no path, and every struct here defaults its
/// missing fields, so a tree holding a single key tells whether that key is
/// at fault.
fn locate_error(root: &Value) -> Option<(Vec<Seg>, String)> {
    fn descend(path: &mut Vec<Seg>, value: &Value) -> Option<(Vec<Seg>, String)> {
        let err = serde_json::from_value::<Config>(isolate(path, value.clone())).err()?;
        let children: Vec<(Seg, &Value)> = match value {
            Value::Object(map) => map.iter().map(|(k, v)| (Seg::Key(k.clone()), v)).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (Seg::Index(i), v))
                .collect(),
            _ => Vec::new(),
        };
        for (seg, child) in children {
            path.push(seg);
            if let Some(found) = descend(path, child) {
                return Some(found);
            }
            path.pop();
        }
        Some((path.clone(), err.to_string()))
    }
    descend(&mut Vec::new(), root)
}

// ---------------------------------------------------------------------------
// Environment overrides
// ---------------------------------------------------------------------------

/// Applies `HERALD_*` variables to `root`, resolving names against `tree` (the
/// serialized defaults). Returns, for each applied variable, the path it set.
fn apply_env(
    root: &mut Value,
    tree: &Value,
    env: impl IntoIterator<Item = (String, String)>,
    warnings: &mut Vec<String>,
) -> Result<Vec<(Vec<Seg>, String)>, ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    // Sorted, so that a variable naming a section comes before the variables
    // naming keys inside it, and warnings come in a stable order.
    vars.sort();
    let mut applied = Vec::new();
    for (name, raw) in vars {
        if NON_CONFIG_ENV_VARS.contains(&name.as_str()) || raw.is_empty() {
            continue;
        }
        let tokens: Vec<String> = name[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .split('_')
            .map(str::to_owned)
            .collect();
        let Some(keys) = resolve_env_name(tree, &tokens) else {
            warnings.push(format!(
                "unknown environment variable {name}: it matches no configuration key"
            ));
            continue;
        };
        let segs: Vec<Seg> = keys.into_iter().map(Seg::Key).collect();
        let value = env_value(&name, lookup(tree, &segs), &raw)?;
        set_path(root, &segs, value);
        applied.push((segs, name));
    }
    Ok(applied)
}

/// Splits `tokens` (the variable name's `_`-separated words) into keys of
/// `node`, longest key first, backtracking when the rest does not resolve.
fn resolve_env_name(node: &Value, tokens: &[String]) -> Option<Vec<String>> {
    let map = node.as_object()?;
    for take in (1..=tokens.len()).rev() {
        let key = tokens[..take].join("_");
        let Some(child) = map.get(&key) else {
            continue;
        };
        if take == tokens.len() {
            return Some(vec![key]);
        }
        if let Some(mut rest) = resolve_env_name(child, &tokens[take..]) {
            rest.insert(0, key);
            return Some(rest);
        }
    }
    None
}

/// Reads an environment value according to the type of the key's default.
fn env_value(var: &str, default: Option<&Value>, raw: &str) -> Result<Value, ConfigError> {
    let bad_json = |e: serde_json::Error| ConfigError::Env {
        var: var.to_owned(),
        message: format!("invalid JSON: {e}"),
    };
    Ok(match default {
        Some(Value::Bool(_)) => parse_go_bool(raw).map_or_else(|| Value::from(raw), Value::Bool),
        Some(Value::Number(_)) => {
            let t = raw.trim();
            if let Ok(n) = t.parse::<u64>() {
                Value::from(n)
            } else if let Ok(n) = t.parse::<i64>() {
                Value::from(n)
            } else if let Some(n) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                Value::Number(n)
            } else {
                Value::from(raw)
            }
        }
        Some(Value::String(_)) => Value::from(raw),
        Some(Value::Array(_)) => {
            if raw.trim_start().starts_with('[') {
                serde_json::from_str(raw).map_err(bad_json)?
            } else {
                Value::Array(raw.split_whitespace().map(Value::from).collect())
            }
        }
        Some(Value::Object(_)) => {
            let value: Value = serde_json::from_str(raw).map_err(bad_json)?;
            if !value.is_object() {
                return Err(ConfigError::Env {
                    var: var.to_owned(),
                    message: "expected a JSON object".to_owned(),
                });
            }
            value
        }
        _ => serde_json::from_str(raw).unwrap_or_else(|_| Value::from(raw)),
    })
}

/// Go's `strconv.ParseBool` spellings (as Centrifugo reads its environment).
fn parse_go_bool(raw: &str) -> Option<bool> {
    match raw.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn set_path(root: &mut Value, segs: &[Seg], value: Value) {
    let mut node = root;
    for seg in segs {
        let Seg::Key(key) = seg else {
            continue;
        };
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else {
            return;
        };
        node = map.entry(key.clone()).or_insert(Value::Null);
    }
    *node = value;
}

// ---------------------------------------------------------------------------
// Serde helpers
// ---------------------------------------------------------------------------

/// Serde helper for [`Duration`] fields (`#[serde(with = "duration")]`), and
/// the parser and formatter behind it.
///
/// Accepted forms: a Go duration string as Centrifugo takes (`"25s"`,
/// `"300ms"`, `"1h30m"`, `"1.5s"`; units `ns`, `us`/`µs`, `ms`, `s`, `m`,
/// `h`), a humantime string (`"2 days"`), an integer number of seconds (`30`
/// or `"30"`), or a non-negative float number of seconds. Negative durations
/// are rejected. Serialized as the shortest Go-style string (`"1m30s"`).
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    const NANOS_PER_SEC: u128 = 1_000_000_000;

    /// Parses a duration string; the error says what is wrong.
    pub fn parse(input: &str) -> Result<Duration, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err("empty duration".to_owned());
        }
        if s.starts_with('-') {
            return Err(format!("invalid duration {input:?}: must not be negative"));
        }
        let s = s.strip_prefix('+').unwrap_or(s);
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| format!("invalid duration {input:?}: too large"));
        }
        match parse_go(s) {
            Ok(d) => Ok(d),
            Err(reason) => humantime::parse_duration(s)
                .map_err(|_| format!("invalid duration {input:?}: {reason}")),
        }
    }

    fn parse_go(s: &str) -> Result<Duration, String> {
        let mut rest = s;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (num, after) = rest.split_at(num_len);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            rest = after;

            let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
            if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
                return Err("expected a number before each unit".to_owned());
            }
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => NANOS_PER_SEC,
                "m" => 60 * NANOS_PER_SEC,
                "h" => 3600 * NANOS_PER_SEC,
                "" => return Err("missing unit (use ns, us, ms, s, m or h)".to_owned()),
                other => {
                    return Err(format!(
                        "unknown unit {other:?} (use ns, us, ms, s, m or h)"
                    ));
                }
            };
            let too_large = || "too large".to_owned();
            let int: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| too_large())?
            };
            total = int
                .checked_mul(unit_nanos)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(too_large)?;
            // At most 18 fractional digits matter below a nanosecond-per-hour scale.
            let frac = &frac_part[..frac_part.len().min(18)];
            if !frac.is_empty() {
                let digits: u128 = frac.parse().map_err(|_| too_large())?;
                let scale = 10u128.pow(frac.len() as u32);
                total = total
                    .checked_add(digits * unit_nanos / scale)
                    .ok_or_else(too_large)?;
            }
        }
        let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| "too large".to_owned())?;
        Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
    }

    /// Formats `d` as the shortest Go-style string that [`parse`] reads back:
    /// `"0s"`, `"300ms"`, `"25s"`, `"1.5s"`, `"1h30m"`, `"720h"`.
    pub fn format(d: Duration) -> String {
        if d.is_zero() {
            return "0s".to_owned();
        }
        let secs = d.as_secs();
        let nanos = d.subsec_nanos();
        if secs == 0 {
            return if nanos.is_multiple_of(1_000_000) {
                format!("{}ms", nanos / 1_000_000)
            } else if nanos.is_multiple_of(1_000) {
                format!("{}us", nanos / 1_000)
            } else {
                format!("{nanos}ns")
            };
        }
        let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
        let mut out = String::new();
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if s > 0 || nanos > 0 {
            out.push_str(&s.to_string());
            if nanos > 0 {
                let frac = format!("{nanos:09}");
                out.push('.');
                out.push_str(frac.trim_end_matches('0'));
            }
            out.push('s');
        }
        out
    }

    /// Serializes with [`format()`].
    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*d))
    }

    /// Deserializes any accepted form (see the module doc).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "a duration such as \"25s\", \"300ms\" or \"1h30m\", or a number of seconds",
            )
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| {
                E::custom(format!(
                    "invalid duration {v}: must be a non-negative number of seconds"
                ))
            })
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
}

/// Reads a TCP port from an integer or a numeric string (Centrifugo before v6
/// wrote ports as strings).
mod port {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{self, Visitor};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
        deserializer.deserialize_any(PortVisitor)
    }

    struct PortVisitor;

    fn out_of_range<E: de::Error>(v: impl fmt::Display) -> E {
        E::custom(format!(
            "invalid port {v}: expected an integer between 0 and 65535"
        ))
    }

    impl Visitor<'_> for PortVisitor {
        type Value = u16;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
            u16::try_from(v).map_err(|_| out_of_range(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
            u16::try_from(v).map_err(|_| out_of_range(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u16, E> {
            v.trim()
                .parse::<u16>()
                .map_err(|_| out_of_range(format_args!("{v:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn write_temp(ext: &str, content: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "herald-config-test-{}-{n}.{ext}",
            std::process::id()
        ));
        std::fs::write(&path, content).expect("write temp config");
        path
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_str(ext: &str, content: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let path = write_temp(ext, content);
        let result = Config::load_with_env(Some(&path), Vec::new());
        let _ = std::fs::remove_file(&path);
        result
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
        Config::load_with_env(None, env(pairs))
    }

    #[test]
    fn redis_address_is_a_string_or_a_list() {
        let (cfg, warnings) = load_str(
            "json",
            r#"{"engine": {"type": "redis", "redis": {"address": "redis://:p%40ss@10.0.0.1:7000/2", "prefix": "x"}}}"#,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.engine.kind, EngineType::Redis);
        let shards = cfg.engine.redis.shards().unwrap();
        assert_eq!(shards.len(), 1);
        let s = &shards[0];
        assert_eq!((s.host.as_str(), s.port, s.db), ("10.0.0.1", 7000, 2));
        assert_eq!(s.password, "p@ss");
        assert_eq!(
            s.to_string(),
            "redis://10.0.0.1:7000/2",
            "no password shown"
        );
        assert!(!format!("{:?}", cfg.engine.redis).contains("p@ss"));
        assert!(s.seeds.is_empty());
        let mut seeded = cfg.engine.redis.clone();
        seeded.address = vec!["redis://h1:7000?addr=h2:7001&addr=[::1]:7002".into()];
        assert_eq!(
            seeded.shards().unwrap()[0].seeds,
            [("h2".to_string(), 7001), ("::1".to_string(), 7002)]
        );
        seeded.address = vec![
            "redis+sentinel://:pw@s1?sentinel_master_name=m&addr=s2:26380&sentinel_password=sp"
                .into(),
        ];
        let sentinel = &seeded.shards().unwrap()[0];
        assert_eq!((sentinel.host.as_str(), sentinel.port), ("s1", 26379));
        assert_eq!(sentinel.seeds, [("s2".to_string(), 26380)]);
        assert_eq!(sentinel.password, "pw", "the master's password");
        let opts = sentinel.sentinel.as_ref().unwrap();
        assert_eq!(
            (opts.master_name.as_str(), opts.password.as_str()),
            ("m", "sp")
        );
        assert_eq!(
            sentinel.to_string(),
            "redis+sentinel://s1:26379/0?sentinel_master_name=m"
        );
        seeded.address = vec!["redis+sentinel://s1".into()];
        assert!(
            seeded
                .shards()
                .unwrap_err()
                .contains("sentinel_master_name is required")
        );
        seeded.address = vec!["redis://h1:7000?addr=h2".into()];
        assert!(
            seeded
                .shards()
                .unwrap_err()
                .contains("addr=\"h2\" is not host:port")
        );

        // TLS: `rediss://` or `tls.enabled`; with Sentinel the scheme's TLS is the
        // Sentinels', the master's is `tls.enabled`.
        let tls_of = |cfg: &RedisConfig, address: &str| {
            let mut cfg = cfg.clone();
            cfg.address = vec![address.to_owned()];
            let a = cfg.shards().unwrap().remove(0);
            (a.tls, a.sentinel.as_ref().map(|s| s.tls), a.to_string())
        };
        let mut tls = RedisConfig::default();
        assert_eq!(
            tls_of(&tls, "rediss://h:1"),
            (true, None, "rediss://h:1/0".into())
        );
        assert_eq!(
            tls_of(&tls, "redis://h:1"),
            (false, None, "redis://h:1/0".into())
        );
        assert_eq!(
            tls_of(&tls, "rediss+sentinel://s?sentinel_master_name=m"),
            (
                false,
                Some(true),
                "rediss+sentinel://s:26379/0?sentinel_master_name=m".into()
            )
        );
        tls.tls.enabled = true;
        assert_eq!(
            tls_of(&tls, "redis://h:1"),
            (true, None, "rediss://h:1/0".into())
        );
        assert!(
            tls_of(&tls, "redis+sentinel://s?sentinel_master_name=m").0,
            "the master over TLS"
        );
        tls.sentinel_tls.enabled = true;
        assert_eq!(
            tls_of(&tls, "redis+sentinel://s?sentinel_master_name=m").1,
            Some(true)
        );

        let (cfg, _) = load_str(
            "yaml",
            "engine:\n  type: redis\n  redis:\n    address: [\"127.0.0.1:6380\", \"redis://u@h2\"]\n    db: 3\n    password: pw\n",
        )
        .unwrap();
        let shards = cfg.engine.redis.shards().unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!((shards[0].port, shards[0].db), (6380, 3));
        assert_eq!(shards[0].password, "pw");
        assert_eq!(
            (
                shards[1].host.as_str(),
                shards[1].port,
                shards[1].user.as_str()
            ),
            ("h2", 6379, "u")
        );

        let (cfg, _) = load_env(&[
            ("HERALD_ENGINE_TYPE", "redis"),
            ("HERALD_ENGINE_REDIS_ADDRESS", "redis://a:1 redis://b:2"),
            ("HERALD_ENGINE_REDIS_IO_TIMEOUT", "250ms"),
        ])
        .unwrap();
        assert_eq!(cfg.engine.redis.address, ["redis://a:1", "redis://b:2"]);
        assert_eq!(cfg.engine.redis.io_timeout, Duration::from_millis(250));
    }

    fn validation_error(cfg: &Config) -> String {
        cfg.validate()
            .expect_err("config should be invalid")
            .to_string()
    }

    const JSON: &str = r#"{
        "http_server": {"port": 9000},
        "client": {"token": {"hmac_secret_key": "s3cret"}, "allowed_origins": ["https://*.example.com"]},
        "channel": {"namespaces": [
            {"name": "chat", "presence": true, "history_size": 10, "history_ttl": "300s", "force_recovery": true}
        ]}
    }"#;

    const YAML: &str = r#"
http_server:
  port: 9000
client:
  token:
    hmac_secret_key: s3cret
  allowed_origins:
    - "https://*.example.com"
channel:
  namespaces:
    - name: chat
      presence: true
      history_size: 10
      history_ttl: 300s
      force_recovery: true
"#;

    const TOML: &str = r#"
[http_server]
port = 9000

[client]
allowed_origins = ["https://*.example.com"]

[client.token]
hmac_secret_key = "s3cret"

[[channel.namespaces]]
name = "chat"
presence = true
history_size = 10
history_ttl = "300s"
force_recovery = true
"#;

    fn expected_example() -> Config {
        let mut cfg = Config::default();
        cfg.http_server.port = 9000;
        cfg.client.token.hmac_secret_key = "s3cret".to_owned();
        cfg.client.allowed_origins = vec!["https://*.example.com".to_owned()];
        cfg.channel.namespaces.push(Namespace {
            name: "chat".to_owned(),
            options: ChannelOptions {
                presence: true,
                history_size: 10,
                history_ttl: Duration::from_secs(300),
                force_recovery: true,
                ..ChannelOptions::default()
            },
        });
        cfg
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let cfg = Config::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.http_server.address, "127.0.0.1");
        assert_eq!(cfg.http_server.port, 8000);
        assert_eq!(cfg.log.level, "info");
        assert_eq!(cfg.engine.kind, EngineType::Memory);
        assert_eq!(cfg.client.ping_interval, Duration::from_secs(25));
        assert_eq!(cfg.client.pong_timeout, Duration::from_secs(8));
        assert_eq!(cfg.client.max_queue_size, 1_048_576);
        assert_eq!(cfg.client.channel_limit, 128);
        assert_eq!(cfg.client.history_max_publication_limit, 300);
        assert_eq!(cfg.client.recovery_max_publication_limit, 300);
        assert_eq!(cfg.websocket.message_size_limit, 65_536);
        assert_eq!(cfg.websocket.write_timeout, Duration::from_secs(1));
        assert_eq!(cfg.channel.max_length, 255);
        assert_eq!(cfg.channel.private_prefix, "$");
        assert_eq!(cfg.channel.namespace_boundary, ":");
        assert_eq!(cfg.channel.user_boundary, "#");
        assert_eq!(cfg.channel.user_separator, ",");
        assert!(cfg.health.enabled);
        assert!(cfg.prometheus.enabled);
        assert!(cfg.sse.enabled && cfg.uni_grpc.enabled && cfg.grpc_api.enabled);
        assert!(!cfg.node.name.is_empty());
        assert!(!cfg.demo.enabled && !cfg.admin.enabled && !cfg.admin.insecure);

        let (loaded, warnings) = load_env(&[]).unwrap();
        assert_eq!(loaded, cfg);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn serialization_round_trips() {
        let cfg = expected_example();
        let value = serde_json::to_value(&cfg).unwrap();
        assert_eq!(value["client"]["ping_interval"], "25s");
        assert_eq!(value["channel"]["history_meta_ttl"], "720h");
        assert_eq!(value["channel"]["namespaces"][0]["name"], "chat");
        assert_eq!(value["channel"]["namespaces"][0]["history_ttl"], "5m");
        assert_eq!(value["engine"]["type"], "memory");
        assert_eq!(value["client"]["queue_max_size"], 1_048_576);
        let back: Config = serde_json::from_value(value).unwrap();
        assert_eq!(back, cfg);
        // TOML too, for `herald checkconfig`.
        let text = toml::to_string(&cfg).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn each_format_loads() {
        for (ext, content) in [
            ("json", JSON),
            ("yaml", YAML),
            ("yml", YAML),
            ("toml", TOML),
        ] {
            let (cfg, warnings) = load_str(ext, content).unwrap_or_else(|e| panic!("{ext}: {e}"));
            assert_eq!(cfg, expected_example(), "{ext}");
            assert!(warnings.is_empty(), "{ext}: {warnings:?}");
        }
        let (cfg, _) = load_str("yaml", "").unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn unsupported_extension_and_syntax_errors_name_the_file() {
        let err = load_str("ini", "port=1").unwrap_err();
        assert!(
            matches!(err, ConfigError::UnsupportedFormat { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(".ini"), "{err}");

        for (ext, content) in [("json", "{\"a\": "), ("yaml", "a: [1,"), ("toml", "a = ")] {
            let err = load_str(ext, content).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ConfigError::Parse { .. }), "{ext}: {msg}");
            assert!(
                msg.starts_with("config file ") && msg.contains(&format!(".{ext}")),
                "{msg}"
            );
        }
        let err = load_str("json", "[1, 2]").unwrap_err();
        assert!(err.to_string().contains("top level must be a map"), "{err}");

        let err = Config::load_with_env(Some(Path::new("/nonexistent/herald.toml")), Vec::new())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read config file /nonexistent/herald.toml"),
            "{err}"
        );
    }

    #[test]
    fn value_errors_name_file_and_key() {
        let err = load_str("json", r#"{"http_server": {"port": "eighty"}}"#).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("config file "), "{msg}");
        assert!(
            msg.contains(": http_server.port: invalid port \"eighty\""),
            "{msg}"
        );

        let err = load_str("toml", "[http_server]\nport = 70000\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("http_server.port: invalid port 70000"),
            "{err}"
        );

        let err = load_str(
            "yaml",
            "channel:\n  namespaces:\n    - name: ok\n    - name: chat\n      history_ttl: soon\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(": channel.namespaces[1].history_ttl: invalid duration \"soon\""),
            "{msg}"
        );

        let err = load_str("json", r#"{"client": {"insecure": "yes please"}}"#).unwrap_err();
        assert!(
            err.to_string().contains(": client.insecure: invalid type"),
            "{err}"
        );

        let err = load_str("json", r#"{"engine": {"type": "tarantool"}}"#).unwrap_err();
        assert!(
            err.to_string().contains(": engine.type: unknown variant"),
            "{err}"
        );

        let err = load_str("json", r#"{"client": 5}"#).unwrap_err();
        assert!(err.to_string().contains(": client: invalid type"), "{err}");

        // A port given as a string (older Centrifugo configs) is fine.
        let (cfg, _) = load_str("json", r#"{"http_server": {"port": "9001"}}"#).unwrap();
        assert_eq!(cfg.http_server.port, 9001);
    }

    #[test]
    fn unknown_keys_are_warnings_with_full_paths() {
        let (cfg, warnings) = load_str(
            "json",
            r#"{
                "client": {"tokne": {"hmac_secret_key": "x"}, "token": {"user_id_claim": "u"}},
                "channel": {"namespaces": [{"name": "chat", "presense": true}],
                            "without_namespace": {"delta_publish": true}},
                "client.subscription_token": 1,
                "health": {"handler_prefix": "/h"},
                "admin": {"enabled": true, "password": "p", "external": true},
                "swagger": []
            }"#,
        )
        .unwrap();
        let mut expected = vec![
            "unknown configuration key client.tokne.hmac_secret_key",
            "unknown configuration key client.token.user_id_claim",
            "unknown configuration key channel.namespaces[0].presense",
            "unknown configuration key channel.without_namespace.delta_publish",
            "unknown configuration key client.subscription_token",
            "unknown configuration key health.handler_prefix",
            "unknown configuration key admin.external",
            "unknown configuration key swagger",
        ];
        let mut got: Vec<&str> = warnings.iter().map(String::as_str).collect();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
        // Unknown keys change nothing; a health section without `enabled` keeps it on.
        assert!(cfg.health.enabled);
        assert_eq!(cfg.channel.namespaces[0].name, "chat");

        let (_, warnings) =
            load_str("yaml", "client:\n  subscription_token:\n    enabld: true\n").unwrap();
        assert_eq!(
            warnings,
            vec!["unknown configuration key client.subscription_token.enabld"]
        );
    }

    #[test]
    fn env_overrides_scalars_nested_keys_and_arrays() {
        let path = write_temp(
            "toml",
            "[http_server]\nport = 9000\n[http_api]\nkey = \"from-file\"\n[log]\nlevel = \"warn\"\n",
        );
        let (cfg, warnings) = Config::load_with_env(
            Some(&path),
            env(&[
                ("HERALD_CLIENT_TOKEN_HMAC_SECRET_KEY", "env-secret"),
                ("HERALD_HTTP_API_KEY", "12345"),
                ("HERALD_HTTP_SERVER_PORT", "8001"),
                ("HERALD_HTTP_SERVER_ADDRESS", "0.0.0.0"),
                ("HERALD_LOG_LEVEL", "debug"),
                ("HERALD_CLIENT_INSECURE", "true"),
                ("HERALD_CLIENT_ALLOW_ANONYMOUS_CONNECT_WITHOUT_TOKEN", "1"),
                ("HERALD_PROMETHEUS_ENABLED", "false"),
                ("HERALD_UNI_HTTP_STREAM_ENABLED", "t"),
                ("HERALD_HTTP_STREAM_ENABLED", "TRUE"),
                ("HERALD_CLIENT_PING_INTERVAL", "30s"),
                ("HERALD_CLIENT_PONG_TIMEOUT", "10"),
                ("HERALD_CLIENT_QUEUE_MAX_SIZE", "2048"),
                ("HERALD_CLIENT_SUBSCRIPTION_TOKEN_ENABLED", "true"),
                (
                    "HERALD_CLIENT_SUBSCRIPTION_TOKEN_HMAC_SECRET_KEY",
                    "sub-secret",
                ),
                (
                    "HERALD_CLIENT_ALLOWED_ORIGINS",
                    "https://a.example https://*.b.example",
                ),
                ("HERALD_CHANNEL_WITHOUT_NAMESPACE_PRESENCE", "true"),
                (
                    "HERALD_CHANNEL_NAMESPACES",
                    r#"[{"name":"chat","history_size":5,"history_ttl":"60s"},{"name":"news"}]"#,
                ),
                ("HERALD_ENGINE_TYPE", "memory"),
                ("HERALD_NODE_NAME", "node-1"),
                ("HERALD_CONFIG", "/etc/herald.toml"),
                ("HERALD_CLIENT_CHANNEL_LIMIT", ""),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.client.token.hmac_secret_key, "env-secret");
        assert_eq!(cfg.http_api.key, "12345");
        assert_eq!(cfg.http_server.port, 8001);
        assert_eq!(cfg.http_server.address, "0.0.0.0");
        assert_eq!(cfg.log.level, "debug");
        assert!(cfg.client.insecure);
        assert!(cfg.client.allow_anonymous_connect_without_token);
        assert!(!cfg.prometheus.enabled);
        assert!(cfg.uni_http_stream.enabled);
        assert!(cfg.http_stream.enabled);
        assert_eq!(cfg.client.ping_interval, Duration::from_secs(30));
        assert_eq!(cfg.client.pong_timeout, Duration::from_secs(10));
        assert_eq!(cfg.client.max_queue_size, 2048);
        assert_eq!(
            cfg.client.channel_limit, 128,
            "empty variable counts as unset"
        );
        assert!(cfg.client.subscription_token.enabled);
        assert_eq!(
            cfg.client.subscription_token.token.hmac_secret_key,
            "sub-secret"
        );
        assert_eq!(
            cfg.client.allowed_origins,
            vec!["https://a.example", "https://*.b.example"]
        );
        assert!(cfg.channel.without_namespace.presence);
        assert_eq!(cfg.channel.namespaces.len(), 2);
        assert_eq!(cfg.channel.namespaces[0].name, "chat");
        assert_eq!(cfg.channel.namespaces[0].options.history_size, 5);
        assert_eq!(
            cfg.channel.namespaces[0].options.history_ttl,
            Duration::from_secs(60)
        );
        assert_eq!(cfg.channel.namespaces[1].name, "news");
        assert_eq!(cfg.node.name, "node-1");
    }

    #[test]
    fn env_arrays_accept_json() {
        let (cfg, _) =
            load_env(&[("HERALD_CLIENT_ALLOWED_ORIGINS", r#"["https://x", "*"]"#)]).unwrap();
        assert_eq!(cfg.client.allowed_origins, vec!["https://x", "*"]);
        let (cfg, _) = load_env(&[(
            "HERALD_CHANNEL_WITHOUT_NAMESPACE",
            r#"{"history_size": 3, "history_ttl": 30}"#,
        )])
        .unwrap();
        assert!(cfg.channel.without_namespace.history_enabled());
    }

    #[test]
    fn env_errors_and_unknown_variables() {
        let (_, warnings) = load_env(&[
            ("HERALD_CLIENT_TOKNE_HMAC_SECRET_KEY", "x"),
            ("HERALD_NOPE", "1"),
        ])
        .unwrap();
        assert_eq!(
            warnings,
            vec![
                "unknown environment variable HERALD_CLIENT_TOKNE_HMAC_SECRET_KEY: it matches no configuration key",
                "unknown environment variable HERALD_NOPE: it matches no configuration key",
            ]
        );

        let err = load_env(&[("HERALD_HTTP_SERVER_PORT", "abc")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable HERALD_HTTP_SERVER_PORT: http_server.port: invalid port \"abc\": expected an integer between 0 and 65535"
        );
        let err = load_env(&[("HERALD_CLIENT_INSECURE", "maybe")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable HERALD_CLIENT_INSECURE: client.insecure: "),
            "{err}"
        );
        let err = load_env(&[("HERALD_CHANNEL_NAMESPACES", "[{\"name\": ")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable HERALD_CHANNEL_NAMESPACES: invalid JSON"),
            "{err}"
        );
        let err = load_env(&[(
            "HERALD_CHANNEL_NAMESPACES",
            r#"[{"name": "chat", "history_ttl": "forever"}]"#,
        )])
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "environment variable HERALD_CHANNEL_NAMESPACES: channel.namespaces[0].history_ttl: invalid duration"
            ),
            "{err}"
        );
        // Env values are validated like file values.
        let err = load_env(&[("HERALD_CLIENT_PONG_TIMEOUT", "1m")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "client.ping_interval: must be greater than client.pong_timeout"
        );
    }

    #[test]
    fn env_name_resolution_backtracks() {
        let tree = serde_json::to_value(Config::default()).unwrap();
        let resolve = |name: &str| {
            let tokens: Vec<String> = name
                .to_ascii_lowercase()
                .split('_')
                .map(str::to_owned)
                .collect();
            resolve_env_name(&tree, &tokens).map(|keys| keys.join("."))
        };
        assert_eq!(resolve("HTTP_API_KEY").as_deref(), Some("http_api.key"));
        assert_eq!(
            resolve("HTTP_SERVER_PORT").as_deref(),
            Some("http_server.port")
        );
        assert_eq!(
            resolve("HTTP_STREAM_ENABLED").as_deref(),
            Some("http_stream.enabled")
        );
        assert_eq!(
            resolve("UNI_HTTP_STREAM_ENABLED").as_deref(),
            Some("uni_http_stream.enabled")
        );
        assert_eq!(
            resolve("CLIENT_SUBSCRIPTION_TOKEN_HMAC_SECRET_KEY").as_deref(),
            Some("client.subscription_token.hmac_secret_key")
        );
        assert_eq!(
            resolve("CHANNEL_WITHOUT_NAMESPACE_ALLOW_PUBLISH_FOR_CLIENT").as_deref(),
            Some("channel.without_namespace.allow_publish_for_client")
        );
        assert_eq!(resolve("CLIENT").as_deref(), Some("client"));
        assert_eq!(resolve("CLIENT_TOKEN_NOPE"), None);
    }

    #[test]
    fn aliases_and_flag_defaults() {
        let (cfg, warnings) = load_str("json", r#"{"client": {"max_queue_size": 4096}}"#).unwrap();
        assert_eq!(cfg.client.max_queue_size, 4096);
        assert!(warnings.is_empty());

        let (cfg, _) = load_str(
            "json",
            r#"{"health": {}, "prometheus": {"enabled": false}}"#,
        )
        .unwrap();
        assert!(cfg.health.enabled);
        assert!(!cfg.prometheus.enabled);
        let (cfg, _) = load_str("json", r#"{"sse": {"enabled": true}}"#).unwrap();
        assert!(cfg.sse.enabled);
    }

    #[test]
    fn demo_and_admin_sections() {
        let (cfg, warnings) = load_str(
            "json",
            r#"{"demo": {"enabled": true}, "admin": {"enabled": true, "password": "pw", "secret": "s"}}"#,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(cfg.demo.enabled && cfg.admin.enabled);
        assert_eq!(
            (cfg.admin.password.as_str(), cfg.admin.secret.as_str()),
            ("pw", "s")
        );

        let (cfg, _) = load_env(&[
            ("HERALD_DEMO_ENABLED", "true"),
            ("HERALD_ADMIN_ENABLED", "1"),
            ("HERALD_ADMIN_INSECURE", "true"),
        ])
        .unwrap();
        assert!(cfg.demo.enabled && cfg.admin.enabled && cfg.admin.insecure);

        let err = load_env(&[("HERALD_ADMIN_ENABLED", "true")]).unwrap_err();
        assert!(
            err.to_string().starts_with("admin.password: must be set"),
            "{err}"
        );
    }

    fn with_namespace(options: ChannelOptions) -> Config {
        let mut cfg = Config::default();
        cfg.channel.namespaces.push(Namespace {
            name: "chat".to_owned(),
            options,
        });
        cfg
    }

    #[test]
    fn validation_errors_name_the_key() {
        let mut cfg = Config::default();
        cfg.client.pong_timeout = Duration::from_secs(30);
        assert_eq!(
            validation_error(&cfg),
            "client.ping_interval: must be greater than client.pong_timeout"
        );

        let mut cfg = with_namespace(ChannelOptions::default());
        cfg.channel.namespaces.push(Namespace {
            name: "chat".to_owned(),
            ..Namespace::default()
        });
        assert_eq!(
            validation_error(&cfg),
            "channel.namespaces[1].name: duplicate namespace \"chat\""
        );

        for bad in ["c", "chat room", "chat:x", ""] {
            let mut cfg = Config::default();
            cfg.channel.namespaces.push(Namespace {
                name: bad.to_owned(),
                ..Namespace::default()
            });
            let msg = validation_error(&cfg);
            assert!(
                msg.starts_with("channel.namespaces[0].name: invalid namespace name")
                    && msg.contains("^[-a-zA-Z0-9_.]{2,}$"),
                "{bad:?}: {msg}"
            );
        }

        let cfg = with_namespace(ChannelOptions {
            history_size: 10,
            ..ChannelOptions::default()
        });
        assert_eq!(
            validation_error(&cfg),
            "channel.namespaces[0].history_ttl: must be set when history_size is set"
        );

        let cfg = with_namespace(ChannelOptions {
            history_ttl: Duration::from_secs(60),
            ..ChannelOptions::default()
        });
        assert_eq!(
            validation_error(&cfg),
            "channel.namespaces[0].history_size: must be set when history_ttl is set"
        );

        let cfg = with_namespace(ChannelOptions {
            force_recovery: true,
            ..ChannelOptions::default()
        });
        assert_eq!(
            validation_error(&cfg),
            "channel.namespaces[0].force_recovery: requires history (history_size and history_ttl)"
        );

        let cfg = with_namespace(ChannelOptions {
            history_size: 1,
            history_ttl: Duration::from_millis(1500),
            ..ChannelOptions::default()
        });
        assert!(
            validation_error(&cfg)
                .starts_with("channel.namespaces[0].history_ttl: 1.5s has sub-second")
        );

        let cfg = with_namespace(ChannelOptions {
            history_size: 1,
            history_ttl: Duration::from_secs(7200),
            history_meta_ttl: Duration::from_secs(3600),
            ..ChannelOptions::default()
        });
        assert_eq!(
            validation_error(&cfg),
            "channel.namespaces[0].history_ttl: must not exceed the history meta TTL (1h)"
        );

        let mut cfg = Config::default();
        cfg.channel.without_namespace.history_size = 5;
        assert_eq!(
            validation_error(&cfg),
            "channel.without_namespace.history_ttl: must be set when history_size is set"
        );

        let mut cfg = Config::default();
        cfg.engine.kind = EngineType::Redis;
        cfg.validate()
            .expect("redis with the default address is valid");
        cfg.engine.redis.address = vec!["mysql://127.0.0.1".to_owned()];
        assert_eq!(
            validation_error(&cfg),
            "engine.redis.address: mysql://127.0.0.1: unknown scheme \"mysql\", expected redis://, rediss:// or redis+sentinel://"
        );
        cfg.engine.redis.address = vec!["redis://u:secret@127.0.0.1:6379/x".to_owned()];
        assert_eq!(
            validation_error(&cfg),
            "engine.redis.address: redis://u:<redacted>@127.0.0.1:6379/x: database \"x\" is not a number"
        );
        cfg.engine.redis.address = vec![];
        assert_eq!(
            validation_error(&cfg),
            "engine.redis.address: at least one address is required"
        );
        cfg.engine.redis.address = vec!["127.0.0.1:7000".to_owned()];
        cfg.engine.redis.prefix = "a{b}".to_owned();
        assert!(validation_error(&cfg).starts_with("engine.redis.prefix: "));
        cfg.engine.redis.prefix = "herald".to_owned();
        cfg.engine.redis.io_timeout = Duration::ZERO;
        assert_eq!(
            validation_error(&cfg),
            "engine.redis.io_timeout: must be greater than 0"
        );
        cfg.engine.redis.io_timeout = Duration::from_secs(1);

        // Presence: the refresh must come before the entries lapse.
        cfg.engine.redis.presence_ttl = Duration::from_secs(20);
        cfg.client.presence_update_interval = Duration::from_secs(20);
        assert_eq!(
            validation_error(&cfg),
            "client.presence_update_interval: must be shorter than the presence TTL (20s, engine.redis.presence_ttl), or presence entries lapse between two refreshes"
        );
        cfg.client.presence_update_interval = Duration::from_secs(5);
        cfg.validate()
            .expect("a 5s refresh of 20s entries is valid");
        cfg.engine.kind = EngineType::Memory;
        cfg.client.presence_update_interval = Duration::from_secs(60);
        assert!(validation_error(&cfg).contains("presence TTL (60s)"));
        cfg.engine.kind = EngineType::Redis;
        cfg.client.presence_update_interval = Duration::from_secs(5);

        // TLS: every problem names its key, and no key material is echoed.
        let tls_error = |tls: RedisTlsConfig| {
            let mut cfg = cfg.clone();
            cfg.engine.redis.tls = tls;
            validation_error(&cfg)
        };
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
        assert_eq!(
            tls_error(RedisTlsConfig {
                cert_pem: cert_pem.clone(),
                ..Default::default()
            }),
            "engine.redis.tls.key_pem: is required with cert_pem (the client certificate's private key)"
        );
        assert!(
            tls_error(RedisTlsConfig {
                server_ca_pem: "/no/such/ca.pem".to_owned(),
                ..Default::default()
            })
            .starts_with("engine.redis.tls.server_ca_pem: \"/no/such/ca.pem\" is not PEM text")
        );
        assert!(
            tls_error(RedisTlsConfig {
                server_ca_pem: key_pem.clone(),
                ..Default::default()
            })
            .starts_with("engine.redis.tls.server_ca_pem: no CERTIFICATE block")
        );
        assert!(
            tls_error(RedisTlsConfig {
                server_name: "redis.internal".to_owned(),
                ..Default::default()
            })
            .starts_with("engine.redis.tls.server_name: is not supported")
        );
        let mut with_sentinel_tls = cfg.clone();
        with_sentinel_tls.engine.redis.sentinel_tls.key_pem = key_pem.clone();
        assert!(
            validation_error(&with_sentinel_tls)
                .starts_with("engine.redis.sentinel_tls.cert_pem: ")
        );
        let good = RedisTlsConfig {
            enabled: true,
            cert_pem,
            key_pem: key_pem.clone(),
            server_ca_pem: cert.cert.pem(),
            ..Default::default()
        };
        let material = good.material("engine.redis.tls").unwrap();
        assert!(material.client.is_some() && material.server_ca.is_some());
        assert!(!format!("{good:?}").contains(&key_pem[40..80]));

        let mut cfg = Config::default();
        cfg.log.level = "loud".to_owned();
        assert!(validation_error(&cfg).starts_with("log.level: unknown level \"loud\""));

        let mut cfg = Config::default();
        cfg.uni_grpc.port = cfg.http_server.port;
        assert!(validation_error(&cfg).starts_with("uni_grpc.port: is the main port"));
        cfg.uni_grpc.address = "127.0.0.2".to_owned();
        cfg.validate()
            .expect("another address may use the same port");

        let mut cfg = Config::default();
        cfg.client.max_queue_size = 0;
        assert_eq!(
            validation_error(&cfg),
            "client.queue_max_size: must be greater than 0"
        );

        let mut cfg = Config::default();
        cfg.client.allowed_origins = vec!["https://a".to_owned(), " ".to_owned()];
        assert_eq!(
            validation_error(&cfg),
            "client.allowed_origins[1]: must not be empty"
        );

        let mut cfg = Config::default();
        cfg.websocket.message_size_limit = 0;
        assert_eq!(
            validation_error(&cfg),
            "websocket.message_size_limit: must be greater than 0"
        );

        let mut cfg = Config::default();
        cfg.channel.namespace_boundary.clear();
        assert_eq!(
            validation_error(&cfg),
            "channel.namespace_boundary: must not be empty"
        );

        let mut cfg = Config::default();
        cfg.channel.max_length = 0;
        assert_eq!(
            validation_error(&cfg),
            "channel.max_length: must be greater than 0"
        );

        let mut cfg = Config::default();
        cfg.node.name = " ".to_owned();
        assert_eq!(validation_error(&cfg), "node.name: must not be empty");

        let mut cfg = Config::default();
        cfg.admin.enabled = true;
        assert!(
            validation_error(&cfg).starts_with("admin.password: must be set when admin.enabled"),
            "{}",
            validation_error(&cfg)
        );
        cfg.admin.insecure = true;
        cfg.validate().unwrap();
        cfg.admin.insecure = false;
        cfg.admin.password = "p".to_owned();
        cfg.validate().unwrap();

        // Pings off: pong_timeout is not compared.
        let mut cfg = Config::default();
        cfg.client.ping_interval = Duration::ZERO;
        cfg.validate().unwrap();
    }

    #[test]
    fn load_runs_validation() {
        let err = load_str(
            "json",
            r#"{"channel": {"namespaces": [{"name": "chat"}, {"name": "chat"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "channel.namespaces[1].name: duplicate namespace \"chat\""
        );
    }

    #[test]
    fn durations_parse() {
        let cases: &[(&str, Duration)] = &[
            ("25s", Duration::from_secs(25)),
            ("300ms", Duration::from_millis(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m", Duration::from_secs(60)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("2h45m30.5s", Duration::from_millis(9_930_500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("720h", Duration::from_secs(720 * 3600)),
            ("30", Duration::from_secs(30)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            (" 5s ", Duration::from_secs(5)),
            ("2 days", Duration::from_secs(2 * 86_400)),
        ];
        for (input, expected) in cases {
            assert_eq!(duration::parse(input).as_ref(), Ok(expected), "{input:?}");
        }
        for bad in ["", "abc", "5x", "-1s", "1.2.3s", "s", "5 parsecs"] {
            let err = duration::parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad:?}");
        }

        #[derive(Deserialize)]
        struct D {
            #[serde(with = "duration")]
            d: Duration,
        }
        let read =
            |v: Value| serde_json::from_value::<D>(serde_json::json!({ "d": v })).map(|d| d.d);
        assert_eq!(
            read(serde_json::json!(30)).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            read(serde_json::json!(0.25)).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            read(serde_json::json!("1m")).unwrap(),
            Duration::from_secs(60)
        );
        assert!(read(serde_json::json!(-5)).is_err());
        assert!(read(serde_json::json!(true)).is_err());
    }

    #[test]
    fn durations_format_round_trip() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_micros(15), "15us"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_secs(25), "25s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(3601), "1h1s"),
            (Duration::from_secs(720 * 3600), "720h"),
        ] {
            assert_eq!(duration::format(d), text);
            assert_eq!(duration::parse(text), Ok(d), "{text}");
        }
    }

    #[test]
    fn channel_options_resolution() {
        let mut cfg = expected_example();
        cfg.channel.without_namespace.presence = false;
        cfg.channel.without_namespace.allow_subscribe_for_client = true;
        let chat = cfg.channel_options("chat:room1").unwrap();
        assert!(chat.presence && chat.history_enabled());
        assert!(chat.recovery_possible());
        assert!(std::ptr::eq(
            cfg.channel_options("$chat:secret").unwrap(),
            chat
        ));
        assert!(std::ptr::eq(cfg.channel_options("chat:a:b").unwrap(), chat));
        let plain = cfg.channel_options("news").unwrap();
        assert!(plain.allow_subscribe_for_client && !plain.presence);
        assert!(std::ptr::eq(cfg.channel_options("$news").unwrap(), plain));
        assert!(std::ptr::eq(cfg.channel_options(":news").unwrap(), plain));
        assert!(cfg.channel_options("unknown:room").is_none());
        assert!(cfg.channel_options("$unknown:room").is_none());

        // A custom boundary.
        cfg.channel.namespace_boundary = "/".to_owned();
        assert!(cfg.channel_options("chat/room1").unwrap().presence);
        assert!(std::ptr::eq(
            cfg.channel_options("chat:room1").unwrap(),
            &cfg.channel.without_namespace
        ));
    }

    #[test]
    fn channel_name_helpers() {
        let ch = ChannelConfig::default();
        assert!(ch.is_private("$secret"));
        assert!(!ch.is_private("public"));
        assert!(ch.is_user_limited("dialog#42,43"));
        assert!(ch.user_allowed("dialog#42,43", "43"));
        assert!(!ch.user_allowed("dialog#42,43", "44"));
        assert!(ch.user_allowed("news", "anyone"));
        assert_eq!(ch.namespace_name("$chat:x"), "chat");
        assert_eq!(ch.namespace_name("news"), "");
        let opts = ChannelOptions::default();
        assert_eq!(
            ch.effective_history_meta_ttl(&opts),
            Duration::from_secs(720 * 3600)
        );
    }

    #[test]
    fn subscription_token_config_follows_enabled() {
        let mut client = ClientConfig::default();
        client.token.hmac_secret_key = "conn".to_owned();
        client.subscription_token.token.hmac_secret_key = "sub".to_owned();
        assert_eq!(client.subscription_token_config().hmac_secret_key, "conn");
        client.subscription_token.enabled = true;
        assert_eq!(client.subscription_token_config().hmac_secret_key, "sub");
        assert!(client.token.is_configured());
    }

    #[test]
    fn nbf_leeway_defaults_to_5s_in_both_token_sections_and_takes_whole_seconds() {
        let cfg = Config::default();
        assert_eq!(cfg.client.token.nbf_leeway, Duration::from_secs(5));
        assert_eq!(
            cfg.client.subscription_token.token.nbf_leeway,
            Duration::from_secs(5)
        );
        // A subscription_token section that does not name the key keeps the default.
        let (cfg, warnings) = load_str(
            "json",
            r#"{"client": {"token": {"nbf_leeway": "30s"},
                "subscription_token": {"enabled": true, "hmac_secret_key": "s"}}}"#,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.client.token.nbf_leeway, Duration::from_secs(30));
        assert_eq!(
            cfg.client.subscription_token.token.nbf_leeway,
            Duration::from_secs(5)
        );
        let (cfg, _) = load_env(&[("HERALD_CLIENT_SUBSCRIPTION_TOKEN_NBF_LEEWAY", "0")]).unwrap();
        assert_eq!(
            cfg.client.subscription_token.token.nbf_leeway,
            Duration::ZERO
        );

        let mut cfg = Config::default();
        cfg.client.token.nbf_leeway = Duration::from_millis(1500);
        assert!(
            validation_error(&cfg).starts_with("client.token.nbf_leeway: 1.5s has sub-second"),
            "{}",
            validation_error(&cfg)
        );
    }

    /// A self-signed certificate and its key, as PEM text.
    fn tls_pair() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("rcgen certificate");
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn wrap76(s: &str) -> String {
        let lines: Vec<&str> = s
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        lines.join("\n") + "\n"
    }

    fn tls_error(tls: TlsConfig) -> String {
        assert!(tls.is_on());
        let mut cfg = Config::default();
        cfg.http_server.tls = tls;
        validation_error(&cfg)
    }

    #[test]
    fn tls_cert_pem_and_key_pem_take_pem_text_base64_or_a_path_as_centrifugo() {
        use base64::Engine;
        let (cert, key) = tls_pair();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cert_file = write_temp("crt", &cert);
        let key_file = write_temp("key", &key);
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let expected = TlsConfig {
            cert_pem: cert.clone(),
            key_pem: key.clone(),
            ..TlsConfig::default()
        }
        .identity()
        .unwrap();
        assert_eq!(expected.certs.len(), 1);
        assert_eq!(expected.cert_key, "http_server.tls.cert_pem");
        assert_eq!(expected.key_key, "http_server.tls.key_pem");
        let cases = [
            (cert.clone(), key.clone()),
            (b64(&cert), b64(&key)),
            (path(&cert_file), path(&key_file)),
            // Mixed forms, and surrounding whitespace.
            (format!("  {}\n", path(&cert_file)), b64(&key)),
            // Base64 wrapped at 76 columns, as `base64 cert.pem` prints it.
            (wrap76(&b64(&cert)), b64(&key)),
        ];
        for (cert_pem, key_pem) in cases {
            let tls = TlsConfig {
                cert_pem: cert_pem.clone(),
                key_pem,
                ..TlsConfig::default()
            };
            assert!(
                tls.is_on(),
                "a certificate and key turn TLS on without enabled"
            );
            let id = tls
                .identity()
                .unwrap_or_else(|e| panic!("{cert_pem:?}: {e}"));
            assert_eq!(id.certs, expected.certs);
            assert_eq!(id.key.secret_der(), expected.key.secret_der());
            let mut cfg = Config::default();
            cfg.http_server.tls = tls;
            cfg.validate().unwrap();
        }
        // Herald's aliases, one form each.
        let aliases = [
            TlsConfig {
                cert_pem_file: path(&cert_file),
                key_pem_file: path(&key_file),
                ..TlsConfig::default()
            },
            TlsConfig {
                enabled: true,
                cert_pem_b64: b64(&cert),
                key_pem_b64: b64(&key),
                ..TlsConfig::default()
            },
            TlsConfig {
                cert_pem_file: path(&cert_file),
                key_pem: key.clone(),
                ..TlsConfig::default()
            },
        ];
        for tls in aliases {
            let id = tls.identity().unwrap_or_else(|e| panic!("{tls:?}: {e}"));
            assert_eq!(id.certs, expected.certs);
        }
        // From a config file, with Centrifugo's key names.
        let (cfg, warnings) = load_str(
            "json",
            &serde_json::json!({"http_server": {"tls": {
                "enabled": true, "cert_pem": path(&cert_file), "key_pem": path(&key_file)
            }}})
            .to_string(),
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            cfg.http_server.tls.identity().unwrap().certs,
            expected.certs
        );
        let _ = std::fs::remove_file(cert_file);
        let _ = std::fs::remove_file(key_file);
    }

    #[test]
    fn tls_errors_name_the_key() {
        use base64::Engine;
        let (cert, key) = tls_pair();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let with = |cert_pem: &str, key_pem: &str| TlsConfig {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            ..TlsConfig::default()
        };

        let err = tls_error(with("/nonexistent/dir/cert.pem", &key));
        assert_eq!(
            err,
            "http_server.tls.cert_pem: \"/nonexistent/dir/cert.pem\" is not PEM text, base64 of PEM, \
             or the path of an existing file"
        );
        // A value that may be key material is not echoed.
        let err = tls_error(with(&cert, "c2VjcmV0LWtleS1tYXRlcmlhbA"));
        assert!(
            err.starts_with("http_server.tls.key_pem: not PEM text"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"), "{err}");

        let not_pem = write_temp("txt", "hello");
        let err = tls_error(with(&not_pem.to_string_lossy(), &key));
        assert!(
            err.starts_with("http_server.tls.cert_pem: the file ")
                && err.ends_with("holds no PEM block"),
            "{err}"
        );
        let _ = std::fs::remove_file(not_pem);

        // The wrong kind of block.
        let err = tls_error(with(&key, &key));
        assert!(
            err.starts_with("http_server.tls.cert_pem: inline PEM: no CERTIFICATE block"),
            "{err}"
        );
        let err = tls_error(with(&cert, &b64(&cert)));
        assert!(
            err.starts_with("http_server.tls.key_pem: base64 PEM: no PRIVATE KEY"),
            "{err}"
        );

        // Half a pair, nothing at all, or the same item twice.
        let err = tls_error(with(&cert, ""));
        assert!(
            err.starts_with("http_server.tls.key_pem: TLS is on but no private key"),
            "{err}"
        );
        let err = tls_error(TlsConfig {
            enabled: true,
            ..TlsConfig::default()
        });
        assert!(
            err.starts_with("http_server.tls.cert_pem: TLS is on but no certificate"),
            "{err}"
        );
        let err = tls_error(TlsConfig {
            cert_pem_file: "/x/cert.pem".to_owned(),
            ..with(&cert, &key)
        });
        assert_eq!(
            err,
            "http_server.tls.cert_pem: http_server.tls.cert_pem_file is set too; give the \
             certificate once, in one of them"
        );

        // The aliases keep their single form.
        let err = tls_error(TlsConfig {
            cert_pem_file: cert.clone(),
            key_pem: key.clone(),
            ..TlsConfig::default()
        });
        assert!(
            err.starts_with("http_server.tls.cert_pem_file: cannot read the file"),
            "{err}"
        );
        let err = tls_error(TlsConfig {
            cert_pem_b64: cert.clone(),
            key_pem: key.clone(),
            ..TlsConfig::default()
        });
        assert_eq!(
            err,
            "http_server.tls.cert_pem_b64: not base64 of a PEM block"
        );

        // Off unless enabled or something is given.
        assert!(!TlsConfig::default().is_on());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut cfg = Config::default();
        cfg.client.token.hmac_secret_key = "top-secret-value".to_owned();
        cfg.http_api.key = "api-key-value".to_owned();
        cfg.admin.password = "admin-password-value".to_owned();
        cfg.admin.secret = "admin-secret-value".to_owned();
        cfg.http_server.tls.key_pem = "-----BEGIN PRIVATE KEY-----tls-key-value".to_owned();
        let text = format!("{cfg:?}");
        assert!(!text.contains("tls-key-value"));
        assert!(!text.contains("top-secret-value") && !text.contains("api-key-value"));
        assert!(!text.contains("admin-password-value") && !text.contains("admin-secret-value"));
        assert!(text.contains("<redacted>"));
    }
}
