//! Tokens to credentials.
//!
//! This module verifies the JWTs clients bring — connection tokens and
//! subscription (channel) tokens — and turns their claims into credentials,
//! with Centrifugo's claim names so that tokens minted for Centrifugo work
//! unchanged. Its only I/O is fetching keys from a JWKS endpoint when one is
//! configured ([`jwks`]); its only clock the system time for `exp` and `nbf`.
//!
//! # Verification
//!
//! The token header's `alg` picks the key: `HS256`/`HS384`/`HS512` use
//! `hmac_secret_key` (then each of `hmac_previous_secret_keys`, for rotation), `RS256`/`RS384`/`RS512` use `rsa_public_key`,
//! `ES256`/`ES384` use `ecdsa_public_key` (a P-256 key for ES256, P-384 for
//! ES384). With `jwks_public_endpoint`, an RS or ES token that names a `kid`
//! is verified with that key of the endpoint's set instead. An algorithm whose
//! key is not configured, `none`, and every other algorithm are refused. Then:
//!
//! - `exp`, when present, must be in the future, with no leeway: a token is
//!   expired from the second its `exp` names ([`TokenError::Expired`]). A
//!   token without `exp` does not expire.
//! - `nbf`, when present, must not be more than `nbf_leeway` (default 5 s)
//!   in the future. A token that is not valid yet is reported as
//!   [`TokenError::Expired`], as Centrifugo does: the client answer is the
//!   same (error 109, fetch a new token), whereas an invalid token ends the
//!   connection for good (3500) and the SDKs would never reconnect. The
//!   leeway absorbs clock skew between the backend that mints tokens with
//!   `nbf` = now and Herald; it does not extend `exp`, which stays the
//!   issuer's exact bound on the credentials.
//! - `aud` must contain the configured audience, and `iss` must equal the
//!   configured issuer, when those are configured; otherwise they are not
//!   checked.
//! - `sub` is the user ID; absent or empty means the anonymous user `""`.
//!
//! # Claims read
//!
//! Connection tokens: `sub`, `exp`, `expire_at`, `info`, `b64info`,
//! `channels`, `subs`, `meta`. Subscription tokens: `sub`, `channel`
//! (required), `exp`, `expire_at`, `info`, `b64info`. Other claims are
//! ignored.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::{ClientConfig, TokenConfig};

pub mod jwks;

/// Why a token was refused. The messages are short and safe to log; they do
/// not echo the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token's `exp` has passed, or its `nbf` is still ahead by more than
    /// the leeway. Clients should fetch a new token (error 109).
    #[error("token expired")]
    Expired,
    /// The token is malformed, badly signed, or its claims do not fit.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The key that would verify the token cannot be had now (the JWKS endpoint is
    /// slow, down or answers garbage): a temporary failure, not the token's fault.
    #[error("verification key unavailable: {0}")]
    Unavailable(String),
}

/// A configured key cannot be used. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The PEM (or secret) at `key` is not usable.
    #[error("{key}: {message}")]
    InvalidKey {
        /// The dotted configuration key, e.g. `client.token.rsa_public_key`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The credentials a connection token carries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectClaims {
    /// `sub`: the user ID; `""` for an anonymous user.
    pub user: String,
    /// When the connection's credentials expire, in Unix seconds: the
    /// `expire_at` claim when present, else `exp`. `None` when the connection
    /// does not expire (no `exp` and no `expire_at`, or `expire_at: 0`). The
    /// value may already be past when only `expire_at` is; the caller decides.
    pub expire_at: Option<i64>,
    /// Connection info: the raw JSON of `info`, or the bytes decoded from
    /// `b64info` (which wins when both are present).
    pub info: Option<Bytes>,
    /// `channels`: channels to subscribe the connection to on the server side.
    pub channels: Vec<String>,
    /// `subs`: server-side subscriptions with options, kept as raw JSON per channel.
    pub subs: HashMap<String, Value>,
    /// `meta`: data attached to the connection, not shown to other clients.
    pub meta: Option<Value>,
}

/// The credentials a subscription token carries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubscribeClaims {
    /// `sub`: the user the token was issued to; `""` for anonymous.
    pub user: String,
    /// `channel`: the channel the token grants. The caller checks that it is
    /// the channel being subscribed to.
    pub channel: String,
    /// As [`ConnectClaims::expire_at`], for the subscription.
    pub expire_at: Option<i64>,
    /// Subscription info: raw JSON of `info`, or decoded `b64info`.
    pub info: Option<Bytes>,
}

/// Verifies tokens against one set of keys. Cheap to clone (shared inside),
/// `Send + Sync`.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    hmac: Option<DecodingKey>,
    /// `hmac_previous_secret_keys`: tried when `hmac` does not verify an HS token.
    hmac_previous: Vec<DecodingKey>,
    rsa: Option<DecodingKey>,
    /// The key and the one algorithm its curve allows.
    ecdsa: Option<(DecodingKey, Algorithm)>,
    audience: Option<String>,
    issuer: Option<String>,
    /// `nbf_leeway` in whole seconds: how far ahead `nbf` may be.
    nbf_leeway: i64,
    /// Keys from `jwks_public_endpoint`, by `kid`.
    jwks: Option<jwks::Jwks>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("hmac", &self.inner.hmac.is_some())
            .field("rsa", &self.inner.rsa.is_some())
            .field("ecdsa", &self.inner.ecdsa.as_ref().map(|(_, alg)| *alg))
            .field("audience", &self.inner.audience)
            .field("issuer", &self.inner.issuer)
            .field("nbf_leeway", &self.inner.nbf_leeway)
            .finish()
    }
}

impl TokenVerifier {
    /// Builds a verifier from `client.token`. Errors name the key
    /// (`client.token.rsa_public_key: ...`).
    pub fn new(cfg: &TokenConfig) -> Result<Self, AuthError> {
        Self::with_key_prefix(cfg, "client.token")
    }

