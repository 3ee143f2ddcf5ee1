//! What a hook call says and what the backend answers, independent of HTTP or gRPC: one
//! request ([`Call`]) and one answer ([`Outcome`] with a [`Granted`]) for every hook, and
//! their JSON shapes (Centrifugo v6's, field for field).

use std::collections::HashMap;

use base64::Engine;
use bytes::Bytes;
use http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ProxyError;
use crate::error::{ClientError, Disconnect};
use crate::protocol::Encoding;

/// The events Herald proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A client connects without a token.
    Connect,
    /// A connection is about to expire.
    Refresh,
    /// A client subscribes.
    Subscribe,
    /// A client publishes.
    Publish,
    /// A subscription is about to expire.
    SubRefresh,
    /// A client's RPC.
    Rpc,
}

impl Hook {
    /// The name in logs and metrics (and in Centrifugo's configuration).
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Refresh => "refresh",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
            Hook::SubRefresh => "sub_refresh",
            Hook::Rpc => "rpc",
        }
    }
}

/// The connection a call is about.
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    /// The client id Herald gave the connection.
    pub client: &'a str,
    /// The transport's name (`websocket`, `sse`, `uni_grpc`, ...).
    pub transport: &'static str,
    /// The connection's encoding.
    pub encoding: Encoding,
    /// The user; empty for anonymous (and before connect).
    pub user: &'a str,
    /// The connection's meta from the connect proxy (sent when the proxy asks for it).
    pub meta: &'a Bytes,
    /// The client's request headers (or gRPC metadata) the transport kept.
    pub headers: &'a HeaderMap,
    /// `headers` from the client's connect command (headers emulation).
    pub emulated: &'a HashMap<String, String>,
    /// The client came over gRPC: `headers` are its call's metadata.
    pub grpc: bool,
}

/// One hook call: the connection and what the event is about. Fields a hook does not use
/// stay empty.
#[derive(Clone, Copy)]
pub struct Call<'a> {
    /// Which event.
    pub hook: Hook,
    /// Whose.
    pub conn: Conn<'a>,
    /// Subscribe, publish, sub_refresh: the channel.
    pub channel: &'a str,
    /// RPC: the method.
    pub method: &'a str,
    /// Connect, subscribe, publish, RPC: the client's payload.
    pub data: &'a Bytes,
    /// Connect: `name` of the client's connect command.
    pub name: &'a str,
    /// Connect: `version` of the client's connect command.
    pub version: &'a str,
}

/// What the backend decided.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Go ahead, with what the result says.
    Accept(Granted),
    /// Refused with an error reply (`error`).
    Refuse(ClientError),
    /// Refused by closing the connection (`disconnect`).
    Disconnect(Disconnect),
}

/// A result, whichever hook's: each hook reads the fields it has.
#[derive(Debug, Default, PartialEq)]
pub struct Granted {
    /// Connect: the user id (empty: anonymous).
    pub user: String,
    /// Connect, refresh, subscribe, sub_refresh: expiry in Unix seconds.
    pub expire_at: Option<i64>,
    /// Refresh, sub_refresh: the backend says the connection or subscription is over.
    pub expired: bool,
    /// Connect, refresh: connection info; subscribe, sub_refresh: channel info.
    pub info: Option<Bytes>,
    /// Connect, subscribe, RPC: data for the reply; publish: data replacing the client's.
    pub data: Option<Bytes>,
    /// Connect: server-side channels.
    pub channels: Vec<String>,
    /// Connect, refresh: the connection's meta, never shown to clients.
    pub meta: Option<Bytes>,
    /// Publish: do not keep this publication in history.
    pub skip_history: bool,
    /// Publish: tags for the publication.
    pub tags: HashMap<String, String>,
    /// Subscribe: per-subscription overrides of the namespace's options.
    pub overrides: Overrides,
}

/// `override` of a subscribe result: each set field replaces the namespace's option for
/// this one subscription.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Overrides {
    /// `presence`.
    pub presence: Option<bool>,
    /// `join_leave`.
    pub join_leave: Option<bool>,
    /// `force_recovery`.
    pub force_recovery: Option<bool>,
    /// `force_positioning`.
    pub force_positioning: Option<bool>,
    /// `force_push_join_leave`.
    pub force_push_join_leave: Option<bool>,
}

