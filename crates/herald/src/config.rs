//! TEMPORARY minimal configuration (replaced by the full module).
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenConfig {
    pub hmac_secret_key: String,
    pub rsa_public_key: String,
    pub ecdsa_public_key: String,
    pub audience: String,
    pub issuer: String,
}
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SubscriptionTokenConfig {
    pub enabled: bool,
    pub hmac_secret_key: String,
    pub rsa_public_key: String,
    pub ecdsa_public_key: String,
    pub audience: String,
    pub issuer: String,
}
impl SubscriptionTokenConfig {
    pub fn token_config(&self) -> TokenConfig {
        TokenConfig {
            hmac_secret_key: self.hmac_secret_key.clone(),
            rsa_public_key: self.rsa_public_key.clone(),
            ecdsa_public_key: self.ecdsa_public_key.clone(),
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
        }
    }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientConfig {
    pub token: TokenConfig,
    pub subscription_token: SubscriptionTokenConfig,
    pub allowed_origins: Vec<String>,
    pub insecure: bool,
    pub allow_anonymous_connect_without_token: bool,
    #[serde(with = "humantime_serde_secs")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde_secs")]
    pub pong_timeout: Duration,
    pub max_queue_size: usize,
    pub channel_limit: usize,
    pub history_max_publication_limit: usize,
    pub recovery_max_publication_limit: usize,
}
impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            token: Default::default(),
            subscription_token: Default::default(),
            allowed_origins: vec![],
            insecure: false,
            allow_anonymous_connect_without_token: false,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            max_queue_size: 1 << 20,
            channel_limit: 128,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
        }
    }
}
mod humantime_serde_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebsocketConfig {
    pub message_size_limit: usize,
    #[serde(with = "humantime_serde_secs")]
    pub write_timeout: Duration,
}
impl Default for WebsocketConfig {
    fn default() -> Self {
        WebsocketConfig {
            message_size_limit: 65536,
            write_timeout: Duration::from_secs(1),
        }
    }
}
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpApiConfig {
    pub key: String,
    pub insecure: bool,
}
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelOptions {
    pub presence: bool,
    pub join_leave: bool,
    pub force_push_join_leave: bool,
    pub history_size: usize,
    #[serde(with = "humantime_serde_secs")]
    pub history_ttl: Duration,
    #[serde(with = "humantime_serde_secs")]
    pub history_meta_ttl: Duration,
    pub force_recovery: bool,
    pub force_positioning: bool,
    pub allow_subscribe_for_client: bool,
    pub allow_subscribe_for_anonymous: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_history_for_subscriber: bool,
    pub allow_history_for_client: bool,
    pub allow_history_for_anonymous: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_presence_for_client: bool,
    pub allow_presence_for_anonymous: bool,
    pub allow_user_limited_channels: bool,
}
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Namespace {
    pub name: String,
    #[serde(flatten)]
    pub options: ChannelOptions,
}
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ChannelConfig {
    pub without_namespace: ChannelOptions,
    pub namespaces: Vec<Namespace>,
    pub private_prefix: String,
    pub namespace_boundary: String,
    pub user_boundary: String,
    pub user_separator: String,
    pub max_length: usize,
}
impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            without_namespace: Default::default(),
            namespaces: vec![],
            private_prefix: "$".into(),
            namespace_boundary: ":".into(),
            user_boundary: "#".into(),
            user_separator: ",".into(),
            max_length: 255,
        }
    }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpServerConfig {
    pub address: String,
    pub port: u16,
}
impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            address: "127.0.0.1".into(),
            port: 8000,
        }
    }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EnabledFlag {
    pub enabled: bool,
}
impl Default for EnabledFlag {
    fn default() -> Self {
        EnabledFlag { enabled: true }
    }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    pub name: String,
}
impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "herald".into(),
        }
    }
}
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub http_server: HttpServerConfig,
    pub client: ClientConfig,
    pub websocket: WebsocketConfig,
    pub http_api: HttpApiConfig,
    pub channel: ChannelConfig,
    pub health: EnabledFlag,
    pub prometheus: EnabledFlag,
    pub node: NodeConfig,
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);
impl Config {
    pub fn load(path: Option<&std::path::Path>) -> Result<(Config, Vec<String>), ConfigError> {
        let Some(p) = path else {
            return Ok((Config::default(), vec![]));
        };
        let text = std::fs::read_to_string(p).map_err(|e| ConfigError(e.to_string()))?;
        let c: Config = serde_json::from_str(&text).map_err(|e| ConfigError(e.to_string()))?;
        Ok((c, vec![]))
    }
    pub fn channel_options(&self, channel: &str) -> Option<&ChannelOptions> {
        match channel.split_once(&self.channel.namespace_boundary) {
            Some((ns, _)) => self
                .channel
                .namespaces
                .iter()
                .find(|n| n.name == ns)
                .map(|n| &n.options),
            None => Some(&self.channel.without_namespace),
        }
    }
}