    /// Builds the verifier for subscription tokens: from
    /// `client.subscription_token` when it is enabled, else from `client.token`.
    pub fn for_subscriptions(client: &ClientConfig) -> Result<Self, AuthError> {
        if client.subscription_token.enabled {
            Self::with_key_prefix(
                &client.subscription_token.token,
                "client.subscription_token",
            )
        } else {
            Self::new(&client.token)
        }
    }

    /// Builds a verifier from `cfg`, naming keys in errors as `<prefix>.<field>`.
    pub fn with_key_prefix(cfg: &TokenConfig, prefix: &str) -> Result<Self, AuthError> {
        let key_err = |field: &str, message: String| AuthError::InvalidKey {
            key: format!("{prefix}.{field}"),
            message,
        };
        let hmac = (!cfg.hmac_secret_key.is_empty())
            .then(|| DecodingKey::from_secret(cfg.hmac_secret_key.as_bytes()));
        let rsa = if cfg.rsa_public_key.trim().is_empty() {
            None
        } else {
            let pem =
                normalize_pem(&cfg.rsa_public_key).map_err(|m| key_err("rsa_public_key", m))?;
            let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                key_err(
                    "rsa_public_key",
                    format!("not an RSA public key in PEM form: {e}"),
                )
            })?;
            Some(key)
        };
        let ecdsa = if cfg.ecdsa_public_key.trim().is_empty() {
            None
        } else {
            let pem =
                normalize_pem(&cfg.ecdsa_public_key).map_err(|m| key_err("ecdsa_public_key", m))?;
            let key = DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| {
                key_err(
                    "ecdsa_public_key",
                    format!("not an ECDSA public key in PEM form: {e}"),
                )
            })?;
            let alg = ec_curve_algorithm(&key).ok_or_else(|| {
                key_err(
                    "ecdsa_public_key",
                    "not a P-256 or P-384 public key".to_owned(),
                )
            })?;
            Some((key, alg))
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(TokenVerifier {
            inner: Arc::new(Inner {
                hmac,
                hmac_previous: cfg
                    .hmac_previous_secret_keys
                    .iter()
                    .map(|k| DecodingKey::from_secret(k.as_bytes()))
                    .collect(),
                rsa,
                ecdsa,
                audience: non_empty(&cfg.audience),
                issuer: non_empty(&cfg.issuer),
                nbf_leeway: i64::try_from(cfg.nbf_leeway.as_secs()).unwrap_or(i64::MAX),
                jwks: jwks::Jwks::new(cfg),
            }),
        })
    }

    /// Whether any key is configured (a verifier without keys refuses every token).
    pub fn is_configured(&self) -> bool {
        self.inner.hmac.is_some()
            || self.inner.rsa.is_some()
            || self.inner.ecdsa.is_some()
            || self.inner.jwks.is_some()
    }

    /// Verifies a connection token and returns its credentials.
    pub async fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        let claims = self.verify(token).await?;
        let info = claims.info()?;
        Ok(ConnectClaims {
            user: claims.sub.unwrap_or_default(),
            expire_at: expire_at(claims.expire_at, claims.exp),
            info,
            channels: claims.channels.unwrap_or_default(),
            subs: claims.subs.unwrap_or_default(),
            meta: claims.meta.filter(|m| !m.is_null()),
        })
    }

    /// Verifies a subscription token and returns its credentials. The token
    /// must carry a non-empty `channel`; whether it is the channel being
    /// subscribed to is for the caller to check.
    pub async fn verify_subscribe(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        let claims = self.verify(token).await?;
        let channel = match claims.channel.as_deref() {
            Some(c) if !c.is_empty() => c.to_owned(),
            _ => return Err(invalid("missing channel claim")),
        };
        let info = claims.info()?;
        Ok(SubscribeClaims {
            user: claims.sub.unwrap_or_default(),
            channel,
            expire_at: expire_at(claims.expire_at, claims.exp),
            info,
        })
    }

    async fn verify(&self, token: &str) -> Result<RawClaims, TokenError> {
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(invalid(
                "malformed token: expected three dot-separated parts",
            ));
        }
        let header_json =
            decode_b64url(parts[0]).ok_or_else(|| invalid("malformed token header: bad base64"))?;
        let header: RawHeader = serde_json::from_slice(&header_json)
            .map_err(|_| invalid("malformed token header: bad JSON"))?;

        let jwk;
        let (alg, key) = match (&self.inner.jwks, header.kid.as_deref()) {
            (Some(jwks), Some(kid))
                if header.alg.starts_with("RS") || header.alg.starts_with("ES") =>
            {
                let alg = asymmetric_algorithm(&header.alg)?;
                jwk = jwks
                    .key(kid)
                    .await
                    .map_err(|e| TokenError::Unavailable(e.to_string()))?
                    .ok_or_else(|| invalid("unknown key id"))?;
                if !jwk.algorithms.contains(&alg) {
                    return Err(invalid(&format!(
                        "algorithm {alg:?} does not match the key's"
                    )));
                }
                (alg, &*jwk.key)
            }
            _ => self.key_for(&header.alg)?,
        };
        let mut validation = Validation::new(alg);
        // Time, audience and issuer are checked below, with Centrifugo's rules.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;

        let mut decoded = jsonwebtoken::decode::<RawClaims>(token, key, &validation);
        if matches!(&decoded, Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature))
            && matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
        {
            // During a rotation, tokens signed with a previous secret still verify.
            if let Some(ok) = self
                .inner
                .hmac_previous
                .iter()
                .map(|k| jsonwebtoken::decode::<RawClaims>(token, k, &validation))
                .find(Result::is_ok)
            {
                decoded = ok;
            }
        }
        let claims = decoded
            .map_err(|e| invalid(&describe_jwt_error(e.kind())))?
            .claims;

        let now = unix_now();
        if claims.exp.is_some_and(|exp| exp <= now) {
            return Err(TokenError::Expired);
        }
        // Not valid yet: expired, not invalid, so that the client fetches another token
        // (Centrifugo answers the same), with a leeway for clock skew.
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(self.inner.nbf_leeway))
        {
            return Err(TokenError::Expired);
        }
        if let Some(audience) = &self.inner.audience {
            let ok = match &claims.aud {
                Some(OneOrMany::One(a)) => a == audience,
                Some(OneOrMany::Many(list)) => list.iter().any(|a| a == audience),
                None => false,
            };
            if !ok {
                return Err(invalid("audience mismatch"));
            }
        }
        if let Some(issuer) = &self.inner.issuer
            && claims.iss.as_deref() != Some(issuer.as_str())
        {
            return Err(invalid("issuer mismatch"));
        }
        Ok(claims)
    }

    fn key_for(&self, alg: &str) -> Result<(Algorithm, &DecodingKey), TokenError> {
        let no_key = || invalid(&format!("no key for algorithm {alg}"));
        match alg {
            "HS256" | "HS384" | "HS512" => {
                let key = self.inner.hmac.as_ref().ok_or_else(no_key)?;
                let alg = match alg {
                    "HS256" => Algorithm::HS256,
                    "HS384" => Algorithm::HS384,
                    _ => Algorithm::HS512,
                };
                Ok((alg, key))
            }
            "RS256" | "RS384" | "RS512" => {
                let key = self.inner.rsa.as_ref().ok_or_else(no_key)?;
                let alg = match alg {
                    "RS256" => Algorithm::RS256,
                    "RS384" => Algorithm::RS384,
                    _ => Algorithm::RS512,
                };
                Ok((alg, key))
            }
            "ES256" | "ES384" => {
                let (key, key_alg) = self.inner.ecdsa.as_ref().ok_or_else(no_key)?;
                let alg = if alg == "ES256" {
                    Algorithm::ES256
                } else {
                    Algorithm::ES384
                };
                if alg != *key_alg {
                    return Err(invalid(&format!(
                        "algorithm {alg:?} does not match the configured ECDSA key ({key_alg:?})"
                    )));
                }
                Ok((alg, key))
            }
            "none" | "None" | "NONE" => Err(invalid("unsigned tokens (alg none) are not accepted")),
            other => Err(invalid(&format!("unsupported algorithm {other:?}"))),
        }
    }
}