/// The protocol name Centrifugo's proxy requests carry.
pub(super) fn protocol_name(encoding: Encoding) -> &'static str {
    if encoding.is_json() {
        "json"
    } else {
        "protobuf"
    }
}

/// The payload encoding name: `json`, or `binary` for Protobuf connections.
pub(super) fn encoding_name(encoding: Encoding) -> &'static str {
    if encoding.is_json() { "json" } else { "binary" }
}

/// The JSON body of an HTTP hook call.
#[derive(Serialize)]
pub(super) struct RequestJson<'a> {
    client: &'a str,
    transport: &'a str,
    protocol: &'a str,
    encoding: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    channel: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    method: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Box<RawValue>>,
}

impl<'a> RequestJson<'a> {
    pub(super) fn new(call: &Call<'a>, binary: bool, include_meta: bool) -> RequestJson<'a> {
        let c = call.conn;
        let (data, b64data) = payload(binary, call.data);
        let meta = (include_meta && call.hook != Hook::Connect && !c.meta.is_empty())
            .then(|| serde_json::from_slice::<Box<RawValue>>(c.meta).ok())
            .flatten();
        RequestJson {
            client: c.client,
            transport: c.transport,
            protocol: protocol_name(c.encoding),
            encoding: encoding_name(c.encoding),
            user: (call.hook != Hook::Connect).then_some(c.user),
            channel: call.channel,
            method: call.method,
            name: call.name,
            version: call.version,
            data,
            b64data,
            meta,
        }
    }
}

/// A client payload as an HTTP call carries it: raw JSON when it is JSON (and the proxy
/// is not in binary mode), base64 otherwise.
pub(super) fn payload(binary: bool, data: &Bytes) -> (Option<Box<RawValue>>, Option<String>) {
    if data.is_empty() {
        return (None, None);
    }
    if !binary && let Ok(raw) = serde_json::from_slice::<Box<RawValue>>(data) {
        return (Some(raw), None);
    }
    (
        None,
        Some(base64::engine::general_purpose::STANDARD.encode(data)),
    )
}

/// An HTTP hook's answer.
#[derive(Deserialize)]
pub(super) struct ResponseJson {
    result: Option<ResultJson>,
    error: Option<ErrorJson>,
    disconnect: Option<DisconnectJson>,
}

#[derive(Deserialize)]
struct ErrorJson {
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(Deserialize)]
struct DisconnectJson {
    code: u32,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResultJson {
    user: String,
    expire_at: i64,
    expired: bool,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    channels: Vec<String>,
    meta: Option<Box<RawValue>>,
    skip_history: bool,
    tags: HashMap<String, String>,
    #[serde(rename = "override")]
    overrides: Option<OverridesJson>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OverridesJson {
    presence: Option<BoolValue>,
    join_leave: Option<BoolValue>,
    force_recovery: Option<BoolValue>,
    force_positioning: Option<BoolValue>,
    force_push_join_leave: Option<BoolValue>,
}

#[derive(Deserialize)]
struct BoolValue {
    value: bool,
}

impl ResponseJson {
    /// The outcome; a disconnect wins over an error, an error over a result.
    pub(super) fn outcome(self) -> Result<Outcome, ProxyError> {
        if let Some(d) = self.disconnect {
            return Ok(Outcome::Disconnect(Disconnect {
                code: d.code,
                reason: d.reason.into(),
            }));
        }
        if let Some(e) = self.error {
            return Ok(Outcome::Refuse(ClientError {
                code: e.code,
                message: e.message.into(),
                temporary: e.temporary,
            }));
        }
        let r = self
            .result
            .ok_or_else(|| ProxyError::Malformed("no result, error or disconnect".into()))?;
        let o = r.overrides.unwrap_or_default();
        let flag = |v: Option<BoolValue>| v.map(|b| b.value);
        Ok(Outcome::Accept(Granted {
            user: r.user,
            expire_at: (r.expire_at > 0).then_some(r.expire_at),
            expired: r.expired,
            info: binary_or_json(r.info, r.b64info, "b64info")?,
            data: binary_or_json(r.data, r.b64data, "b64data")?,
            channels: r.channels,
            meta: r.meta.map(|m| Bytes::copy_from_slice(m.get().as_bytes())),
            skip_history: r.skip_history,
            tags: r.tags,
            overrides: Overrides {
                presence: flag(o.presence),
                join_leave: flag(o.join_leave),
                force_recovery: flag(o.force_recovery),
                force_positioning: flag(o.force_positioning),
                force_push_join_leave: flag(o.force_push_join_leave),
            },
        }))
    }
}

/// A payload of a result: `b64<field>` decoded when set, the raw JSON `<field>`
/// otherwise; `None` when neither is.
pub(super) fn binary_or_json(
    json: Option<Box<RawValue>>,
    b64: Option<String>,
    field: &str,
) -> Result<Option<Bytes>, ProxyError> {
    if let Some(b64) = b64.filter(|s| !s.is_empty()) {
        return decode_b64(&b64, field).map(Some);
    }
    Ok(json.map(|raw| Bytes::copy_from_slice(raw.get().as_bytes())))
}

/// Decodes a `b64*` field.
pub(super) fn decode_b64(b64: &str, field: &str) -> Result<Bytes, ProxyError> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(Bytes::from)
        .map_err(|e| ProxyError::Malformed(format!("{field}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_go_as_json_or_base64() {
        let json = Bytes::from_static(b"{\"a\":1}");
        let (raw, b64) = payload(false, &json);
        assert_eq!(raw.map(|r| r.get().to_string()), Some("{\"a\":1}".into()));
        assert!(b64.is_none());
        let (raw, b64) = payload(true, &json);
        assert!(raw.is_none());
        assert_eq!(b64.as_deref(), Some("eyJhIjoxfQ=="));
        let (raw, b64) = payload(false, &Bytes::from_static(b"\x00\x01"));
        assert!(
            raw.is_none() && b64.as_deref() == Some("AAE="),
            "not JSON: base64"
        );
        let (raw, b64) = payload(false, &Bytes::new());
        assert!(raw.is_none() && b64.is_none(), "no data, no field");
        let decoded = binary_or_json(None, Some("eyJhIjoxfQ==".into()), "b64data").unwrap();
        assert_eq!(decoded, Some(json));
        assert!(binary_or_json(None, Some("%%".into()), "b64data").is_err());
    }

    #[test]
    fn answers_read_as_centrifugo_defines_them() {
        let parse = |s: &str| {
            serde_json::from_str::<ResponseJson>(s)
                .unwrap()
                .outcome()
                .unwrap()
        };
        assert_eq!(
            parse(r#"{"result":{}}"#),
            Outcome::Accept(Granted::default())
        );
        let Outcome::Accept(g) = parse(
            r#"{"result":{"user":"56","expire_at":10,"info":{"n":1},"b64data":"AAE=",
                "override":{"presence":{"value":false}},"tags":{"k":"v"}}}"#,
        ) else {
            panic!("accepted")
        };
        assert_eq!(g.user, "56");
        assert_eq!(g.expire_at, Some(10));
        assert_eq!(g.info.as_deref(), Some(&b"{\"n\":1}"[..]));
        assert_eq!(g.data.as_deref(), Some(&b"\x00\x01"[..]));
        assert_eq!(g.overrides.presence, Some(false));
        assert_eq!(g.overrides.join_leave, None);
        assert_eq!(g.tags["k"], "v");
        assert_eq!(
            parse(r#"{"error":{"code":403,"message":"no"},"result":{}}"#),
            Outcome::Refuse(ClientError {
                code: 403,
                message: "no".into(),
                temporary: false
            })
        );
        assert_eq!(
            parse(r#"{"disconnect":{"code":4501,"reason":"unauthorized"},"error":{"code":1}}"#),
            Outcome::Disconnect(Disconnect {
                code: 4501,
                reason: "unauthorized".into()
            })
        );
        assert!(
            serde_json::from_str::<ResponseJson>("{}")
                .unwrap()
                .outcome()
                .is_err()
        );
    }
}
