//! Calls to the application's backend (proxy hooks) over HTTP, in Centrifugo v6's wire
//! shapes so that backends written for Centrifugo work unchanged: a JSON POST per event,
//! answered with `{"result": ...}`, `{"error": {code, message}}` or
//! `{"disconnect": {code, reason}}`.
//!
//! Every call is bounded: by the endpoint's `timeout`, and by `client.proxy.max_in_flight`
//! calls per node, beyond which a call waits (within its timeout) for a free slot. A backend that
//! fails, answers garbage or is too slow gives the caller a [`ProxyError`], which the
//! session turns into the temporary internal error (100), never a hang.
//!
//! Only `connect` is proxied so far, over plain HTTP (`https://` endpoints are refused when
//! the configuration is checked).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::config::{Config, ProxyEndpointConfig};
use crate::error::{ClientError, Disconnect};
use crate::protocol::Encoding;

/// Why a proxy call gave no answer the client can be told.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No answer within the endpoint's timeout (or no free slot in that time).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request failed (connection refused, reset, bad URL).
    #[error("request failed: {0}")]
    Request(String),
    /// The backend answered with a status other than 200.
    #[error("backend answered HTTP {0}")]
    Status(u16),
    /// The body is not a response of the expected shape.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// The proxies a node calls, built once from the configuration.
pub struct Proxies {
    connect: Option<HttpProxy>,
}

struct HttpProxy {
    client: reqwest::Client,
    config: ProxyEndpointConfig,
    slots: Arc<Semaphore>,
}

/// A client's connect, as sent to the connect proxy.
pub struct ConnectCall<'a> {
    /// The client id Herald gave the connection.
    pub client: &'a str,
    /// The transport's name (`websocket`, `sse`, ...).
    pub transport: &'static str,
    /// The connection's encoding.
    pub encoding: Encoding,
    /// `name` and `version` from the client's connect command.
    pub name: &'a str,
    /// See `name`.
    pub version: &'a str,
    /// `data` from the client's connect command.
    pub data: &'a Bytes,
    /// `headers` from the client's connect command (headers emulation).
    pub emulated: &'a HashMap<String, String>,
    /// The client's HTTP request headers, already limited to those the transport keeps.
    pub headers: &'a HeaderMap,
}

/// What the backend decided about a connect.
#[derive(Debug, PartialEq)]
pub enum ConnectOutcome {
    /// Accepted, as this user.
    Accept(ConnectGrant),
    /// Refused with an error reply (`error` in the response).
    Refuse(ClientError),
    /// Refused by closing the connection (`disconnect` in the response).
    Disconnect(Disconnect),
}

/// An accepted connect.
#[derive(Debug, Default, PartialEq)]
pub struct ConnectGrant {
    /// The user id; empty for anonymous.
    pub user: String,
    /// When the connection expires (Unix seconds); `None`: never.
    pub expire_at: Option<i64>,
    /// Connection info (raw JSON, or decoded `b64info`).
    pub info: Bytes,
    /// Data for the client's connect reply (raw JSON, or decoded `b64data`).
    pub data: Bytes,
    /// Server-side channels to subscribe the connection to.
    pub channels: Vec<String>,
}

#[derive(Serialize)]
struct ConnectRequestBody<'a> {
    client: &'a str,
    transport: &'a str,
    protocol: &'a str,
    encoding: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
}

#[derive(Deserialize)]
struct Response<R> {
    result: Option<R>,
    error: Option<ErrorBody>,
    disconnect: Option<DisconnectBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(Deserialize)]
struct DisconnectBody {
    code: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct ConnectResultBody {
    #[serde(default)]
    user: String,
    #[serde(default)]
    expire_at: i64,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
}

impl Proxies {
    /// The proxies `config` enables.
    pub fn new(config: &Config) -> Proxies {
        let connect = &config.client.proxy.connect;
        Proxies {
            connect: connect
                .enabled
                .then(|| HttpProxy::new(connect.clone(), config.client.proxy.max_in_flight)),
        }
    }

