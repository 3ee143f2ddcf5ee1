//! Verification keys from a JWKS endpoint (`client.token.jwks_public_endpoint`): fetched
//! from the configured URL only (never from an address a token names: `jku` and `x5u`
//! are not read), cached by `kid`, fetched again when a token names an unknown `kid` (at
//! most once per `jwks_min_refresh_interval`) or when the cache is older than
//! `jwks_cache_ttl`. A fetch is bounded by `jwks_timeout` and by [`MAX_JWKS_SIZE`]; an
//! endpoint that is slow, down or answers garbage leaves the cached keys in place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use crate::config::TokenConfig;

/// Largest JWKS document read, in bytes.
pub const MAX_JWKS_SIZE: usize = 1024 * 1024;

/// Why a JWKS fetch gave no keys.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The request failed or timed out.
    #[error("request failed: {0}")]
    Request(String),
    /// The endpoint answered a status other than 200.
    #[error("endpoint answered HTTP {0}")]
    Status(u16),
    /// The document is larger than [`MAX_JWKS_SIZE`].
    #[error("document larger than {MAX_JWKS_SIZE} bytes")]
    TooLarge,
    /// The document is not a JWK set.
    #[error("not a JWK set: {0}")]
    Malformed(String),
}

/// One key of the set: the key and the algorithms it verifies.
#[derive(Clone)]
pub(super) struct JwkKey {
    pub key: Arc<DecodingKey>,
    /// The algorithms a token signed with this key may name.
    pub algorithms: &'static [Algorithm],
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, JwkKey>,
    /// When the keys were fetched (successfully).
    fetched: Option<Instant>,
    /// When a fetch was last tried.
    attempted: Option<Instant>,
}

/// The keys of one JWKS endpoint.
pub(super) struct Jwks {
    endpoint: String,
    client: reqwest::Client,
    cache: parking_lot::RwLock<Cache>,
    /// One fetch at a time; the others wait for its outcome.
    fetching: tokio::sync::Mutex<()>,
    cache_ttl: Duration,
    min_refresh_interval: Duration,
}

impl Jwks {
    /// The endpoint of `cfg`, if it has one.
    pub(super) fn new(cfg: &TokenConfig) -> Option<Jwks> {
        if cfg.jwks_public_endpoint.is_empty() {
            return None;
        }
        let client = crate::http_client::builder()
            .timeout(cfg.jwks_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "JWKS client with default settings");
                reqwest::Client::new()
            });
        Some(Jwks {
            endpoint: cfg.jwks_public_endpoint.clone(),
            client,
            cache: parking_lot::RwLock::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
            cache_ttl: cfg.jwks_cache_ttl,
            min_refresh_interval: cfg.jwks_min_refresh_interval,
        })
    }

    /// The key `kid` names: from the cache, or after fetching the set again when the
    /// cache is stale or does not have it (at most once per minimum interval).
    pub(super) async fn key(&self, kid: &str) -> Result<Option<JwkKey>, JwksError> {
        let (cached, stale) = {
            let c = self.cache.read();
            let stale = c.fetched.is_none_or(|at| at.elapsed() >= self.cache_ttl);
            (c.keys.get(kid).cloned(), stale)
        };
        if cached.is_some() && !stale {
            return Ok(cached);
        }
        match self.refresh().await {
            Ok(()) => Ok(self.cache.read().keys.get(kid).cloned()),
            // A stale key still verifies while the endpoint is unreachable.
            Err(_) if cached.is_some() => Ok(cached),
            Err(e) => Err(e),
        }
    }

    /// Fetches the set, unless a fetch was tried within the minimum interval (then the
    /// cache stands; the last fetch's failure is not repeated).
    async fn refresh(&self) -> Result<(), JwksError> {
        let attempted_before = self.cache.read().attempted;
        let _one = self.fetching.lock().await;
        let attempted = self.cache.read().attempted;
        if attempted != attempted_before {
            // Another caller fetched while this one waited: its outcome stands.
            return self.outcome();
        }
        if attempted.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
            return self.outcome();
        }
        self.cache.write().attempted = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(endpoint = %crate::http_client::loggable_url(&self.endpoint), keys = keys.len(), "JWKS fetched");
                let mut c = self.cache.write();
                c.keys = keys;
                c.fetched = c.attempted;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(endpoint = %crate::http_client::loggable_url(&self.endpoint), error = %e, "JWKS fetch failed");
                Err(e)
            }
        }
    }

    /// Whether the last attempt succeeded, as a result.
    fn outcome(&self) -> Result<(), JwksError> {
        let c = self.cache.read();
        if c.fetched.is_some() && c.fetched == c.attempted {
            Ok(())
        } else {
            Err(JwksError::Request("the last fetch failed".into()))
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, JwkKey>, JwksError> {
        let mut response = self
            .client
            .get(&self.endpoint)
            .send()
            .await
            .map_err(|e| JwksError::Request(e.without_url().to_string()))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_SIZE as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| JwksError::Request(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_SIZE {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body)
    }
}

/// The usable keys of a JWK set, by `kid`. Keys without a `kid`, of other types, or for
/// encryption are left out.
pub(super) fn parse(body: &[u8]) -> Result<HashMap<String, JwkKey>, JwksError> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| JwksError::Malformed(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
            continue;
        };
        let algorithms: &'static [Algorithm] = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS256)) => &[Algorithm::RS256],
            (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS384)) => &[Algorithm::RS384],
            (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS512)) => &[Algorithm::RS512],
            (AlgorithmParameters::RSA(_), None) => {
                &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512]
            }
            (AlgorithmParameters::EllipticCurve(ec), alg) => match (ec.curve.clone(), alg) {
                (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => &[Algorithm::ES256],
                (EllipticCurve::P384, None | Some(KeyAlgorithm::ES384)) => &[Algorithm::ES384],
                _ => continue,
            },
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.insert(
            kid,
            JwkKey {
                key: Arc::new(key),
                algorithms,
            },
        );
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_usable_keys_with_a_kid_are_kept() {
        let set = br#"{"keys":[
            {"kty":"RSA","kid":"r1","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"RSA","alg":"RS256","n":"AQAB","e":"AQAB"},
            {"kty":"EC","kid":"e1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"oct","kid":"s1","k":"c2VjcmV0"}
        ]}"#;
        let keys = parse(set).unwrap();
        let mut kids: Vec<&String> = keys.keys().collect();
        kids.sort();
        assert_eq!(kids, ["e1", "r1"], "no kid and symmetric keys are left out");
        assert_eq!(keys["r1"].algorithms, [Algorithm::RS256]);
        assert_eq!(keys["e1"].algorithms, [Algorithm::ES256]);
        assert!(parse(b"<html>").is_err());
        assert!(parse(br#"{"keys":[]}"#).unwrap().is_empty());
    }
}