fn invalid(reason: &str) -> TokenError {
    TokenError::Invalid(reason.to_owned())
}

fn describe_jwt_error(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "bad signature".to_owned(),
        ErrorKind::InvalidToken => "malformed token".to_owned(),
        ErrorKind::Base64(_) => "malformed token: bad base64".to_owned(),
        ErrorKind::Json(e) => format!("malformed claims: {e}"),
        ErrorKind::Utf8(_) => "malformed token: not UTF-8".to_owned(),
        ErrorKind::InvalidAlgorithm => "algorithm not accepted".to_owned(),
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            "the configured key cannot verify this token".to_owned()
        }
        other => format!("verification failed: {other:?}"),
    }
}

fn expire_at(expire_at: Option<i64>, exp: Option<i64>) -> Option<i64> {
    match expire_at {
        Some(0) => None,
        Some(at) => Some(at),
        None => exp,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Base64url without padding, as JWT segments are; trailing `=` tolerated.
fn decode_b64url(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()
}

/// Accepts a PEM as written, with its newlines escaped as `\n` (as happens in
/// environment variables), or base64-encoded. Private keys are refused.
fn normalize_pem(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    let pem = if trimmed.starts_with("-----BEGIN") {
        if trimmed.contains('\n') {
            trimmed.to_owned()
        } else {
            trimmed.replace("\\n", "\n")
        }
    } else {
        let compact: String = trimmed.split_whitespace().collect();
        let decoded = STANDARD
            .decode(&compact)
            .or_else(|_| STANDARD_NO_PAD.decode(&compact))
            .map_err(|_| {
                "expected a PEM block (-----BEGIN PUBLIC KEY-----...) or base64-encoded PEM"
                    .to_owned()
            })?;
        let text = String::from_utf8(decoded)
            .map_err(|_| "base64 value does not decode to a PEM block".to_owned())?;
        if !text.trim_start().starts_with("-----BEGIN") {
            return Err("base64 value does not decode to a PEM block".to_owned());
        }
        text
    };
    if pem.contains("PRIVATE KEY-----") {
        return Err("this is a private key; configure the public key".to_owned());
    }
    Ok(pem)
}

/// The ECDSA algorithm `key`'s curve allows: ES256 for P-256, ES384 for P-384.
fn ec_curve_algorithm(key: &DecodingKey) -> Option<Algorithm> {
    // Creating a verifier parses the point for the algorithm's curve; a key on
    // the other curve fails with an invalid-key error.
    [Algorithm::ES256, Algorithm::ES384].into_iter().find(|alg| {
        !matches!(
            jsonwebtoken::crypto::verify("AAAA", b"probe", key, *alg),
            Err(ref e) if matches!(e.kind(), ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidKeyFormat)
        )
    })
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    /// Picks the key of a JWKS set. (`jku` and `x5u`, which would name where to fetch
    /// keys from, are deliberately not read.)
    kid: Option<String>,
}

/// The RS or ES algorithm a token header names.
fn asymmetric_algorithm(alg: &str) -> Result<Algorithm, TokenError> {
    match alg {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        other => Err(invalid(&format!("unsupported algorithm {other:?}"))),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<i64>,
    #[serde(default, deserialize_with = "numeric_date")]
    expire_at: Option<i64>,
    #[serde(default)]
    aud: Option<OneOrMany>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    b64info: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    subs: Option<HashMap<String, Value>>,
    #[serde(default)]
    meta: Option<Value>,
    #[serde(default)]
    channel: Option<String>,
}

impl RawClaims {
    fn info(&self) -> Result<Option<Bytes>, TokenError> {
        if let Some(b64) = self.b64info.as_deref().filter(|s| !s.is_empty()) {
            let bytes = STANDARD
                .decode(b64)
                .or_else(|_| STANDARD_NO_PAD.decode(b64))
                .map_err(|_| invalid("b64info: bad base64"))?;
            return Ok(Some(Bytes::from(bytes)));
        }
        Ok(self
            .info
            .as_ref()
            .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes())))
    }
}

/// A JWT NumericDate: integer or fractional seconds (fractions dropped).
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    let Some(n) = n else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() => Ok(Some(f.floor() as i64)),
        _ => Err(serde::de::Error::custom("time claim out of range")),
    }
}