    /// Whether connects without a token go to the backend.
    pub fn connect_enabled(&self) -> bool {
        self.connect.is_some()
    }

    /// The names of the client's HTTP request headers some proxy forwards (lowercase):
    /// what a transport keeps of the request for the session.
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &str> {
        self.connect
            .iter()
            .flat_map(|p| p.config.http_headers.iter().map(String::as_str))
    }

    /// Asks the backend about a connect without a token. `None` when the connect proxy is
    /// off.
    pub async fn connect(
        &self,
        call: ConnectCall<'_>,
    ) -> Option<Result<ConnectOutcome, ProxyError>> {
        let proxy = self.connect.as_ref()?;
        let (data, b64data) = payload(call.encoding, call.data);
        let body = ConnectRequestBody {
            client: call.client,
            transport: call.transport,
            protocol: protocol_name(call.encoding),
            encoding: encoding_name(call.encoding),
            name: call.name,
            version: call.version,
            data: data.as_deref(),
            b64data,
        };
        let answer = proxy
            .call::<_, ConnectResultBody>(&body, call.headers, call.emulated)
            .await;
        Some(answer.and_then(|r| match r {
            Answer::Result(r) => Ok(ConnectOutcome::Accept(ConnectGrant {
                user: r.user,
                expire_at: (r.expire_at > 0).then_some(r.expire_at),
                info: binary_or_json(r.info, r.b64info, "b64info")?,
                data: binary_or_json(r.data, r.b64data, "b64data")?,
                channels: r.channels,
            })),
            Answer::Error(e) => Ok(ConnectOutcome::Refuse(e)),
            Answer::Disconnect(d) => Ok(ConnectOutcome::Disconnect(d)),
        }))
    }
}

enum Answer<R> {
    Result(R),
    Error(ClientError),
    Disconnect(Disconnect),
}

impl HttpProxy {
    fn new(config: ProxyEndpointConfig, max_in_flight: usize) -> HttpProxy {
        let builder = reqwest::Client::builder().timeout(config.timeout);
        let client = builder.build().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "proxy client with default settings");
            reqwest::Client::new()
        });
        HttpProxy {
            client,
            config,
            slots: Arc::new(Semaphore::new(max_in_flight)),
        }
    }

    async fn call<B: Serialize, R: for<'de> Deserialize<'de>>(
        &self,
        body: &B,
        headers: &HeaderMap,
        emulated: &HashMap<String, String>,
    ) -> Result<Answer<R>, ProxyError> {
        let timeout = self.config.timeout;
        let work = async {
            let _slot = self.slots.acquire().await;
            let response = self
                .client
                .post(&self.config.endpoint)
                .headers(self.headers(headers, emulated))
                .json(body)
                .send()
                .await
                .map_err(|e| ProxyError::Request(e.to_string()))?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(ProxyError::Status(response.status().as_u16()));
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| ProxyError::Request(e.to_string()))?;
            let r: Response<R> =
                serde_json::from_slice(&bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
            if let Some(d) = r.disconnect {
                return Ok(Answer::Disconnect(Disconnect {
                    code: d.code,
                    reason: d.reason.into(),
                }));
            }
            if let Some(e) = r.error {
                return Ok(Answer::Error(ClientError {
                    code: e.code,
                    message: e.message.into(),
                    temporary: e.temporary,
                }));
            }
            r.result
                .map(Answer::Result)
                .ok_or_else(|| ProxyError::Malformed("no result, error or disconnect".into()))
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(ProxyError::Timeout(timeout)))
    }

    /// The call's headers: static ones, then the emulated ones allowed, then the request's
    /// allowed ones (later sources win, as Centrifugo).
    fn headers(&self, request: &HeaderMap, emulated: &HashMap<String, String>) -> HeaderMap {
        let mut out = HeaderMap::new();
        let mut put = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                out.insert(n, v);
            }
        };
        for (name, value) in &self.config.http.static_headers {
            put(name, value);
        }
        for name in &self.config.emulated_headers {
            if let Some((_, v)) = emulated.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
                put(name, v);
            }
        }
        for name in &self.config.http_headers {
            if let Some(v) = request.get(name.as_str()).and_then(|v| v.to_str().ok()) {
                put(name, v);
            }
        }
        out
    }
}

