//! Hook calls over HTTP or HTTPS: a JSON POST per event to the proxy's endpoint, answered with
//! `{"result": ...}`, `{"error": ...}` or `{"disconnect": ...}` and status 200.

use http::HeaderMap;

use super::ProxyError;
use super::wire::{Call, Outcome, RequestJson, ResponseJson};
use crate::config::ProxyEndpointConfig;

/// An HTTP proxy's client.
pub(super) struct HttpProxy {
    client: reqwest::Client,
}

impl HttpProxy {
    pub(super) fn new(config: &ProxyEndpointConfig) -> HttpProxy {
        let client = crate::http_client::builder()
            .timeout(config.timeout)
            .build()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "proxy client with default settings");
                reqwest::Client::new()
            });
        HttpProxy { client }
    }

    /// Posts `call` with `headers` and reads the answer.
    pub(super) async fn call(
        &self,
        config: &ProxyEndpointConfig,
        call: &Call<'_>,
        headers: HeaderMap,
    ) -> Result<Outcome, ProxyError> {
        let body = RequestJson::new(call, config.binary_encoding, config.include_connection_meta);
        let response = self
            .client
            .post(&config.endpoint)
            .headers(headers)
            .json(&body)
            .send()
            .await
            .map_err(|e| ProxyError::Request(e.without_url().to_string()))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(ProxyError::Status(response.status().as_u16()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ProxyError::Request(e.without_url().to_string()))?;
        serde_json::from_slice::<ResponseJson>(&bytes)
            .map_err(|e| ProxyError::Malformed(e.to_string()))?
            .outcome()
    }
}