#[derive(Serialize)]
struct NewTokenClaims<'a> {
    sub: &'a str,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    channels: &'a [String],
}

/// Makes an HS256 connection token for `user` (for `herald gentoken` and
/// tests): `sub`, `iat`, `exp` when `ttl` is given, and `channels` when not
/// empty.
pub fn make_hs256_token(
    secret: &str,
    user: &str,
    ttl: Option<Duration>,
    channels: &[String],
) -> String {
    let now = unix_now();
    let claims = NewTokenClaims {
        sub: user,
        iat: now,
        exp: ttl.map(|t| now.saturating_add(i64::try_from(t.as_secs()).unwrap_or(i64::MAX))),
        channels,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing with an in-memory secret does not fail")
}

/// A fresh random secret: 32 random bytes as 43 URL-safe base64 characters.
/// For the development default of `client.token.hmac_secret_key` and `http_api.key`.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    /// The verifications, awaited on the spot (no JWKS here, so no I/O).
    trait Now {
        fn verify_connect_now(&self, token: &str) -> Result<ConnectClaims, TokenError>;
        fn verify_subscribe_now(&self, token: &str) -> Result<SubscribeClaims, TokenError>;
    }

    impl Now for TokenVerifier {
        fn verify_connect_now(&self, token: &str) -> Result<ConnectClaims, TokenError> {
            runtime().block_on(self.verify_connect(token))
        }
        fn verify_subscribe_now(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
            runtime().block_on(self.verify_subscribe(token))
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    use super::*;
    use serde_json::json;

    // Test-only keys, generated once with `openssl genpkey` for these tests.

    const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQCKDNvDBTrONkkd\n\
YK98/uGGJMS7xc6J/D1hmf4fj1DaR4WEqnHEaOnlBkQ7SK0vZTTDB+WtlUTfAiKo\n\
jqVt6dIWLFgbMryBQO4aXQuGRkWUAVeqyquGFC6zjyLqjZSRe3vLrUE7xl6cx2ks\n\
u09bGJGR7Uu4rEtWp+SeHcldVJuXOkHnZMTCbOL94b5mOQLRiZ80jC44CYaA86Lr\n\
myP/XI8MgS2SEhi7NN1Z9PQxoZgnLM93nbvrUPqsukjMV9JGs2xDr8Xitb+Y50W5\n\
Xq0NouFGeBsPZUqGlor6VRKspaJQ3itUOhcq1erOlHdBPSpV+LF8n4y2mHT1knZE\n\
6KNf05ZzAgMBAAECggEAE/m2VurLzojmXXzfB7wtz+ZEHVOLBkZcb2ID9ncbYOpW\n\
dJLhMWVo6r3UY6upe6EuWEYtQsfFlmtNrowtfdEGmDTEbvMRebZ2fZQXFc/XQ4pK\n\
MClxVk5XT54XlE72P3LZv+gK92ZFzHPCUTmtSuYsMixe95Let+RFXWe7+mhCt0f9\n\
V2MaqqyQZglpxjKQbIGxcyEFzDlQhWuZneWi1FclG9tpYbieiLECzpOhYqZ3ZF69\n\
Nn27+vfSPnRu4k+ggjpz/N+vdfHqDlW91juprzpGdB577fdXXlEosvcJa8eyly+8\n\
k1meAxdlUbrGSU0R0wPsem3Dshvkt3+avS2lhQHaUQKBgQC9WdSe/2mTTiLXi7RF\n\
SHOWiaKo+cd1E0RBF3NVwFCyRTfmcAHoYx2uu7fHp24U3AjOf+ulGNc9ApmXxFGr\n\
PcOfjwyUrYFqsNlsQ0AQQY8yCjwIKjpg7dVVVemw9yUEQRTfjc8hvo/2kWmZYJ42\n\
RAW6PTCUZkgM6E4SICFNup6x6wKBgQC6pGOvJhSxzLCuHoLxH1BYf6cBTwT07Z1E\n\
XO+N1dFgreVw//DQH4UYVLDg4/BYsuGo39wivDyJNFqyMvXaGeQay5e1xD6QINTb\n\
YPfuDp9Qk+sV4So6gxAeElpdLbzqb4EP3ov28UwEWhqyJHORZgwjsz0GTQgd4lXZ\n\
2cY1edCDmQKBgQCmmGuu/K+p8BxNotgYARfZwf0ASMuJoUrzLivGra8SOj5lm/TB\n\
vrr16qlWm2QKLFH/RaNRndp6DliOpCbq0CvWreh2w3VTJogVbdHmu5e+giyxTl4Q\n\
vBBvxWgX0EqcRJqV2lH8sYo+eU/8p3pr6ktTwdSFLLyFxroxzl0e42wOwwKBgQCN\n\
1Vz3ff3d+8oMF520NPKuvhsgkHcY1fVcPS/CXkllqeChVa4fysQu8DUWQcGk9hMs\n\
bSnxr5BlR8bggn94RZKlli/s7nwItRpsuCzQ2IXTCwVsNBcOLgkygQnwo1Bb625t\n\
q9Y7S7VT3VFKLQ8x4BW7j3sBbcqMQzKwgaDxhGejiQKBgQCeNY6rndou6TV+uEmV\n\
PLy7kwS5kY2FaGJDGLJcr19FEIs/0LKFa91+6bt2+xJLVBHc1yu6O4uaxge1FYmz\n\
+w3dFKT0iUXlmTp0bVGdSxOCdiDRcsqaAi2trqs8BxIgWv8dGJ0P7KiGl6crskdV\n\
47AcRDkj+z9LOjzhmVIzU+yBCQ==\n\
-----END PRIVATE KEY-----\n\
";

    const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAigzbwwU6zjZJHWCvfP7h\n\
hiTEu8XOifw9YZn+H49Q2keFhKpxxGjp5QZEO0itL2U0wwflrZVE3wIiqI6lbenS\n\
FixYGzK8gUDuGl0LhkZFlAFXqsqrhhQus48i6o2UkXt7y61BO8ZenMdpLLtPWxiR\n\
ke1LuKxLVqfknh3JXVSblzpB52TEwmzi/eG+ZjkC0YmfNIwuOAmGgPOi65sj/1yP\n\
DIEtkhIYuzTdWfT0MaGYJyzPd52761D6rLpIzFfSRrNsQ6/F4rW/mOdFuV6tDaLh\n\
RngbD2VKhpaK+lUSrKWiUN4rVDoXKtXqzpR3QT0qVfixfJ+Mtph09ZJ2ROijX9OW\n\
cwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

    const EC256_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgtmH5i591wn50yEXA\n\
EG3IJnFwqYVctrRKAJYC1uFXkPqhRANCAASoxu10dO2YMiCbmw1hG6dosBV3+bzu\n\
8zV6Om7RGMtGxFX9waaNjwRm6N9zyevriVoGT8M+uCNi5PZXwvwIni7q\n\
-----END PRIVATE KEY-----\n\
";

    const EC256_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqMbtdHTtmDIgm5sNYRunaLAVd/m8\n\
7vM1ejpu0RjLRsRV/cGmjY8EZujfc8nr64laBk/DPrgjYuT2V8L8CJ4u6g==\n\
-----END PUBLIC KEY-----\n\
";

    const EC384_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDC7O+s8hEX1jFBT8lYx\n\
TWRiGB51dCjJp0a+DEhwo/GCWQSPSkBJxpuqsgMVy+mHrOehZANiAARhHBGobG6w\n\
8X0q8KBgGdd8my7oHlcuYSK2fo52HC8lMPxkdfVpZzSSOGdWNcgKhA3K9SDpb6Xk\n\
F2xfIzdMSlsU0SP7TGljygf3QGJns3XqwmYfuRL4Dv5q3wbLuYZgsTU=\n\
-----END PRIVATE KEY-----\n\
";

    const EC384_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEYRwRqGxusPF9KvCgYBnXfJsu6B5XLmEi\n\
tn6OdhwvJTD8ZHX1aWc0kjhnVjXICoQNyvUg6W+l5BdsXyM3TEpbFNEj+0xpY8oH\n\
90BiZ7N16sJmH7kS+A7+at8Gy7mGYLE1\n\
-----END PUBLIC KEY-----\n\
";

    const SECRET: &str = "test-secret";

    fn hmac_cfg() -> TokenConfig {
        TokenConfig {
            hmac_secret_key: SECRET.to_owned(),
            ..TokenConfig::default()
        }
    }

    fn verifier(cfg: &TokenConfig) -> TokenVerifier {
        TokenVerifier::new(cfg).expect("valid test config")
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign test token")
    }

    fn hs256(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            claims,
        )
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn invalid_reason(err: TokenError) -> String {
        match err {
            TokenError::Invalid(reason) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn valid_hs256_connect_token() {
        let exp = unix_now() + 3600;
        let token = hs256(&json!({"sub": "42", "exp": exp}));
        let claims = verifier(&hmac_cfg()).verify_connect_now(&token).unwrap();
        assert_eq!(claims.user, "42");
        assert_eq!(claims.expire_at, Some(exp));
        assert_eq!(claims.info, None);
        assert!(claims.channels.is_empty());
        assert!(claims.subs.is_empty());
        assert_eq!(claims.meta, None);
    }

    #[test]
    fn previous_hmac_secrets_verify_during_a_rotation() {
        let old = |claims: &Value| {
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"old-secret"),
                claims,
            )
        };
        let rotating = verifier(&TokenConfig {
            hmac_previous_secret_keys: vec!["older".into(), "old-secret".into()],
            ..hmac_cfg()
        });
        let claims = rotating
            .verify_connect_now(&old(&json!({"sub": "7"})))
            .unwrap();
        assert_eq!(claims.user, "7");
        assert_eq!(
            rotating
                .verify_connect_now(&hs256(&json!({"sub": "8"})))
                .unwrap()
                .user,
            "8",
            "the current secret still verifies"
        );
        let reason = invalid_reason(
            verifier(&hmac_cfg())
                .verify_connect_now(&old(&json!({"sub": "7"})))
                .unwrap_err(),
        );
        assert_eq!(reason, "bad signature", "without the old secret configured");
    }

    #[test]
    fn hs384_and_hs512_use_the_hmac_secret() {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let token = sign(alg, &key, &json!({"sub": "u"}));
            assert_eq!(
                verifier(&hmac_cfg())
                    .verify_connect_now(&token)
                    .unwrap()
                    .user,
                "u"
            );
        }
    }

    #[test]
    fn missing_sub_is_anonymous_and_no_exp_never_expires() {
        let token = hs256(&json!({}));
        let claims = verifier(&hmac_cfg()).verify_connect_now(&token).unwrap();
        assert_eq!(claims.user, "");
        assert_eq!(claims.expire_at, None);
    }

    #[test]
    fn expired_token() {
        let token = hs256(&json!({"sub": "42", "exp": unix_now() - 10}));
        let err = verifier(&hmac_cfg())
            .verify_connect_now(&token)
            .unwrap_err();
        assert!(matches!(err, TokenError::Expired), "{err:?}");
        assert_eq!(err.to_string(), "token expired");
    }

    #[test]
    fn nbf_in_the_future_is_expired_not_invalid() {
        // Beyond the default leeway: connection and subscription tokens alike are
        // "expired" (error 109, fetch a new token), not invalid (3500, never reconnect).
        let v = verifier(&hmac_cfg());
        let far = unix_now() + 600;
        let err = v
            .verify_connect_now(&hs256(&json!({"sub": "42", "nbf": far})))
            .unwrap_err();
        assert!(matches!(err, TokenError::Expired), "{err:?}");
        let err = v
            .verify_subscribe_now(&hs256(&json!({"channel": "$c", "nbf": far})))
            .unwrap_err();
        assert!(matches!(err, TokenError::Expired), "{err:?}");
        // Even with an exp far ahead.
        let err = v
            .verify_connect_now(&hs256(&json!({"nbf": far, "exp": far + 3600})))
            .unwrap_err();
        assert!(matches!(err, TokenError::Expired), "{err:?}");
    }

    #[test]
    fn nbf_leeway_absorbs_clock_skew() {
        let now = unix_now();
        // The default leeway (5 s): nbf 3 s ahead passes, 30 s ahead does not.
        assert_eq!(TokenConfig::default().nbf_leeway, Duration::from_secs(5));
        let v = verifier(&hmac_cfg());
        let skewed = hs256(&json!({"sub": "42", "nbf": now + 3}));
        assert_eq!(v.verify_connect_now(&skewed).unwrap().user, "42");
        let sub_skewed = hs256(&json!({"channel": "$c", "nbf": now + 3}));
        assert_eq!(v.verify_subscribe_now(&sub_skewed).unwrap().channel, "$c");
        assert!(matches!(
            v.verify_connect_now(&hs256(&json!({"nbf": now + 30}))),
            Err(TokenError::Expired)
        ));
        // nbf in the past or now always passes.
        v.verify_connect_now(&hs256(&json!({"nbf": now}))).unwrap();
        v.verify_connect_now(&hs256(&json!({"nbf": now - 60})))
            .unwrap();

        // A leeway of 0 checks nbf strictly; a larger one lets nbf 30 s ahead through.
        let strict = verifier(&TokenConfig {
            nbf_leeway: Duration::ZERO,
            ..hmac_cfg()
        });
        assert!(matches!(
            strict.verify_connect_now(&hs256(&json!({"nbf": now + 3}))),
            Err(TokenError::Expired)
        ));
        let lenient = verifier(&TokenConfig {
            nbf_leeway: Duration::from_secs(60),
            ..hmac_cfg()
        });
        lenient
            .verify_connect_now(&hs256(&json!({"nbf": now + 30})))
            .unwrap();

        // The leeway does not apply to exp: expired a second ago is expired.
        let expired = hs256(&json!({"exp": now - 1}));
        assert!(matches!(
            lenient.verify_connect_now(&expired),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn subscription_tokens_use_their_own_leeway_when_enabled() {
        let mut client = ClientConfig {
            token: hmac_cfg(),
            ..ClientConfig::default()
        };
        client.subscription_token.enabled = true;
        client.subscription_token.token = TokenConfig {
            nbf_leeway: Duration::ZERO,
            ..hmac_cfg()
        };
        let token = hs256(&json!({"channel": "$c", "nbf": unix_now() + 3}));
        let v = TokenVerifier::for_subscriptions(&client).unwrap();
        assert!(matches!(
            v.verify_subscribe_now(&token),
            Err(TokenError::Expired)
        ));
        client.subscription_token.enabled = false;
        let v = TokenVerifier::for_subscriptions(&client).unwrap();
        assert_eq!(v.verify_subscribe_now(&token).unwrap().channel, "$c");
    }

    #[test]
    fn forged_signature() {
        let other = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another-secret"),
            &json!({"sub": "42"}),
        );
        let reason = invalid_reason(
            verifier(&hmac_cfg())
                .verify_connect_now(&other)
                .unwrap_err(),
        );
        assert_eq!(reason, "bad signature");

        // A valid token whose claims were swapped after signing.
        let genuine = hs256(&json!({"sub": "42"}));
        let parts: Vec<&str> = genuine.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64(r#"{"sub":"admin"}"#), parts[2]);
        let reason = invalid_reason(
            verifier(&hmac_cfg())
                .verify_connect_now(&tampered)
                .unwrap_err(),
        );
        assert_eq!(reason, "bad signature");
    }

    #[test]
    fn malformed_tokens() {
        let v = verifier(&hmac_cfg());
        let cases = [
            ("", "three dot-separated parts"),
            ("abc", "three dot-separated parts"),
            ("a.b", "three dot-separated parts"),
            ("a.b.c.d", "three dot-separated parts"),
            ("!!!.e30.sig", "header: bad base64"),
            (&format!("{}.e30.sig", b64("not json")), "header: bad JSON"),
        ];
        for (token, expected) in cases {
            let reason = invalid_reason(v.verify_connect_now(token).unwrap_err());
            assert!(reason.contains(expected), "{token:?}: {reason}");
        }
        // Signed claims that are not JSON.
        let header = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = b64("not json");
        let sig = jsonwebtoken::crypto::sign(
            format!("{header}.{payload}").as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        let reason = invalid_reason(
            v.verify_connect_now(&format!("{header}.{payload}.{sig}"))
                .unwrap_err(),
        );
        assert!(reason.contains("malformed claims"), "{reason}");
    }

    #[test]
    fn alg_none_is_refused() {
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"42"}"#)
        );
        let reason = invalid_reason(
            verifier(&hmac_cfg())
                .verify_connect_now(&token)
                .unwrap_err(),
        );
        assert!(reason.contains("alg none"), "{reason}");
    }

    #[test]
    fn algorithm_without_key_is_refused() {
        // An RS256 token against a verifier with only an HMAC secret.
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let token = sign(Algorithm::RS256, &rsa, &json!({"sub": "42"}));
        let reason = invalid_reason(
            verifier(&hmac_cfg())
                .verify_connect_now(&token)
                .unwrap_err(),
        );
        assert_eq!(reason, "no key for algorithm RS256");

        // Key confusion: an HS256 token "signed" with the RSA public key as the
        // secret, against a verifier with only the RSA key.
        let cfg = TokenConfig {
            rsa_public_key: RSA_PUBLIC.to_owned(),
            ..TokenConfig::default()
        };
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            &json!({"sub": "42"}),
        );
        let reason = invalid_reason(verifier(&cfg).verify_connect_now(&forged).unwrap_err());
        assert_eq!(reason, "no key for algorithm HS256");

        let ps = format!("{}.{}.sig", b64(r#"{"alg":"EdDSA"}"#), b64("{}"));
        let reason = invalid_reason(verifier(&hmac_cfg()).verify_connect_now(&ps).unwrap_err());
        assert!(reason.contains("unsupported algorithm"), "{reason}");
    }

    #[test]
    fn rs256_token() {
        let cfg = TokenConfig {
            rsa_public_key: RSA_PUBLIC.to_owned(),
            ..TokenConfig::default()
        };
        let v = verifier(&cfg);
        assert!(v.is_configured());
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
            let token = sign(alg, &rsa, &json!({"sub": "rsa-user"}));
            assert_eq!(v.verify_connect_now(&token).unwrap().user, "rsa-user");
        }
        // The same key with escaped newlines (as from an environment variable)
        // and base64-encoded.
        for pem in [RSA_PUBLIC.replace('\n', "\\n"), STANDARD.encode(RSA_PUBLIC)] {
            let cfg = TokenConfig {
                rsa_public_key: pem,
                ..TokenConfig::default()
            };
            let token = sign(Algorithm::RS256, &rsa, &json!({"sub": "x"}));
            assert_eq!(verifier(&cfg).verify_connect_now(&token).unwrap().user, "x");
        }
    }

    #[test]
    fn es256_and_es384_tokens() {
        let es256 = EncodingKey::from_ec_pem(EC256_PRIVATE.as_bytes()).unwrap();
        let es384 = EncodingKey::from_ec_pem(EC384_PRIVATE.as_bytes()).unwrap();
        let p256 = verifier(&TokenConfig {
            ecdsa_public_key: EC256_PUBLIC.to_owned(),
            ..TokenConfig::default()
        });
        let p384 = verifier(&TokenConfig {
            ecdsa_public_key: EC384_PUBLIC.to_owned(),
            ..TokenConfig::default()
        });
        let t256 = sign(Algorithm::ES256, &es256, &json!({"sub": "ec"}));
        let t384 = sign(Algorithm::ES384, &es384, &json!({"sub": "ec384"}));
        assert_eq!(p256.verify_connect_now(&t256).unwrap().user, "ec");
        assert_eq!(p384.verify_connect_now(&t384).unwrap().user, "ec384");
        let reason = invalid_reason(p256.verify_connect_now(&t384).unwrap_err());
        assert!(reason.contains("does not match"), "{reason}");

        // An ES256 token signed by another P-256 key (the header claims ES256).
        let mut forged: Vec<String> = t256.split('.').map(str::to_owned).collect();
        let other = sign(Algorithm::ES256, &es256, &json!({"sub": "someone-else"}));
        forged[1] = other.split('.').nth(1).unwrap().to_owned();
        let reason = invalid_reason(p256.verify_connect_now(&forged.join(".")).unwrap_err());
        assert_eq!(reason, "bad signature");
    }

    #[test]
    fn bad_keys_name_the_key() {
        let err = TokenVerifier::new(&TokenConfig {
            rsa_public_key: "not a pem".to_owned(),
            ..TokenConfig::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with("client.token.rsa_public_key: "),
            "{err}"
        );

        let err = TokenVerifier::new(&TokenConfig {
            ecdsa_public_key: RSA_PUBLIC.to_owned(),
            ..TokenConfig::default()
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("client.token.ecdsa_public_key: "),
            "{err}"
        );

        let err = TokenVerifier::new(&TokenConfig {
            rsa_public_key: RSA_PRIVATE.to_owned(),
            ..TokenConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");

        let mut client = ClientConfig::default();
        client.subscription_token.enabled = true;
        client.subscription_token.token.ecdsa_public_key = "garbage".to_owned();
        let err = TokenVerifier::for_subscriptions(&client).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("client.subscription_token.ecdsa_public_key: "),
            "{err}"
        );
    }

    #[test]
    fn unconfigured_verifier_refuses_everything() {
        let v = verifier(&TokenConfig::default());
        assert!(!v.is_configured());
        let reason = invalid_reason(v.verify_connect_now(&hs256(&json!({}))).unwrap_err());
        assert_eq!(reason, "no key for algorithm HS256");
    }

    #[test]
    fn info_and_b64info() {
        let v = verifier(&hmac_cfg());
        let token = hs256(&json!({"sub": "1", "info": {"name": "Alice", "tags": [1, 2]}}));
        let info = v.verify_connect_now(&token).unwrap().info.unwrap();
        let parsed: Value = serde_json::from_slice(&info).unwrap();
        assert_eq!(parsed, json!({"name": "Alice", "tags": [1, 2]}));

        let token = hs256(&json!({"sub": "1", "b64info": STANDARD.encode(b"\x00\x01binary")}));
        let info = v.verify_connect_now(&token).unwrap().info.unwrap();
        assert_eq!(&info[..], b"\x00\x01binary");

        // b64info wins over info.
        let token = hs256(&json!({"info": {"a": 1}, "b64info": STANDARD.encode("raw")}));
        assert_eq!(
            &v.verify_connect_now(&token).unwrap().info.unwrap()[..],
            b"raw"
        );

        let token = hs256(&json!({"b64info": "%%%"}));
        let reason = invalid_reason(v.verify_connect_now(&token).unwrap_err());
        assert_eq!(reason, "b64info: bad base64");
    }

    #[test]
    fn channels_subs_and_meta() {
        let token = hs256(&json!({
            "sub": "1",
            "channels": ["news", "chat:lobby"],
            "subs": {"personal#1": {"data": {"x": 1}}},
            "meta": {"plan": "pro"},
        }));
        let claims = verifier(&hmac_cfg()).verify_connect_now(&token).unwrap();
        assert_eq!(claims.channels, vec!["news", "chat:lobby"]);
        assert_eq!(claims.subs["personal#1"], json!({"data": {"x": 1}}));
        assert_eq!(claims.meta, Some(json!({"plan": "pro"})));

        let token = hs256(&json!({"channels": "news"}));
        let reason = invalid_reason(
            verifier(&hmac_cfg())
                .verify_connect_now(&token)
                .unwrap_err(),
        );
        assert!(reason.starts_with("malformed claims"), "{reason}");
    }

    #[test]
    fn expire_at_overrides_exp() {
        let v = verifier(&hmac_cfg());
        let now = unix_now();
        let both = hs256(&json!({"exp": now + 100, "expire_at": now + 50}));
        assert_eq!(
            v.verify_connect_now(&both).unwrap().expire_at,
            Some(now + 50)
        );
        let never = hs256(&json!({"exp": now + 100, "expire_at": 0}));
        assert_eq!(v.verify_connect_now(&never).unwrap().expire_at, None);
        let only_exp = hs256(&json!({"exp": now + 100}));
        assert_eq!(
            v.verify_connect_now(&only_exp).unwrap().expire_at,
            Some(now + 100)
        );
        let float_exp = hs256(&json!({"exp": (now + 100) as f64 + 0.5}));
        assert_eq!(
            v.verify_connect_now(&float_exp).unwrap().expire_at,
            Some(now + 100)
        );
        // expire_at does not make an expired token valid.
        let expired = hs256(&json!({"exp": now - 1, "expire_at": now + 100}));
        assert!(matches!(
            v.verify_connect_now(&expired),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn audience_and_issuer() {
        let cfg = TokenConfig {
            audience: "herald".to_owned(),
            issuer: "https://auth.example.com".to_owned(),
            ..hmac_cfg()
        };
        let v = verifier(&cfg);
        let iss = "https://auth.example.com";
        for ok in [
            json!({"aud": "herald", "iss": iss}),
            json!({"aud": ["other", "herald"], "iss": iss}),
        ] {
            v.verify_connect_now(&hs256(&ok)).unwrap();
        }
        for (claims, reason) in [
            (json!({"aud": "other", "iss": iss}), "audience mismatch"),
            (json!({"iss": iss}), "audience mismatch"),
            (json!({"aud": "herald", "iss": "evil"}), "issuer mismatch"),
            (json!({"aud": "herald"}), "issuer mismatch"),
        ] {
            let got = invalid_reason(v.verify_connect_now(&hs256(&claims)).unwrap_err());
            assert_eq!(got, reason, "{claims}");
        }
        // Without configured audience/issuer the claims are not checked.
        verifier(&hmac_cfg())
            .verify_connect_now(&hs256(&json!({"aud": "anything", "iss": "anyone"})))
            .unwrap();
    }

    #[test]
    fn subscription_tokens() {
        let v = verifier(&hmac_cfg());
        let now = unix_now();
        let token = hs256(&json!({
            "sub": "42", "channel": "$gossips", "exp": now + 60, "info": {"role": "mod"}
        }));
        let claims = v.verify_subscribe_now(&token).unwrap();
        assert_eq!(claims.user, "42");
        assert_eq!(claims.channel, "$gossips");
        assert_eq!(claims.expire_at, Some(now + 60));
        assert_eq!(&claims.info.unwrap()[..], br#"{"role":"mod"}"#);

        for claims in [json!({"sub": "42"}), json!({"sub": "42", "channel": ""})] {
            let reason = invalid_reason(v.verify_subscribe_now(&hs256(&claims)).unwrap_err());
            assert_eq!(reason, "missing channel claim");
        }
        let expired = hs256(&json!({"channel": "$x", "exp": now - 5}));
        assert!(matches!(
            v.verify_subscribe_now(&expired),
            Err(TokenError::Expired)
        ));
    }

    #[test]
    fn subscription_verifier_follows_the_enabled_flag() {
        let mut client = ClientConfig {
            token: hmac_cfg(),
            ..ClientConfig::default()
        };
        client.subscription_token.token.hmac_secret_key = "sub-secret".to_owned();
        let token = hs256(&json!({"channel": "$c"}));
        // Disabled: client.token's keys.
        let v = TokenVerifier::for_subscriptions(&client).unwrap();
        assert_eq!(v.verify_subscribe_now(&token).unwrap().channel, "$c");
        // Enabled: only the subscription keys.
        client.subscription_token.enabled = true;
        let v = TokenVerifier::for_subscriptions(&client).unwrap();
        assert!(v.verify_subscribe_now(&token).is_err());
        let sub_token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"sub-secret"),
            &json!({"channel": "$c"}),
        );
        assert_eq!(v.verify_subscribe_now(&sub_token).unwrap().channel, "$c");
    }

    #[test]
    fn gentoken_round_trip() {
        let channels = vec!["news".to_owned()];
        let token = make_hs256_token(SECRET, "alice", Some(Duration::from_secs(3600)), &channels);
        let claims = verifier(&hmac_cfg()).verify_connect_now(&token).unwrap();
        assert_eq!(claims.user, "alice");
        assert_eq!(claims.channels, channels);
        let exp = claims.expire_at.unwrap();
        assert!((exp - unix_now() - 3600).abs() <= 2, "{exp}");

        let forever = make_hs256_token(SECRET, "", None, &[]);
        let claims = verifier(&hmac_cfg()).verify_connect_now(&forever).unwrap();
        assert_eq!(claims.expire_at, None);
        assert!(claims.channels.is_empty());
    }

    #[test]
    fn generated_secrets_are_long_random_and_url_safe() {
        let a = generate_secret();
        let b = generate_secret();
        assert!(a.len() >= 32);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }

    #[test]
    fn verifier_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<TokenVerifier>();
        let v = verifier(&hmac_cfg());
        let v2 = v.clone();
        assert!(Arc::ptr_eq(&v.inner, &v2.inner));
        assert!(!format!("{v:?}").contains(SECRET));
    }
}