/// The protocol name Centrifugo's proxy requests carry.
fn protocol_name(encoding: Encoding) -> &'static str {
    if encoding.is_json() {
        "json"
    } else {
        "protobuf"
    }
}

/// The payload encoding name: `json`, or `binary` for Protobuf connections.
fn encoding_name(encoding: Encoding) -> &'static str {
    if encoding.is_json() { "json" } else { "binary" }
}

/// A client payload as the request carries it: raw JSON for JSON connections (when it is
/// JSON), base64 otherwise.
fn payload(encoding: Encoding, data: &Bytes) -> (Option<Box<RawValue>>, Option<String>) {
    if data.is_empty() {
        return (None, None);
    }
    if encoding.is_json()
        && let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(data)
    {
        return (Some(raw), None);
    }
    (
        None,
        Some(base64::engine::general_purpose::STANDARD.encode(data)),
    )
}

fn binary_or_json(
    json: Option<Box<RawValue>>,
    b64: Option<String>,
    field: &str,
) -> Result<Bytes, ProxyError> {
    if let Some(b64) = b64.filter(|s| !s.is_empty()) {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| ProxyError::Malformed(format!("{field}: {e}")));
    }
    Ok(json
        .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_go_as_json_or_base64() {
        let json = Bytes::from_static(b"{\"a\":1}");
        let (raw, b64) = payload(Encoding::Json, &json);
        assert_eq!(raw.map(|r| r.get().to_string()), Some("{\"a\":1}".into()));
        assert!(b64.is_none());
        let (raw, b64) = payload(Encoding::Protobuf, &json);
        assert!(raw.is_none());
        assert_eq!(b64.as_deref(), Some("eyJhIjoxfQ=="));
        let (raw, b64) = payload(Encoding::Json, &Bytes::new());
        assert!(raw.is_none() && b64.is_none(), "no data, no field");
        let decoded = binary_or_json(None, Some("eyJhIjoxfQ==".into()), "b64data").unwrap();
        assert_eq!(decoded, json);
        assert!(binary_or_json(None, Some("%%".into()), "b64data").is_err());
    }

    #[test]
    fn forwarded_headers_follow_the_lists_and_request_values_win() {
        let proxy = HttpProxy::new(
            ProxyEndpointConfig {
                enabled: true,
                endpoint: "http://127.0.0.1:1/connect".into(),
                http_headers: vec!["Cookie".into(), "X-Real-Ip".into()],
                emulated_headers: vec!["Authorization".into(), "Cookie".into()],
                http: crate::config::ProxyHttpConfig {
                    static_headers: [("X-Static".to_string(), "s".to_string())].into(),
                },
                ..Default::default()
            },
            8,
        );
        let mut request = HeaderMap::new();
        request.insert("cookie", HeaderValue::from_static("session=real"));
        request.insert("user-agent", HeaderValue::from_static("not listed"));
        let emulated: HashMap<String, String> = [
            ("authorization".to_string(), "Bearer x".to_string()),
            ("Cookie".to_string(), "session=emulated".to_string()),
            ("X-Other".to_string(), "no".to_string()),
        ]
        .into();
        let out = proxy.headers(&request, &emulated);
        assert_eq!(out["x-static"], "s");
        assert_eq!(out["authorization"], "Bearer x");
        assert_eq!(out["cookie"], "session=real", "the transport's value wins");
        assert!(out.get("user-agent").is_none() && out.get("x-other").is_none());
        assert_eq!(out.len(), 3);
    }
}
