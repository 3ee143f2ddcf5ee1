//! TEMPORARY minimal auth (replaced by the full module).
use crate::config::TokenConfig;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(String);
#[derive(Clone)]
pub struct TokenVerifier {
    secret: String,
}
pub struct ConnectClaims {
    pub user: String,
    pub expire_at: Option<i64>,
    pub info: Option<bytes::Bytes>,
    pub channels: Vec<String>,
    pub subs: std::collections::HashMap<String, serde_json::Value>,
    pub meta: Option<serde_json::Value>,
}
pub struct SubscribeClaims {
    pub user: String,
    pub channel: String,
    pub expire_at: Option<i64>,
    pub info: Option<bytes::Bytes>,
}
#[derive(serde::Deserialize, serde::Serialize, Default)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: String,
}
impl TokenVerifier {
    pub fn new(cfg: &TokenConfig) -> Result<Self, AuthError> {
        Ok(TokenVerifier {
            secret: cfg.hmac_secret_key.clone(),
        })
    }
    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.required_spec_claims.clear();
        v.leeway = 0;
        decode::<Claims>(token, &DecodingKey::from_secret(self.secret.as_bytes()), &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let c = self.verify(token)?;
        Ok(ConnectClaims {
            user: c.sub,
            expire_at: c.exp,
            info: None,
            channels: c.channels,
            subs: Default::default(),
            meta: None,
        })
    }
    pub fn verify_subscribe(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        let c = self.verify(token)?;
        Ok(SubscribeClaims {
            user: c.sub,
            channel: c.channel,
            expire_at: c.exp,
            info: None,
        })
    }
}
pub fn make_hs256_token(
    secret: &str,
    user: &str,
    ttl: Option<std::time::Duration>,
    channels: &[String],
) -> String {
    let exp = ttl.map(|t| crate::engine::now_millis() / 1000 + t.as_secs() as i64);
    let c = Claims {
        sub: user.into(),
        exp,
        channels: channels.to_vec(),
        channel: String::new(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &c,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}
pub fn generate_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string() + &uuid::Uuid::new_v4().simple().to_string()
}
